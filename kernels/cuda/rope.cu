// Rotary embedding (in place, or from q_in/k_in, possibly strided): blocks over a token's rows,
// threads over (head group, i < head_dim / 2); angles in fp32 with accurate sincosf, as the
// CPU twin, computed once per (token, frequency). The 16-byte form may write K, and copy V,
// straight into the KV cache (RopeKvCache).
#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

// Thread (g, i) of a token's block computes the angle of frequency i once and rotates pair i of
// heads g, g + groups, ...
__global__ void rope_kernel(int64_t heads, int64_t kv_heads, int64_t hd, const int32_t* positions, const float* inv_freq,
                            const bf16* q_in, const bf16* k_in, int64_t q_stride, int64_t k_stride, bf16* q, bf16* k) {
    pdl_entry();  // see common.cuh
    int64_t t = blockIdx.x, half = hd / 2, groups = blockDim.x / half;
    int64_t i = threadIdx.x % half, g = threadIdx.x / half;  // the block is exactly groups x half threads
    float s, c;
    sincosf((float)positions[t] * inv_freq[i], &s, &c);
    for (int64_t h = g; h < heads + kv_heads; h += groups) {
        const bf16* src = h < heads ? q_in + t * q_stride + h * hd : k_in + t * k_stride + (h - heads) * hd;
        bf16* base = h < heads ? q + (t * heads + h) * hd : k + (t * kv_heads + (h - heads)) * hd;
        float a = __bfloat162float(src[i]), b = __bfloat162float(src[i + half]);
        base[i] = __float2bfloat16(rope_lo(a, b, c, s));
        base[i + half] = __float2bfloat16(rope_hi(a, b, c, s));
    }
}

// The same in 16-byte pieces (head_dim a multiple of 16, strides of 8 elements, aligned
// pointers): thread (g, c) of block (t, b) takes frequencies 8c .. 8c + 7, their angles computed
// once a block, in rows b groups + g, then gridDim.y groups further, ... (a token's rows over
// gridDim.y blocks, a row a thread: a decode batch's few tokens still fill the GPU).
// Same arithmetic per element as rope_kernel, so the same bits.
__global__ void rope_vec_kernel(int64_t heads, int64_t kv_heads, int64_t hd, const int32_t* positions, const float* inv_freq,
                                const bf16* q_in, const bf16* k_in, int64_t q_stride, int64_t k_stride, bf16* q, bf16* k, RopeKvCache kc) {
    pdl_entry();  // see common.cuh
    const int64_t t = blockIdx.x, half = hd / 2, chunks = half / 8, groups = blockDim.x / chunks;
    const int64_t c = threadIdx.x % chunks, g = threadIdx.x / chunks;
    // With the caches: K rotated into its row, then V's heads copied (rows heads + kv_heads on).
    const int64_t rows = heads + (kc.k_cache ? 2 : 1) * kv_heads;
    const int64_t row = kc.k_cache ? ((int64_t)kc.slot[t] * kc.max_seq + positions[t]) * kv_heads * hd : 0;
    float s[8], co[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) sincosf((float)positions[t] * inv_freq[c * 8 + j], &s[j], &co[j]);
    for (int64_t h = blockIdx.y * groups + g; h < rows; h += groups * gridDim.y) {
        if (h >= heads + kv_heads) {
            const bf16* src = kc.v_in + t * kc.v_stride + (h - heads - kv_heads) * hd;
            bf16* dst = kc.v_cache + row + (h - heads - kv_heads) * hd;
            *reinterpret_cast<uint4*>(dst + c * 8) = *reinterpret_cast<const uint4*>(src + c * 8);
            *reinterpret_cast<uint4*>(dst + half + c * 8) = *reinterpret_cast<const uint4*>(src + half + c * 8);
            continue;
        }
        const bf16* src = h < heads ? q_in + t * q_stride + h * hd : k_in + t * k_stride + (h - heads) * hd;
        bf16* base = h < heads ? q + (t * heads + h) * hd : kc.k_cache ? kc.k_cache + row + (h - heads) * hd : k + (t * kv_heads + (h - heads)) * hd;
        float a[8], b[8], x[8], y[8];
        unpack8(*reinterpret_cast<const uint4*>(src + c * 8), a);
        unpack8(*reinterpret_cast<const uint4*>(src + half + c * 8), b);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            x[j] = rope_lo(a[j], b[j], co[j], s[j]);
            y[j] = rope_hi(a[j], b[j], co[j], s[j]);
        }
        *reinterpret_cast<uint4*>(base + c * 8) = pack8(x);
        *reinterpret_cast<uint4*>(base + half + c * 8) = pack8(y);
    }
}

// rope()'s strides of q_in and k_in rows.
struct InStrides {
    int64_t q, k;
};
InStrides in_strides(const RopeArgs& a) {
    return {a.in_stride ? a.in_stride : a.p.heads * a.p.head_dim, a.in_stride ? a.in_stride : a.p.kv_heads * a.p.head_dim};
}

bool vec_applies(const RopeArgs& a) {
    const InStrides st = in_strides(a);
    return a.p.head_dim % 16 == 0 && st.q % 8 == 0 && st.k % 8 == 0 && aligned16({a.q_in, a.k_in, a.q, a.cache.k_cache ? nullptr : a.k});
}

}  // namespace

bool rope_kv_applies(const RopeArgs& a) {
    const RopeKvCache& c = a.cache;
    return vec_applies(a) && c.k_cache && c.v_cache && c.v_in && c.slot && c.max_seq > 0 && c.v_stride % 8 == 0 &&
           c.v_stride >= a.p.kv_heads * a.p.head_dim &&
           aligned16({c.k_cache, c.v_cache, c.v_in});
}

void rope(const RopeArgs& a, Launch at) {
    const cpu::RopeParams& p = a.p;
    const int64_t tokens = a.tokens;
    const int32_t* positions = a.positions;
    const float* inv_freq = a.inv_freq;
    const bf16 *q_in = a.q_in, *k_in = a.k_in;
    bf16 *q = a.q, *k = a.k;
    TPX_CHECK(p.head_dim % 2 == 0, "rope: head_dim must be even");
    TPX_CHECK(!a.cache.k_cache || rope_kv_applies(a), "rope: the KV-cache write needs the 16-byte form (rope_kv_applies)");
    if (tokens == 0) return;
    const InStrides st = in_strides(a);
    const int64_t half = p.head_dim / 2;
    TPX_CHECK(half <= 1024, "rope: head_dim above 2048");
    if (vec_applies(a)) {
        const int64_t chunks = half / 8, rows = p.heads + (a.cache.k_cache ? 2 : 1) * p.kv_heads;
        const int64_t groups = std::max<int64_t>(1, std::min<int64_t>(rows, 128 / chunks));
        const dim3 grid((unsigned)tokens, (unsigned)((rows + groups - 1) / groups));  // a thread a row of each token
        launch(rope_vec_kernel, grid, (unsigned)(chunks * groups), 0, at, p.heads, p.kv_heads, p.head_dim, positions, inv_freq, q_in, k_in,
               st.q, st.k, q, k, a.cache);
        TPX_LAUNCH_CHECK();
        return;
    }
    int threads = (int)(half * std::max<int64_t>(1, 256 / half));
    launch(rope_kernel, (unsigned)tokens, threads, 0, at, p.heads, p.kv_heads, p.head_dim, positions, inv_freq, q_in, k_in, st.q,
                                                      st.k, q, k);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
