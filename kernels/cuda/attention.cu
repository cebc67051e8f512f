// Attention over the bf16 KV cache. A first kernel writes every token's K and V into its slot;
// the second runs one block per (token, query head): scores for the visible positions into
// shared memory (fp32), a block-wide softmax, then the weighted sum of V. Correct for prefill
// and decode alike; the flash-decoding kernel of the performance work replaces it for speed.
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void kv_write_kernel(int64_t kv_width, int64_t max_seq, const int32_t* slot, const int32_t* pos, const bf16* k,
                                const bf16* v, bf16* k_cache, bf16* v_cache) {
    int64_t t = blockIdx.x;
    int64_t at = ((int64_t)slot[t] * max_seq + pos[t]) * kv_width;
    for (int64_t i = threadIdx.x; i < kv_width; i += blockDim.x) {
        k_cache[at + i] = k[t * kv_width + i];
        v_cache[at + i] = v[t * kv_width + i];
    }
}

__global__ void attention_kernel(cpu::AttentionShape s, const int32_t* slot, const int32_t* pos, const bf16* q,
                                 const bf16* k_cache, const bf16* v_cache, bf16* out) {
    extern __shared__ float smem[];  // head_dim floats of q, then the scores
    int64_t t = blockIdx.x, h = blockIdx.y;
    int64_t kv_width = s.kv_heads * s.head_dim, kvh = h / (s.heads / s.kv_heads);
    int64_t p = pos[t];
    int64_t first = s.sliding_window > 0 && p - s.sliding_window + 1 > 0 ? p - s.sliding_window + 1 : 0;
    int64_t n = p - first + 1;
    float* qs = smem;
    float* scores = smem + s.head_dim;
    const bf16* qh = q + (t * s.heads + h) * s.head_dim;
    for (int64_t i = threadIdx.x; i < s.head_dim; i += blockDim.x) qs[i] = __bfloat162float(qh[i]);
    __syncthreads();
    const bf16* kbase = k_cache + (int64_t)slot[t] * s.max_seq * kv_width + kvh * s.head_dim;
    const bf16* vbase = v_cache + (int64_t)slot[t] * s.max_seq * kv_width + kvh * s.head_dim;
    float scale = rsqrtf((float)s.head_dim);
    // One warp per key: lanes split the head dimension.
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int64_t j = warp; j < n; j += warps) {
        const bf16* kj = kbase + (first + j) * kv_width;
        float d = 0;
        for (int64_t i = lane; i < s.head_dim; i += 32) d += qs[i] * __bfloat162float(kj[i]);
        d = warp_sum(d);
        if (lane == 0) scores[j] = d * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, scores[j]);
    mx = block_max(mx);
    float sum = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        float e = expf(scores[j] - mx);
        scores[j] = e;
        sum += e;
    }
    sum = block_sum(sum);
    for (int64_t i = threadIdx.x; i < s.head_dim; i += blockDim.x) {
        float acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += scores[j] * __bfloat162float(vbase[(first + j) * kv_width + i]);
        out[(t * s.heads + h) * s.head_dim + i] = __float2bfloat16(acc / sum);
    }
}

}  // namespace

void attention(const cpu::AttentionShape& s, const int32_t* slot, const int32_t* pos, const bf16* q, const bf16* k,
               const bf16* v, bf16* k_cache, bf16* v_cache, bf16* out, cudaStream_t stream) {
    TPX_CHECK(s.heads % s.kv_heads == 0, "attention: heads must be a multiple of kv_heads");
    if (s.tokens == 0) return;
    int64_t kv_width = s.kv_heads * s.head_dim;
    kv_write_kernel<<<(unsigned)s.tokens, 256, 0, stream>>>(kv_width, s.max_seq, slot, pos, k, v, k_cache, v_cache);
    TPX_LAUNCH_CHECK();
    size_t smem = (size_t)(s.head_dim + s.max_seq) * sizeof(float);
    static size_t raised = 48 * 1024;
    if (smem > raised) {
        CUDA_CHECK(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        raised = smem;
    }
    dim3 grid((unsigned)s.tokens, (unsigned)s.heads);
    attention_kernel<<<grid, kThreads, smem, stream>>>(s, slot, pos, q, k_cache, v_cache, out);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
