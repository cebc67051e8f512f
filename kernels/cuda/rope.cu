// Rotary embedding (in place, or from q_in/k_in, possibly strided): one block per token,
// threads over (head group, i < head_dim / 2); angles in fp32 with accurate sincosf, as the
// CPU twin, computed once per (token, frequency).
#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

// Thread (g, i) of a token's block computes the angle of frequency i once and rotates pair i of
// heads g, g + groups, ...
__global__ void rope_kernel(int64_t heads, int64_t kv_heads, int64_t hd, const int32_t* positions, const float* inv_freq,
                            const bf16* q_in, const bf16* k_in, int64_t q_stride, int64_t k_stride, bf16* q, bf16* k) {
    int64_t t = blockIdx.x, half = hd / 2, groups = blockDim.x / half;
    int64_t i = threadIdx.x % half, g = threadIdx.x / half;  // the block is exactly groups x half threads
    float s, c;
    sincosf((float)positions[t] * inv_freq[i], &s, &c);
    for (int64_t h = g; h < heads + kv_heads; h += groups) {
        const bf16* src = h < heads ? q_in + t * q_stride + h * hd : k_in + t * k_stride + (h - heads) * hd;
        bf16* base = h < heads ? q + (t * heads + h) * hd : k + (t * kv_heads + (h - heads)) * hd;
        float a = __bfloat162float(src[i]), b = __bfloat162float(src[i + half]);
        base[i] = __float2bfloat16(a * c - b * s);
        base[i + half] = __float2bfloat16(b * c + a * s);
    }
}

}  // namespace

void rope(const cpu::RopeParams& p, int64_t tokens, const int32_t* positions, const float* inv_freq, const bf16* q_in,
          const bf16* k_in, bf16* q, bf16* k, cudaStream_t stream, int64_t in_stride) {
    TPX_CHECK(p.head_dim % 2 == 0, "rope: head_dim must be even");
    if (tokens == 0) return;
    int64_t q_stride = in_stride ? in_stride : p.heads * p.head_dim, k_stride = in_stride ? in_stride : p.kv_heads * p.head_dim;
    const int64_t half = p.head_dim / 2;
    TPX_CHECK(half <= 1024, "rope: head_dim above 2048");
    int threads = (int)(half * std::max<int64_t>(1, 256 / half));
    rope_kernel<<<(unsigned)tokens, threads, 0, stream>>>(p.heads, p.kv_heads, p.head_dim, positions, inv_freq, q_in, k_in, q_stride,
                                                      k_stride, q, k);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
