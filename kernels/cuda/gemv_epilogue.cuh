// What every decode GEMV (gemv.cuh, gemv_mma.cu, the quantized ones) does with an output row
// once its sum is known: the work item's rows, and the epilogue that SwiGLU or RoPE + the
// KV-cache write would have done after the linear, with their kernels' arithmetic (the linear's
// outputs rounded to bf16 first, as the unfused path stores them), so that fused and unfused
// results are equal bit for bit.
#pragma once

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {


// Work item -> the weight rows it reads: one row (kNone); gate row `item` and up row
// item + pair (kSwiglu); rows i and i + half of a head (kRopeKv, half = head_dim / 2).
template <GemvEpilogue E>
__device__ inline void item_rows(int64_t item, int64_t pair, int64_t half, int64_t* rows) {
    if (E == GemvEpilogue::kNone) rows[0] = item;
    else if (E == GemvEpilogue::kSwiglu) rows[0] = item, rows[1] = item + pair;
    else rows[0] = (item / half) * 2 * half + item % half, rows[1] = rows[0] + half;
}

// The outputs of work item `item` for token t, from the sums acc[0] (and acc[1]) of its rows:
// kNone: y[t, rows[0]] of a y n wide; kSwiglu: y[t, item] of a y `pair` wide; kRopeKv: q rotated
// into y[t] (heads x head_dim wide), k rotated and v into the caches at (slot[t], pos[t]).
template <GemvEpilogue E>
__device__ inline void write_item(int64_t item, const int64_t* rows, const float* acc, int64_t t, int64_t n, int64_t pair,
                                  const bf16* bias, bf16* y, const GemvRopeKv& rk) {
    const float b0 = bias ? __bfloat162float(bias[rows[0]]) : 0.0f;
    if (E == GemvEpilogue::kNone) {
        y[t * n + rows[0]] = __float2bfloat16(acc[0] + b0);
        return;
    }
    const float a = round_bf16(acc[0] + b0);
    const float b = round_bf16(acc[1] + (bias ? __bfloat162float(bias[rows[1]]) : 0.0f));
    if (E == GemvEpilogue::kSwiglu) {
        y[t * pair + item] = __float2bfloat16(silu(a) * b);
        return;
    }
    const int64_t half = rk.head_dim / 2, head = item / half, i = item % half, d = rk.head_dim, kvw = rk.kv_heads * d;
    const int64_t at = ((int64_t)rk.slot[t] * rk.max_seq + rk.pos[t]) * kvw;
    if (head >= rk.heads + rk.kv_heads) {  // V: into the cache as it is
        bf16* vr = rk.v_cache + at + (head - rk.heads - rk.kv_heads) * d;
        vr[i] = __float2bfloat16(a), vr[i + half] = __float2bfloat16(b);
        return;
    }
    float s, c;
    sincosf((float)rk.pos[t] * rk.inv_freq[i], &s, &c);  // as rope_kernel
    bf16* out = head < rk.heads ? y + (t * rk.heads + head) * d : rk.k_cache + at + (head - rk.heads) * d;
    out[i] = __float2bfloat16(rope_lo(a, b, c, s));
    out[i + half] = __float2bfloat16(rope_hi(a, b, c, s));
}

}  // namespace tpx::cuda
