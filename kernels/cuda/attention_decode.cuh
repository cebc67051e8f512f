// Device pieces the decode attention's one-pass kernels share (attention_one_pass.cu, on CUDA
// cores, and attention_mma.cu, on tensor cores): the RoPE they may take in and the combination of
// their warps' results.
#pragma once

#include <cmath>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {

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

// kRope: the cosines and sines of the lane's 8 dims' angles at position p, each frequency's
// computed once a block (positions and frequencies are no kernel's output: before the PDL wait).
template <int HD, int W>
__device__ __forceinline__ void rope_angles(int64_t p, const float* inv_freq, int part, float (&co)[8], float (&sn)[8]) {
    __shared__ float2 angle[HD / 2];
    for (int i = threadIdx.x; i < HD / 2; i += W * 32) {
        float si, ci;
        sincosf((float)p * inv_freq[i], &si, &ci);
        angle[i] = make_float2(ci, si);
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float2 a = angle[(part * 8) % (HD / 2) + j];
        co[j] = a.x, sn[j] = a.y;
    }
}

// The token's own K and V row pieces of a lane (its 16 bytes of each; its key in round u of the
// warp's chunk), kept in registers and put into the warp's ring slot once that chunk's copies are
// issued: the warp's copies never read that row from the caches.
struct OwnRow {
    int u = -1;  // -1: the lane holds no piece of it
    uint4 k{}, v{};

    template <int kRounds>
    __device__ __forceinline__ void put(char* slot, int lane) const {
        if (u < 0) return;
        *reinterpret_cast<uint4*>(slot + (u * 32 + lane) * 16) = k;
        *reinterpret_cast<uint4*>(slot + ((u + kRounds) * 32 + lane) * 16) = v;
    }
};

// The lane's own-row pieces: with kRope, K rotated from the QKV product's head row k_in (V from
// v_in), stored into the caches at own_k and own_v by the writer (one block of the KV head);
// else read from there (the kernel before wrote them).
template <int HD, bool kRope>
__device__ __forceinline__ void load_own_row(OwnRow& o, bf16* own_k, bf16* own_v, const bf16* k_in, const bf16* v_in, int part, bool writer,
                                             const float (&co)[8], const float (&sn)[8]) {
    if constexpr (kRope) {
        uint4 raw[2];
        load_pair<HD>(k_in, part, raw);
        o.v = *reinterpret_cast<const uint4*>(v_in + part * 8);
        o.k = rotate8<HD>(raw, part, co, sn);
        if (writer) {
            *reinterpret_cast<uint4*>(own_k) = o.k;
            *reinterpret_cast<uint4*>(own_v) = o.v;
        }
    } else {
        o.k = *reinterpret_cast<const uint4*>(own_k);
        o.v = *reinterpret_cast<const uint4*>(own_v);
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
