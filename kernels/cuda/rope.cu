// Rotary embedding (in place or from q_in/k_in): one block per token, one thread per (head, i < head_dim / 2)
// pair; angles in fp32 with accurate sincosf, as the CPU twin.
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

__global__ void rope_kernel(int64_t heads, int64_t kv_heads, int64_t hd, const int32_t* positions, const float* inv_freq,
                            const bf16* q_in, const bf16* k_in, bf16* q, bf16* k) {
    int64_t t = blockIdx.x, half = hd / 2;
    float pos = (float)positions[t];
    for (int64_t j = threadIdx.x; j < (heads + kv_heads) * half; j += blockDim.x) {
        int64_t h = j / half, i = j % half;
        int64_t at = h < heads ? (t * heads + h) * hd : (t * kv_heads + (h - heads)) * hd;
        const bf16* src = (h < heads ? q_in : k_in) + at;
        bf16* base = (h < heads ? q : k) + at;
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        float a = __bfloat162float(src[i]), b = __bfloat162float(src[i + half]);
        base[i] = __float2bfloat16(a * c - b * s);
        base[i + half] = __float2bfloat16(b * c + a * s);
    }
}

}  // namespace

void rope(const cpu::RopeParams& p, int64_t tokens, const int32_t* positions, const float* inv_freq, const bf16* q_in,
          const bf16* k_in, bf16* q, bf16* k, cudaStream_t stream) {
    TPX_CHECK(p.head_dim % 2 == 0, "rope: head_dim must be even");
    if (tokens == 0) return;
    rope_kernel<<<(unsigned)tokens, 128, 0, stream>>>(p.heads, p.kv_heads, p.head_dim, positions, inv_freq, q_in, k_in, q, k);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
