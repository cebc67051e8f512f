// Mixtral's sparse MoE block on the experts this rank holds. Routing (softmax over all
// experts, top-k, renormalise) is computed identically on every rank from the replicated
// router; each rank adds the contributions of its own experts (or expert parts), and the
// all_reduce after the block sums them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {

void moe(const MoeShape& s, const float* x, const float* router_logits, const float* w13, const float* w2, float* y) {
    std::memset(y, 0, s.tokens * s.hidden * sizeof(float));
    std::vector<float> probs(s.experts), gate_up(2 * s.inter_local), act(s.inter_local), part(s.hidden);
    std::vector<int64_t> order(s.experts);
    for (int64_t t = 0; t < s.tokens; ++t) {
        const float* logits = router_logits + t * s.experts;
        float mx = *std::max_element(logits, logits + s.experts);
        float sum = 0;
        for (int64_t e = 0; e < s.experts; ++e) sum += (probs[e] = std::exp(logits[e] - mx));
        for (float& p : probs) p /= sum;
        std::iota(order.begin(), order.end(), 0);
        // torch.topk order: larger first; equal values keep the lower index first.
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return probs[a] > probs[b]; });
        float top_sum = 0;
        for (int64_t i = 0; i < s.top_k; ++i) top_sum += probs[order[i]];
        const float* xt = x + t * s.hidden;
        for (int64_t i = 0; i < s.top_k; ++i) {
            int64_t local = order[i] - s.first_expert;
            if (local < 0 || local >= s.local_experts) continue;
            float weight = probs[order[i]] / top_sum;
            linear({1, s.hidden, 2 * s.inter_local}, xt, w13 + local * 2 * s.inter_local * s.hidden, nullptr, gate_up.data());
            silu_mul_fused(1, s.inter_local, gate_up.data(), act.data());
            linear({1, s.inter_local, s.hidden}, act.data(), w2 + local * s.hidden * s.inter_local, nullptr, part.data());
            for (int64_t h = 0; h < s.hidden; ++h) y[t * s.hidden + h] += weight * part[h];
        }
    }
}

}  // namespace tpx::cpu
