// MoE routing: per-row softmax/top-k (one thread per token: the expert count is small).
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kMaxExperts = 256;

__global__ void routing_kernel(cpu::MoeShape s, const bf16* logits, float* weights) {
    pdl_entry();  // see common.cuh
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= s.tokens) return;
    float p[kMaxExperts];
    bool taken[kMaxExperts];
    const bf16* l = logits + t * s.experts;
    float mx = -INFINITY;
    for (int64_t e = 0; e < s.experts; ++e) mx = fmaxf(mx, __bfloat162float(l[e]));
    float sum = 0;
    for (int64_t e = 0; e < s.experts; ++e) {
        p[e] = expf(__bfloat162float(l[e]) - mx);
        sum += p[e];
        taken[e] = false;
    }
    for (int64_t e = 0; e < s.local_experts; ++e) weights[t * s.local_experts + e] = 0.0f;
    // top-k: the largest first, the lower index on ties (torch.topk's order).
    int64_t chosen[kMaxExperts];
    float top_sum = 0;
    for (int64_t k = 0; k < s.top_k; ++k) {
        int64_t best = -1;
        for (int64_t e = 0; e < s.experts; ++e)
            if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
        taken[best] = true;
        chosen[k] = best;
        top_sum += p[best] / sum;
    }
    for (int64_t k = 0; k < s.top_k; ++k) {
        int64_t local = chosen[k] - s.first_expert;
        if (local >= 0 && local < s.local_experts) weights[t * s.local_experts + local] = (p[chosen[k]] / sum) / top_sum;
    }
}

}  // namespace

void moe_routing(const cpu::MoeShape& s, const bf16* router_logits, float* weights, Launch at) {
    TPX_CHECK(s.experts <= kMaxExperts, "moe_routing: at most " + std::to_string(kMaxExperts) + " experts");
    if (s.tokens == 0) return;
    launch(routing_kernel, blocks_for(s.tokens, 128), 128, 0, at, s, router_logits, weights);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
