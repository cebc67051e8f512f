// Attention over the bf16 KV cache. A first kernel writes every token's K and V into its slot;
// the second runs one block per (token, query head): scores for the visible positions into
// shared memory (fp32), a block-wide softmax, then the weighted sum of V, both spread over the
// block's warps. Prefill and decode alike; not yet a flash (tiled, tensor-core) kernel.
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void kv_write_kernel(int64_t kv_width, int64_t max_seq, const int32_t* slot, const int32_t* pos, const bf16* k,
                                const bf16* v, bf16* k_cache, bf16* v_cache) {
    int64_t t = blockIdx.x;
    int64_t at = ((int64_t)slot[t] * max_seq + pos[t]) * kv_width;
    for (int64_t i = threadIdx.x; i < kv_width; i += blockDim.x) {
        k_cache[at + i] = k[t * kv_width + i];
        v_cache[at + i] = v[t * kv_width + i];
    }
}

constexpr int kWarps = kThreads / 32;
constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256

// Warps split the visible keys: each warp scores its keys (lanes split head_dim, a warp sum per
// key), and after the block-wide softmax each warp accumulates p_j * v_j over its keys in
// registers (lane l holds dims l, l + 32, ...); the warps' partial sums meet in shared memory.
__global__ void attention_kernel(cpu::AttentionShape s, const int32_t* slot, const int32_t* pos, const bf16* q,
                                 const bf16* k_cache, const bf16* v_cache, bf16* out) {
    extern __shared__ float smem[];  // q (head_dim) | partial sums (kWarps x head_dim) | scores
    int64_t t = blockIdx.x, h = blockIdx.y;
    int64_t kv_width = s.kv_heads * s.head_dim, kvh = h / (s.heads / s.kv_heads);
    int64_t p = pos[t];
    int64_t first = s.sliding_window > 0 && p - s.sliding_window + 1 > 0 ? p - s.sliding_window + 1 : 0;
    int64_t n = p - first + 1;
    float* qs = smem;
    float* partial = smem + s.head_dim;
    float* scores = partial + kWarps * s.head_dim;
    const bf16* qh = q + (t * s.heads + h) * s.head_dim;
    for (int64_t i = threadIdx.x; i < s.head_dim; i += blockDim.x) qs[i] = __bfloat162float(qh[i]);
    __syncthreads();
    const bf16* kbase = k_cache + ((int64_t)slot[t] * s.max_seq + first) * kv_width + kvh * s.head_dim;
    const bf16* vbase = v_cache + ((int64_t)slot[t] * s.max_seq + first) * kv_width + kvh * s.head_dim;
    float scale = rsqrtf((float)s.head_dim);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int64_t j = warp; j < n; j += kWarps) {
        const bf16* kj = kbase + j * kv_width;
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
    sum = block_sum(sum);  // its barriers also make every score visible to every warp
    float acc[kMaxDimsPerLane];
#pragma unroll
    for (int d = 0; d < kMaxDimsPerLane; ++d) acc[d] = 0.0f;
    for (int64_t j = warp; j < n; j += kWarps) {
        float pj = scores[j];
        const bf16* vj = vbase + j * kv_width;
#pragma unroll
        for (int d = 0; d < kMaxDimsPerLane; ++d) {
            int64_t i = lane + 32 * d;
            if (i < s.head_dim) acc[d] += pj * __bfloat162float(vj[i]);
        }
    }
#pragma unroll
    for (int d = 0; d < kMaxDimsPerLane; ++d) {
        int64_t i = lane + 32 * d;
        if (i < s.head_dim) partial[warp * s.head_dim + i] = acc[d];
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < s.head_dim; i += blockDim.x) {
        float o = 0;
        for (int w = 0; w < kWarps; ++w) o += partial[w * s.head_dim + i];
        out[(t * s.heads + h) * s.head_dim + i] = __float2bfloat16(o / sum);
    }
}

}  // namespace

void attention(const cpu::AttentionShape& s, const int32_t* slot, const int32_t* pos, const bf16* q, const bf16* k,
               const bf16* v, bf16* k_cache, bf16* v_cache, bf16* out, cudaStream_t stream) {
    TPX_CHECK(s.heads % s.kv_heads == 0, "attention: heads must be a multiple of kv_heads");
    TPX_CHECK(s.head_dim <= 32 * kMaxDimsPerLane, "attention: head_dim above " + std::to_string(32 * kMaxDimsPerLane));
    if (s.tokens == 0) return;
    int64_t kv_width = s.kv_heads * s.head_dim;
    kv_write_kernel<<<(unsigned)s.tokens, 256, 0, stream>>>(kv_width, s.max_seq, slot, pos, k, v, k_cache, v_cache);
    TPX_LAUNCH_CHECK();
    size_t smem = (size_t)((1 + kWarps) * s.head_dim + s.max_seq) * sizeof(float);
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
