// Device pieces the decode attention's one-pass kernels share (attention_one_pass.cu, on CUDA
// cores, and attention_mma.cu, on tensor cores): the RoPE they may take in and the combination of
// their warps' results.
#pragma once

#include <cmath>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {

// A warp's ring of K and V rows in shared memory, in both kernels, and a block's of W warps (its
// dynamic shared memory).
constexpr int kWarpRingBytes = 12288;
template <int W>
constexpr int ring_bytes() {
    return W * kWarpRingBytes;
}

// A block's decode token: block x of a grid from token t0, y its group of Gb query heads (from
// h0, of KV head kvh); the token's position p, its first visible key (the sliding window), its n
// visible keys, and the offset in the caches of the first one's row at the KV head.
template <int HD, int Gb>
struct DecodeToken {
    int64_t t, h0, kvh, p, first, n, row0;
    __device__ DecodeToken(const cpu::AttentionShape& s, int64_t t0, const int32_t* slot, const int32_t* pos) {
        t = t0 + blockIdx.x, h0 = (int64_t)blockIdx.y * Gb, kvh = h0 / (s.heads / s.kv_heads);
        p = pos[t];
        first = s.sliding_window > 0 && p - s.sliding_window + 1 > 0 ? p - s.sliding_window + 1 : 0, n = p - first + 1;
        row0 = ((int64_t)slot[t] * s.max_seq + first) * s.kv_heads * HD + kvh * HD;
    }
    // Whether this block writes the own row into the caches (its KV head's first).
    __device__ bool writer(const cpu::AttentionShape& s) const { return blockIdx.y % (s.heads / s.kv_heads / Gb) == 0; }
};

// The RoPE the kernel does (AttentionRope): each token's q, k and v rows before it (q's at the
// kernel's q), their strides, and the inverse frequencies.
struct OnePassRope {
    const float* inv_freq;
    const bf16 *k, *v;
    int64_t q_stride, k_stride, v_stride;
};

// The OnePassRope of a (kRope: a.rope's; else q's stride alone matters, its packed rows).
inline OnePassRope one_pass_rope(const AttentionArgs& a, bool kRope) {
    const int64_t hd = a.shape.head_dim, kv_width = a.shape.kv_heads * hd;
    return {a.rope.inv_freq, a.k, a.v, kRope && a.rope.q_stride ? a.rope.q_stride : a.shape.heads * hd, a.k_stride ? a.k_stride : kv_width,
            a.v_stride ? a.v_stride : kv_width};
}

// A lane's 8 dims [8 part, 8 part + 8) of a head's row, and the 8 half a head away that RoPE
// pairs them with.
template <int HD>
__device__ __forceinline__ void load_pair(const bf16* row, int part, uint4 (&raw)[2]) {
    constexpr int kHalf = HD / 2;
    raw[0] = *reinterpret_cast<const uint4*>(row + part * 8);
    raw[1] = *reinterpret_cast<const uint4*>(row + (part * 8 < kHalf ? part * 8 + kHalf : part * 8 - kHalf));
}

// The lane's 8 dims rotated as rope_vec_kernel rotates them, given their angles' cosines and sines.
template <int HD>
__device__ __forceinline__ uint4 rotate8(const uint4 (&raw)[2], int part, const float (&co)[8], const float (&sn)[8]) {
    const bool lo = part * 8 < HD / 2;
    float a[8], b[8], r[8];
    unpack8(raw[0], a);
    unpack8(raw[1], b);
#pragma unroll
    for (int j = 0; j < 8; ++j) r[j] = lo ? rope_lo(a[j], b[j], co[j], sn[j]) : rope_hi(b[j], a[j], co[j], sn[j]);
    return pack8(r);
}

// kRope: this thread's inverse frequency (index threadIdx.x, of HD / 2; 0 past them). The
// frequencies are no kernel's output, so they may be read before the PDL wait.
template <int HD>
__device__ __forceinline__ float rope_freq(const float* inv_freq) {
    return threadIdx.x < HD / 2 ? inv_freq[threadIdx.x] : 0.0f;
}

// kRope: the cosines and sines of the lane's 8 dims' angles at position p, each frequency's
// computed once a block from rope_freq's `freq` (a block of at least HD / 2 threads).
template <int HD>
__device__ __forceinline__ void rope_angles(int64_t p, float freq, int part, float (&co)[8], float (&sn)[8]) {
    __shared__ float2 angle[HD / 2];
    if (threadIdx.x < HD / 2) {
        float si, ci;
        sincosf((float)p * freq, &si, &ci);
        angle[threadIdx.x] = make_float2(ci, si);
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float2 a = angle[(part * 8) % (HD / 2) + j];
        co[j] = a.x, sn[j] = a.y;
    }
}

// The token's own K and V row pieces a lane holds (its 16 bytes of each), put into the warp's
// ring from registers once the copies of their slot are issued: the warp's copies never read that
// row from the caches.
struct OwnRow {
    uint4 k{}, v{};
};

// The lane's own-row pieces as loaded (load_own_row), before make_own_row rotates them: the two
// steps let the loads go out before a kernel's copies while the rotation waits for the angles.
struct OwnRowRaw {
    uint4 k[2] = {}, v = {};
};

// With kRope, the QKV product's K head row k_in (the lane's piece and its RoPE partner) and its V
// piece from v_in; else the pieces the kernel before wrote into the caches at own_k and own_v.
template <int HD, bool kRope>
__device__ __forceinline__ void load_own_row(OwnRowRaw& raw, const bf16* own_k, const bf16* own_v, const bf16* k_in, const bf16* v_in,
                                             int part) {
    if constexpr (kRope) {
        load_pair<HD>(k_in, part, raw.k);
        raw.v = *reinterpret_cast<const uint4*>(v_in + part * 8);
    } else {
        raw.k[0] = *reinterpret_cast<const uint4*>(own_k);
        raw.v = *reinterpret_cast<const uint4*>(own_v);
    }
}

// The pieces to put into the ring: K rotated (kRope) and stored with V into the caches at own_k
// and own_v by the writer (one block of the KV head).
template <int HD, bool kRope>
__device__ __forceinline__ void make_own_row(OwnRow& o, const OwnRowRaw& raw, bf16* own_k, bf16* own_v, int part, bool writer,
                                             const float (&co)[8], const float (&sn)[8]) {
    o.v = raw.v;
    if constexpr (kRope) {
        o.k = rotate8<HD>(raw.k, part, co, sn);
        if (writer) {
            *reinterpret_cast<uint4*>(own_k) = o.k;
            *reinterpret_cast<uint4*>(own_v) = o.v;
        }
    } else {
        o.k = raw.k[0];
    }
}

// The warps' results, out[g * HD + e] for the block's Gb heads: part_acc [W][Gb][HD] each warp's
// weighted V sums, part_ml [W][Gb][2] its max (log2 units) and exp-sum a head.
template <int HD, int Gb, int W>
__device__ __forceinline__ void combine_parts(const float* part_acc, const float* part_ml, bf16* out) {
    for (int idx = threadIdx.x; idx < Gb * HD; idx += W * 32) {
        const int g = idx / HD, e = idx % HD;
        float mx = -INFINITY;
        for (int w = 0; w < W; ++w) mx = fmaxf(mx, part_ml[(w * Gb + g) * 2]);
        float o = 0.0f, sum = 0.0f;
        for (int w = 0; w < W; ++w) {
            const float f = exp2f(part_ml[(w * Gb + g) * 2] - mx);  // 0 for a warp without keys
            o += f * part_acc[(w * Gb + g) * HD + e];
            sum += f * part_ml[(w * Gb + g) * 2 + 1];
        }
        out[g * HD + e] = __float2bfloat16(o / sum);
    }
}

}  // namespace tpx::cuda
