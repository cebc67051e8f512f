// MoE routing and token choice: per-row softmax/top-k (one thread per token: the expert count
// is small), and per-row argmax for greedy decoding.
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

// Greedy decoding's argmax: kArgmaxChunks blocks per row each find their chunk's best (so
// that a 128k vocabulary is read by many SMs, not one), then one warp per row picks among them.
// Ties go to the first index. A chunk holding a NaN or an infinity reports index -1 and the
// row's result is then -1, so that non-finite logits are seen (only ids leave the device).
constexpr int kArgmaxChunks = 32, kArgmaxThreads = 256;

__device__ inline void better(float v, int64_t i, float& bv, int64_t& bi) {
    if (v > bv || (v == bv && i < bi)) bv = v, bi = i;
}

// Every lane ends with the warp's best (value, index).
__device__ inline void warp_argmax(float& bv, int64_t& bi) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
        better(ov, oi, bv, bi);
    }
}

__global__ void argmax_partial_kernel(int64_t width, const float* logits, float* part_v, int64_t* part_i) {
    pdl_entry();  // see common.cuh
    int64_t row = blockIdx.y, chunk = (width + kArgmaxChunks - 1) / kArgmaxChunks;
    int64_t lo = blockIdx.x * chunk, hi = min(width, lo + chunk);
    const float* r = logits + row * width;
    float bv = -INFINITY;
    int64_t bi = width;
    bool bad = false;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float v = r[i];
        bad = bad || !isfinite(v);
        better(v, i, bv, bi);
    }
    warp_argmax(bv, bi);
    bad = __any_sync(0xffffffffu, bad);
    __shared__ float wv[kArgmaxThreads / 32];
    __shared__ int64_t wi[kArgmaxThreads / 32];
    __shared__ bool wbad[kArgmaxThreads / 32];
    if ((threadIdx.x & 31) == 0) wv[threadIdx.x >> 5] = bv, wi[threadIdx.x >> 5] = bi, wbad[threadIdx.x >> 5] = bad;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < kArgmaxThreads / 32; ++w) better(wv[w], wi[w], bv, bi), bad = bad || wbad[w];
        part_v[row * kArgmaxChunks + blockIdx.x] = bv;
        part_i[row * kArgmaxChunks + blockIdx.x] = bad ? -1 : bi;
    }
}

__global__ void argmax_final_kernel(int64_t width, const float* part_v, const int64_t* part_i, int32_t* out) {
    pdl_entry();  // see common.cuh
    int64_t row = blockIdx.x;
    float bv = -INFINITY;
    int64_t bi = width;
    bool bad = false;
    for (int c = threadIdx.x; c < kArgmaxChunks; c += 32) {
        const int64_t i = part_i[row * kArgmaxChunks + c];
        bad = bad || i < 0;
        better(part_v[row * kArgmaxChunks + c], i, bv, bi);
    }
    warp_argmax(bv, bi);
    bad = __any_sync(0xffffffffu, bad);
    if (threadIdx.x == 0) out[row] = bad ? -1 : (int32_t)bi;
}

}  // namespace

void moe_routing(const cpu::MoeShape& s, const bf16* router_logits, float* weights, cudaStream_t stream) {
    TPX_CHECK(s.experts <= kMaxExperts, "moe_routing: at most " + std::to_string(kMaxExperts) + " experts");
    if (s.tokens == 0) return;
    launch(routing_kernel, blocks_for(s.tokens, 128), 128, 0, stream, s, router_logits, weights);
    TPX_LAUNCH_CHECK();
}

void argmax_rows(int64_t rows, int64_t width, const float* logits, int32_t* out, cudaStream_t stream) {
    if (rows == 0) return;
    float* part_v = nullptr;
    int64_t* part_i = nullptr;
    CUDA_CHECK(cudaMallocAsync((void**)&part_v, rows * kArgmaxChunks * sizeof(float), stream));
    CUDA_CHECK(cudaMallocAsync((void**)&part_i, rows * kArgmaxChunks * sizeof(int64_t), stream));
    launch(argmax_partial_kernel, dim3(kArgmaxChunks, (unsigned)rows), kArgmaxThreads, 0, stream, width, logits, part_v, part_i);
    TPX_LAUNCH_CHECK();
    launch(argmax_final_kernel, (unsigned)rows, 32, 0, stream, width, part_v, part_i, out);
    TPX_LAUNCH_CHECK();
    CUDA_CHECK(cudaFreeAsync(part_v, stream));
    CUDA_CHECK(cudaFreeAsync(part_i, stream));
}

}  // namespace tpx::cuda
