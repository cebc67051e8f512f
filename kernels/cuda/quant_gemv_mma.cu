// The quantized decode GEMVs on tensor cores ([backend.tuning] quant_mma, the default). The FMA
// GEMVs (quant_gemv.cu) are bound by the instructions that convert and multiply each weight
// (docs/PERF.md); here the products go through mma.sync m16n8k16
// (fp16 in, fp32 sums), the weight converted once to fp16 and x converted once per block into
// shared memory as fp16. A warp takes a tile of 16 items (16 weight rows, 32 with an epilogue);
// one to 8 warps share a tile's steps: lane (g, c) streams 16 bytes of rows g and g + 8 at the step's
// c-th quarter, and the step's mmas read them as k-slices in an order of their own (the mma's k
// order is free where A and B agree), B being token g's x, stored in that order.
//   FP8: a step is 64 columns, 16 a lane; slice j is the lane's values 4j .. 4j + 3, through the
//   hardware's e4m3x2 -> f16x2 (exact). A step lies in one scale block (block_in 64 x 2^n
//   columns, the cut a multiple of 64); its sums times the rows' scales go into the fp32 sums.
//   Weights in 128 x 128 blocks take the ring form instead (fp8_ring_kernel, quant_ring).
//   GPTQ: a step is 128 positions (one group: GptqLayout::group_steps), 32 a lane; word i's
//   nibbles pair as (0, 4), (1, 5), (2, 6), (3, 7) (mask and OR into 1024 + q or 1024 + 16 q,
//   fp16), minus 8 exactly, x stored in the same pairing; an asymmetric zero adds
//   (8 - zero) x the step's sum of x. Act-order weights read x gathered per segment; a tile whose
//   rows span segments runs once per segment, keeping each row's own.
// The warps' partial sums are added in warp order in shared memory; the epilogue is
// quant_gemv.cuh's. x in fp16: a bf16 value in fp16's normal range is exact (below it, fp16
// subnormals lose bits); a token whose largest |x| reaches 2^15 is scaled by a power of two
// first (exact) and its sums scaled back.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>

#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/quant_gemv.cuh"
#include "kernels/cuda/weight_ring.cuh"

namespace tpx::cuda {
namespace {

using namespace quant;
using Format = QuantWeightView::Format;
constexpr int kTile = 16;  // items a tile: the mma's m
constexpr float kHalfSafe = 32768.0f;

template <Format F>
__host__ __device__ constexpr int64_t step_k() {
    return F == Format::kFp8 ? 64 : cpu::kGptqStep;
}

// d += A B, one m16n8k16 (PTX ISA fragment layouts: a0/a2 row g, a1/a3 row g + 8, a0/a1 k 2c..2c+1,
// a2/a3 k 2c+8..2c+9; b0/b1 column g at those k; d0/d1 row g, d2/d3 row g + 8, columns 2c, 2c + 1).
__device__ __forceinline__ void mma16816(float* d, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t two) {
    const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
    return (uint32_t)r.x | ((uint32_t)r.y << 16);
}

// Nibbles (j, j + 4) of a word, j = 0..3, as fp16 q - 8, both exact: the mask puts q (or 16 q) in
// the mantissa of 1024.
__device__ __forceinline__ void int4x8_to_f16(uint32_t word, uint32_t* p) {
    const __half2 lo_off = __float2half2_rn(1032.0f), hi_mul = __float2half2_rn(0.0625f), hi_off = __float2half2_rn(-72.0f);
    const uint32_t up = word >> 8;
    uint32_t v[4] = {(word & 0x000f000fu) | 0x64006400u, (word & 0x00f000f0u) | 0x64006400u, (up & 0x000f000fu) | 0x64006400u,
                     (up & 0x00f000f0u) | 0x64006400u};
    __half2 h[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = *reinterpret_cast<const __half2*>(&v[i]);
    h[0] = __hsub2(h[0], lo_off), h[2] = __hsub2(h[2], lo_off);
    h[1] = __hfma2(h[1], hi_mul, hi_off), h[3] = __hfma2(h[3], hi_mul, hi_off);
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = *reinterpret_cast<const uint32_t*>(&h[i]);
}

// Shared memory: the tokens' scale-back factors, GPTQ's per-step sums of x [segments][tokens]
// [steps], the norm's floats and staging, then x as fp16 [segments][tokens][ld] (ld: Kp, K
// rounded up to the step, plus 8: rows 16 bytes off the banks' period; zeros past K; GPTQ in
// nibble-pair order), whose bytes the warps' partial sums [warp][R][4][lane] reuse at the end.
struct Smem {
    int64_t ld = 0, xscale = 0, xsum = 0, norm = 0, xh = 0, part = 0, bytes = 0;
};
template <Format F>
__host__ __device__ inline Smem smem_of(const QuantGemvArgs& a, int R) {
    Smem s;
    const int64_t K = a.w.K(), Kp = F == Format::kFp8 ? (K + 63) / 64 * 64 : a.w.gptq.l.Kp;
    const int64_t S = F == Format::kGptq && a.w.gptq.perm ? a.w.gptq.l.segments : 1;
    s.ld = Kp + 8;
    s.xscale = 0;
    s.xsum = 16 * 4;
    s.norm = s.xsum + (F == Format::kGptq && a.w.gptq.zeros ? (S * a.tokens * (Kp / cpu::kGptqStep) * 4 + 15) / 16 * 16 : 0);
    s.xh = s.norm + (a.has_norm ? K * (4 + 2) : 0);
    s.part = s.xh;
    const int64_t x_bytes = S * a.tokens * s.ld * 2, part_bytes = (int64_t)kWarps * R * 4 * 32 * 4;
    s.bytes = s.xh + (x_bytes > part_bytes ? x_bytes : part_bytes);
    return s;
}

// Position p of a step-ordered x row: where x's position k goes (GPTQ pairs nibbles (j, j + 4)
// of each 8: stored order 0 4 1 5 2 6 3 7).
template <Format F>
__device__ inline int64_t stored_at(int64_t k) {
    if constexpr (F == Format::kFp8) return k;
    else return (k & ~7) | ((k & 3) << 1) | ((k >> 2) & 1);
}

// x (or the norm's output; for act-order, x gathered per segment) into shared memory as fp16, each
// token scaled by a power of two where its largest |x| reaches kHalfSafe (a rare redo pass);
// xscale[t] the factor that undoes it; for asymmetric GPTQ the per-step sums of the stored x.
// x at position p of segment s, token t (0 for padding and past K).
template <bool kNorm, bool kGather>
__device__ inline float x_at(const QuantGemvArgs& a, const float* xf, int64_t Kp, int64_t s, int64_t t, int64_t p) {
    int64_t k = p;
    if (kGather) {
        k = __ldg(a.w.gptq.perm + s * Kp + p);
        if (k < 0) return 0.0f;
    }
    if (k >= a.w.K()) return 0.0f;
    return kNorm ? xf[k] : __bfloat162float(a.x[t * a.w.K() + k]);
}

template <Format F, bool kNorm, bool kGather, typename Then = Nothing>
__device__ void stage_x(const QuantGemvArgs& a, char* smem, const Smem& L, int64_t Kp, Then then = Nothing{}) {
    const int64_t K = a.w.K(), T = a.tokens, S = kGather ? a.w.gptq.l.segments : 1;
    __half* xh = reinterpret_cast<__half*>(smem + L.xh);
    float* xscale = reinterpret_cast<float*>(smem + L.xscale);
    float* xf = reinterpret_cast<float*>(smem + L.norm);
    if constexpr (kNorm) norm_into(K, a.norm, reinterpret_cast<uint4*>(smem + L.norm + K * 4), xf, then);
    bool big = false;
    const int per = (int)(Kp / 8);  // 8 positions a thread a turn: one 16-byte store
    const int n = (int)(S * T) * per;
    const int64_t ld = L.ld;
    constexpr int kB = kNormBatch;  // turns a thread loads x for at once (one wait on memory a round)
    for (int base = threadIdx.x; base < n; base += kB * kThreads) {
        uint4 raw[kB];
        if constexpr (!kNorm && !kGather) {
#pragma unroll
            for (int u = 0; u < kB; ++u) {
                const int i = base + u * kThreads, st = i / per, p = (i - st * per) * 8;
                raw[u] = i < n && p < K ? __ldg(reinterpret_cast<const uint4*>(a.x + st * K + p)) : make_uint4(0, 0, 0, 0);
            }
            if (base == (int)threadIdx.x) then();
        }
#pragma unroll
        for (int u = 0; u < kB; ++u) {
            const int i = base + u * kThreads, st = i / per, p = (i - st * per) * 8;
            if (i >= n) break;
            float v[8];
            if (kGather) {
#pragma unroll
                for (int j = 0; j < 8; ++j) v[j] = x_at<kNorm, kGather>(a, xf, Kp, st / T, st % T, p + j);
            } else if (!kNorm) {
                unpack8(raw[u], v);
            } else if (p >= K) {
#pragma unroll
                for (int j = 0; j < 8; ++j) v[j] = 0.0f;
            } else {
                const float4 lo = reinterpret_cast<const float4*>(xf + p)[0], hi = reinterpret_cast<const float4*>(xf + p)[1];
                v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) big |= !(fabsf(v[j]) < kHalfSafe);
            __half2 h[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)  // FP8: in order; GPTQ: pairs (j, j + 4)
                h[j] = F == Format::kFp8 ? __floats2half2_rn(v[2 * j], v[2 * j + 1]) : __floats2half2_rn(v[j], v[j + 4]);
            *reinterpret_cast<uint4*>(xh + st * ld + p) = *reinterpret_cast<const uint4*>(h);
        }
    }
    if (threadIdx.x < 16) xscale[threadIdx.x] = 1.0f;
    if (__syncthreads_or(big)) {
        for (int64_t t = 0; t < T; ++t) {  // the redo: a power of two that brings the token's largest |x| below kHalfSafe
            float m = 0.0f;
            for (int64_t i = threadIdx.x; i < S * Kp; i += kThreads) m = fmaxf(m, fabsf(x_at<kNorm, kGather>(a, xf, Kp, i / Kp, t, i % Kp)));
            m = block_max(m);
            int e = 0;
            if (m >= kHalfSafe) frexpf(m / kHalfSafe, &e);
            const float down = ldexpf(1.0f, -e);
            for (int64_t i = threadIdx.x; i < S * Kp; i += kThreads) {
                const int64_t s = i / Kp, p = i % Kp;
                xh[(s * T + t) * ld + stored_at<F>(p)] = __float2half_rn(x_at<kNorm, kGather>(a, xf, Kp, s, t, p) * down);
            }
            if (threadIdx.x == 0) xscale[t] = ldexpf(1.0f, e);
        }
        __syncthreads();
    }
    if constexpr (F == Format::kGptq) {
        if (!a.w.gptq.zeros) return;
        float* xsum = reinterpret_cast<float*>(smem + L.xsum);
        const int64_t steps = Kp / cpu::kGptqStep;
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        for (int64_t i = warp; i < S * T * steps; i += kWarps) {  // one warp a step: 4 values a lane
            const __half* p = xh + (i / steps) * ld + (i % steps) * cpu::kGptqStep + 4 * lane;
            float v = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) v += __half2float(p[j]);
            v = warp_sum(v);
            if (lane == 0) xsum[i] = v;
        }
        __syncthreads();
    }
}

// One weight row set of a tile: rows g and g + 8 of one of an item's R rows, in one segment.
struct RowSet {
    const uint4* w[2];  // the rows at this lane's quarter of step 0
    const float* fp8_scale[2];
    const uint16_t* gptq_scale[2];
    const uint8_t* gptq_zero[2];
    const int32_t* groups;  // the segment's chunk -> group
    const __half* x;        // token g's x (token 0's where g has none), the segment's copy
    bool mine[2];           // the row lies in this segment
};

template <Format F>
__device__ inline RowSet row_set(const QuantGemvArgs& a, const int64_t (&rows)[2], int seg, const __half* xh, int64_t ld, int64_t Kp, int g,
                                int c) {
    RowSet rs;
    const int64_t T = a.tokens;
    rs.x = xh + ((int64_t)seg * T + (g < T ? g : 0)) * ld;
    rs.groups = nullptr;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if constexpr (F == Format::kFp8) {
            const cpu::Fp8View& w = a.w.fp8;
            rs.w[h] = reinterpret_cast<const uint4*>(w.w + rows[h] * w.l.K + 16 * c);
            rs.fp8_scale[h] = w.scale + (rows[h] / w.l.rows_per_scale) * w.l.scale_cols;
            rs.mine[h] = true;
        } else {
            const cpu::GptqView& w = a.w.gptq;
            rs.w[h] = reinterpret_cast<const uint4*>(w.qw + rows[h] * (Kp / 8)) + c;
            rs.gptq_scale[h] = w.scales + rows[h] * w.l.G;
            rs.gptq_zero[h] = w.zeros ? w.zeros + rows[h] * w.l.G : nullptr;
            rs.groups = w.chunk_group + seg * (Kp / cpu::kGptqChunk);
            rs.mine[h] = w.perm == nullptr || cpu::gptq_segment(w.l, rows[h]) == seg;
        }
    }
    return rs;
}

// The weights of steps s0, s0 + 8, ... (U of them) into registers; zeros past the end.
template <Format F, int U>
__device__ inline void load_steps(const RowSet& rs, int64_t s0, int split, int64_t steps, int64_t K, int c, uint4 (&wv)[U][2]) {
    constexpr int64_t kStep = step_k<F>();
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int64_t s = s0 + u * split;
        const bool in = s < steps && (F != Format::kFp8 || s * kStep + 16 * c < K);
#pragma unroll
        for (int h = 0; h < 2; ++h) wv[u][h] = in ? __ldcs(rs.w[h] + s * 4) : make_uint4(0, 0, 0, 0);  // 64 bytes a row a step; streamed
    }
}

// Steps s0, s0 + 8, ... times x into acc (rows g, g + 8 at columns 2c, 2c + 1). fp8_col: the
// FP8 step's scale column is (s + fp8_col.x) >> fp8_col.y. xsum: GPTQ's per-step sums of x
// [tokens][steps] of this segment.
template <Format F, int U>
__device__ inline void mma_steps(const QuantGemvArgs& a, const RowSet& rs, int64_t s0, int split, int64_t steps, const uint4 (&wv)[U][2], uint2 fp8_col,
                                 const float* xsum, int g, int c, float* acc) {
    constexpr int64_t kStep = step_k<F>();
    const int64_t T = a.tokens;
    const bool has_x = g < T;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int64_t s = s0 + u * split;
        if (s >= steps) break;
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        const uint32_t w0[4] = {wv[u][0].x, wv[u][0].y, wv[u][0].z, wv[u][0].w};
        const uint32_t w1[4] = {wv[u][1].x, wv[u][1].y, wv[u][1].z, wv[u][1].w};
        float s_lo, s_hi;
        if constexpr (F == Format::kFp8) {
            uint4 xv[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
            if (has_x) xv[0] = reinterpret_cast<const uint4*>(rs.x + s * kStep + 16 * c)[0], xv[1] = reinterpret_cast<const uint4*>(rs.x + s * kStep + 16 * c)[1];
            const uint32_t b[8] = {xv[0].x, xv[0].y, xv[0].z, xv[0].w, xv[1].x, xv[1].y, xv[1].z, xv[1].w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {  // slice j: the lane's values 4j, 4j+1 (a0, a1, b0) and 4j+2, 4j+3 (a2, a3, b1)
                const uint32_t af[4] = {e4m3x2_to_f16x2(w0[j]), e4m3x2_to_f16x2(w1[j]), e4m3x2_to_f16x2(w0[j] >> 16), e4m3x2_to_f16x2(w1[j] >> 16)};
                mma16816(d, af, b[2 * j], b[2 * j + 1]);
            }
            const unsigned col = ((unsigned)s + fp8_col.x) >> fp8_col.y;
            s_lo = __ldg(rs.fp8_scale[0] + col), s_hi = __ldg(rs.fp8_scale[1] + col);
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) {  // word i: slices 2i (nibbles 0,4 and 1,5) and 2i + 1 (2,6 and 3,7)
                uint4 xv = make_uint4(0, 0, 0, 0);
                if (has_x) xv = reinterpret_cast<const uint4*>(rs.x + s * kStep + 32 * c)[i];
                uint32_t p0[4], p1[4];
                int4x8_to_f16(w0[i], p0);
                int4x8_to_f16(w1[i], p1);
                const uint32_t lo[4] = {p0[0], p1[0], p0[1], p1[1]}, hi[4] = {p0[2], p1[2], p0[3], p1[3]};
                mma16816(d, lo, xv.x, xv.y);
                mma16816(d, hi, xv.z, xv.w);
            }
            const int grp = __ldg(rs.groups + s * (kStep / cpu::kGptqChunk));
            s_lo = __half2float(__ushort_as_half(__ldg(rs.gptq_scale[0] + grp)));
            s_hi = __half2float(__ushort_as_half(__ldg(rs.gptq_scale[1] + grp)));
            if (rs.gptq_zero[0]) {  // q - zero = (q - 8) + (8 - zero)
                const float z_lo = 8.0f - (float)__ldg(rs.gptq_zero[0] + grp), z_hi = 8.0f - (float)__ldg(rs.gptq_zero[1] + grp);
                const float x0 = 2 * c < T ? xsum[(2 * c) * steps + s] : 0.0f, x1 = 2 * c + 1 < T ? xsum[(2 * c + 1) * steps + s] : 0.0f;
                d[0] = __fmaf_rn(z_lo, x0, d[0]), d[1] = __fmaf_rn(z_lo, x1, d[1]);
                d[2] = __fmaf_rn(z_hi, x0, d[2]), d[3] = __fmaf_rn(z_hi, x1, d[3]);
            }
        }
        if (!rs.mine[0]) s_lo = 0.0f;
        if (!rs.mine[1]) s_hi = 0.0f;
        acc[0] = __fmaf_rn(s_lo, d[0], acc[0]), acc[1] = __fmaf_rn(s_lo, d[1], acc[1]);
        acc[2] = __fmaf_rn(s_hi, d[2], acc[2]), acc[3] = __fmaf_rn(s_hi, d[3], acc[3]);
    }
}

// The segments the tile's rows r span (rows rise with items), for act-order weights; else 0..0.
template <GemvEpilogue E, bool kGather>
__device__ inline int2 tile_segments(const QuantGemvArgs& a, int64_t tile, int64_t items, int64_t pair, int64_t half, int r) {
    if constexpr (!kGather) return make_int2(0, 0);
    int64_t first[2], last[2];
    item_rows<E>(tile * kTile, pair, half, first);
    item_rows<E>(min(tile * kTile + kTile - 1, items - 1), pair, half, last);
    return make_int2(cpu::gptq_segment(a.w.gptq.l, first[r]), cpu::gptq_segment(a.w.gptq.l, last[r]));
}

// A block's 8 warps take 8 / split tiles, `split` warps a tile splitting its steps (split 1, 2,
// 4 or 8: more where there are few tiles, so that enough weight bytes are in flight). early: the
// warps' first weight loads go out before the wait for the kernel before (weights are not written
// by it) and before x is staged ([backend.tuning] gemv_early).
template <Format F, GemvEpilogue E, bool kNorm, bool kGather>
__global__ void __launch_bounds__(kThreads, 2) mma_gemv_kernel(QuantGemvArgs a, int64_t items, int64_t pair, int split, bool early) {
    constexpr int R = E == GemvEpilogue::kNone ? 1 : 2;  // weight rows an item
    constexpr int U = R == 1 ? 8 : 4;                    // steps in flight a warp
    constexpr int64_t kStep = step_k<F>();
    extern __shared__ __align__(16) char smem[];
    const int64_t K = a.w.K(), Kp = F == Format::kFp8 ? (K + kStep - 1) / kStep * kStep : a.w.gptq.l.Kp, steps = Kp / kStep;
    const Smem L = smem_of<F>(a, R);
    const __half* xh = reinterpret_cast<const __half*>(smem + L.xh);
    const float* xscale = reinterpret_cast<const float*>(smem + L.xscale);
    const float* xsum = reinterpret_cast<const float*>(smem + L.xsum);
    float* part = reinterpret_cast<float*>(smem + L.part);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int64_t half = a.rope.head_dim / 2, T = a.tokens;
    const int kpart = warp % split;  // this warp's steps: kpart, kpart + split, ...
    const int64_t tile = (int64_t)blockIdx.x * (kWarps / split) + warp / split;
    const bool valid = tile * kTile < items;
    uint2 fp8_col = make_uint2(0, 0);  // FP8: (in_offset / 64, log2(block_in / 64)), a power of two (mma_applies)
    if constexpr (F == Format::kFp8) fp8_col = make_uint2((unsigned)(a.w.fp8.l.in_offset / 64), __ffs((int)(a.w.fp8.l.block_in / 64)) - 1);
    int64_t rows[2][2];  // rows[h][r]: the rows of item tile*16 + g + 8h (the last item where past the end)
#pragma unroll
    for (int h = 0; h < 2; ++h) item_rows<E>(min(tile * kTile + g + 8 * h, items - 1), pair, half, rows[h]);
    uint4 wv[U][2];
    bool loaded = false;  // wv holds the first steps of rows r = 0 in the first segment
    if (early && valid) {
        const int64_t first[2] = {rows[0][0], rows[1][0]};
        const int seg = tile_segments<E, kGather>(a, tile, items, pair, half, 0).x;
        load_steps<F, U>(row_set<F>(a, first, seg, xh, L.ld, Kp, g, c), kpart, split, steps, K, c, wv);
        loaded = true;
    }
    pdl_entry();
    stage_x<F, kNorm, kGather>(a, smem, L, Kp);
    float acc[R][4] = {};
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int2 segs = valid ? tile_segments<E, kGather>(a, tile, items, pair, half, r) : make_int2(0, -1);
        const int64_t mine[2] = {rows[0][r], rows[1][r]};
        for (int seg = segs.x; seg <= segs.y; ++seg) {
            const RowSet rs = row_set<F>(a, mine, seg, xh, L.ld, Kp, g, c);
            const float* seg_xsum = xsum + (int64_t)seg * T * steps;
            for (int64_t s0 = kpart; s0 < steps; s0 += (int64_t)split * U) {
                if (!loaded) load_steps<F, U>(rs, s0, split, steps, K, c, wv);
                loaded = false;
                mma_steps<F, U>(a, rs, s0, split, steps, wv, fp8_col, seg_xsum, g, c, acc[r]);
            }
            loaded = false;
        }
    }
    // The tile's warps' sums, added in kpart order by its first warp, which writes the outputs
    // (into x's bytes: every warp is past its last read of x first).
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[((warp * R + r) * 4 + i) * 32 + lane] = acc[r][i];
    __syncthreads();
    if (!valid || kpart != 0) return;
    float sum[R][4] = {};
    for (int v = warp; v < warp + split; ++v)
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int i = 0; i < 4; ++i) sum[r][i] += part[((v * R + r) * 4 + i) * 32 + lane];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int64_t item = tile * kTile + g + 8 * h;
        if (item >= items) continue;
        if constexpr (E != GemvEpilogue::kNone) {
            if (c != 0) continue;  // column 0: the one token
            const float one[2] = {sum[0][2 * h] * xscale[0], sum[R - 1][2 * h] * xscale[0]};
            write_item<E>(a, item, rows[h], one);
        } else {
            const float b0 = a.bias ? __bfloat162float(a.bias[rows[h][0]]) : 0.0f;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int64_t t = 2 * c + e;
                if (t < T) a.y[t * a.w.N() + rows[h][0]] = __float2bfloat16(sum[0][2 * h + e] * xscale[t] + b0);
            }
        }
    }
}

// The kernel's dynamic shared memory limit raised to optin_smem().
template <typename Kernel>
bool set_smem_limit(Kernel kernel) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)optin_smem()));
    return true;
}

// The FP8 ring form (weights in 128 x 128 scale blocks): the weights stream through
// weight_ring.cuh's ring, a step being 128 columns (a 128-byte line of each row, one scale
// block's width); each 16-byte chunk is a k-slice: ldmatrix (as b16) gives lane (g, c) bytes 4c ..
// 4c + 3 of rows g and g + 8, converted by e4m3x2 -> f16x2 into a0/a2 and a1/a3, and token g's x
// (fp16, staged once a block by stage_x, rows ld = Kp + 16 apart: conflict-free 8-byte reads) at
// the same four columns is b0/b1. A set's 16 rows lie in one block of rows: one scale a set a step.
struct RingSmem {
    Smem x;  // stage_x's layout, Kp a multiple of the 128-column step
    int64_t Kp = 0, ring = 0, bytes = 0;
};
__host__ __device__ inline RingSmem ring_smem(const QuantGemvArgs& a) {
    RingSmem r;
    const int64_t K = a.w.K();
    r.Kp = (K + ring::kLine - 1) / ring::kLine * ring::kLine;
    r.x.ld = r.Kp + 16, r.x.xscale = 0, r.x.xsum = 16 * 4, r.x.norm = r.x.xsum, r.x.xh = r.x.norm + (a.has_norm ? K * (4 + 2) : 0);
    r.ring = (r.x.xh + a.tokens * r.x.ld * 2 + 127) / 128 * 128;
    r.bytes = r.ring + (int64_t)ring::kWarps * ring::kStages * ring::kWBytes + 128;  // (+ the base's alignment)
    return r;
}

// Blocks of kThreads threads whatever the grid's shape (stage_x and the norm take all of them);
// the first `active` warps take tiles, the others only stage x and meet the barriers. The layout
// starts at the first 128-byte boundary of the dynamic shared memory (the static shared memory
// of the block sums comes first): ring slots off that boundary fill at a lower rate (docs/PERF.md).
// Each lane holds the scales of 32 of its warp's steps (step n's in lane n % 32), loaded 32 steps
// ahead and shuffled to the step, so that no step waits on a scale's load. early: the ring's
// first kStages - 1 steps are copied before the wait for the kernel before, and the next one
// right behind x's first loads (stage_x's `then`), so that the weights keep arriving while x
// is staged.
template <GemvEpilogue E, bool kNorm>
__global__ void __launch_bounds__(kThreads, 1) fp8_ring_kernel(QuantGemvArgs a, int64_t items, int64_t pair, int active, int split, bool early) {
    extern __shared__ __align__(16) char smem_raw[];  // (as mma_gemv_kernel's: one declaration a file)
    char* smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(smem_raw) + 127) & ~(uintptr_t)127);
    const RingSmem L = ring_smem(a);
    char* ring_base = smem + L.ring;
    const cpu::Fp8View& w = a.w.fp8;
    const int64_t K = w.l.K, steps = L.Kp / ring::kLine, half = a.rope.head_dim / 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, m = lane >> 3, rr = lane & 7;
    const int kpart = warp % split;
    const int64_t tile = (int64_t)blockIdx.x * (active / split) + warp / split;
    const bool valid = warp < active && tile * ring::kTileItems<E> < items;
    const int64_t mine = valid ? (steps - kpart + split - 1) / split : 0;
    ring::LineCopies lines;
    lines.init<E>(w.w, K, tile, items, pair, half);
    auto slot = [&](int64_t n) { return ring_base + ((n % ring::kStages) * ring::kWarps + warp) * ring::kWBytes; };
    auto copy = [&](int64_t n) {
        if (n < mine) lines.copy(slot(n), kpart + n * split, K);
    };
    const float* scale[ring::kSets];  // each set's row of scale blocks
#pragma unroll
    for (int s = 0; s < ring::kSets; ++s)
        scale[s] = w.scale + (ring::tile_row<E>(tile, 16 * s, items, pair, half) / w.l.rows_per_scale) * w.l.scale_cols + w.l.in_offset / 128;
    float cur[ring::kSets], next[ring::kSets];  // the scales of steps n .. n + 31 and of the 32 after
    auto load_scales = [&](float (&to)[ring::kSets], int64_t from) {
#pragma unroll
        for (int s = 0; s < ring::kSets; ++s) to[s] = from + lane < mine ? __ldg(scale[s] + kpart + (from + lane) * split) : 0.0f;
    };
    load_scales(cur, 0), load_scales(next, 32);  // (weights: before the wait)
    if (early)
        for (int n = 0; n < ring::kStages - 1; ++n) copy(n);
    pdl_entry();
    bool ahead = false;  // step kStages - 1 copied during stage_x (by the threads that load x)
    stage_x<Format::kFp8, kNorm, false>(a, smem, L.x, L.Kp, [&] {
        if (early) copy(ring::kStages - 1), ahead = true;
    });
    for (int n = 0; n < ring::kStages - 1; ++n) {
        if (!early) copy(n);
        cp_async_commit();
    }
    const __half* xr = reinterpret_cast<const __half*>(smem + L.x.xh) + (g < a.tokens ? g : 0) * L.x.ld + 4 * c;
    float acc[ring::kSets][4] = {};
    for (int64_t n = 0; n < mine; ++n) {
        if (n > 0 && n % 32 == 0) {
#pragma unroll
            for (int s = 0; s < ring::kSets; ++s) cur[s] = next[s];
            load_scales(next, n + 32);
        }
        if (n > 0 || !ahead) copy(n + ring::kStages - 1);
        cp_async_commit();
        cp_async_wait<ring::kStages - 1>();
        __syncwarp();
        const int64_t st = kpart + n * split;
        float d[ring::kSets][4] = {};
#pragma unroll
        for (int q = 0; q < 8; q += 2) {  // chunks q and q + 1: a slice each
            uint2 xv[2];
#pragma unroll
            for (int j = 0; j < 2; ++j) xv[j] = *reinterpret_cast<const uint2*>(xr + st * ring::kLine + (q + j) * 16);
#pragma unroll
            for (int s = 0; s < ring::kSets; ++s) {
                uint32_t r[4];  // rows g, g + 8 of chunk q, then of chunk q + 1
                ldmatrix_x4(r, slot(n) + ring::line_chunk(16 * s + rr + 8 * (m & 1), q + (m >> 1)));
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const uint32_t af[4] = {e4m3x2_to_f16x2(r[2 * j]), e4m3x2_to_f16x2(r[2 * j + 1]), e4m3x2_to_f16x2(r[2 * j] >> 16),
                                            e4m3x2_to_f16x2(r[2 * j + 1] >> 16)};
                    mma16816(d[s], af, xv[j].x, xv[j].y);
                }
            }
        }
#pragma unroll
        for (int s = 0; s < ring::kSets; ++s) {
            const float k = __shfl_sync(0xffffffffu, cur[s], (int)(n % 32));
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[s][i] = __fmaf_rn(k, d[s][i], acc[s][i]);
        }
        __syncwarp();
    }
    cp_async_wait_all();
    if (ring::add_split_sums(reinterpret_cast<float*>(ring_base), acc, split, valid))
        ring::write_tile<E>(a.tokens, a.w.N(), a.bias, a.y, a.rope, tile, items, pair, acc, reinterpret_cast<const float*>(smem + L.x.xscale));
}

// Whether the ring form takes these FP8 weights: scale blocks of 128 columns cut on a block's
// edge, each set's 16 rows inside one block of rows (SwiGLU's up rows and RoPE's half heads start
// on a multiple of 16), within the shared memory.
bool fp8_ring_applies(const QuantGemvArgs& a, int64_t pair) {
    const cpu::Fp8Layout& l = a.w.fp8.l;
    if (a.w.format != Format::kFp8 || l.block_in != 128 || l.in_offset % 128 != 0 || l.rows_per_scale % 16 != 0) return false;
    if (a.epi == GemvEpilogue::kSwiglu && pair % 16 != 0) return false;
    if (a.epi == GemvEpilogue::kRopeKv && (a.rope.head_dim / 2) % 16 != 0) return false;
    return (size_t)ring_smem(a).bytes <= optin_smem();
}

template <GemvEpilogue E, bool kNorm>
void launch_ring(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at) {
    const auto kernel = fp8_ring_kernel<E, kNorm>;
    static const bool raised = set_smem_limit(kernel);  // once a process: one device each
    (void)raised;
    const ring::Grid g = ring::grid_for((items + ring::kTileItems<E> - 1) / ring::kTileItems<E>);
    launch(kernel, g.blocks, kThreads, (size_t)ring_smem(a).bytes, at, a, items, pair, g.warps, g.split, at.config->gemv_early);
    TPX_LAUNCH_CHECK();
}

template <Format F, GemvEpilogue E, bool kNorm, bool kGather = false>
void launch_mma(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at) {
    if constexpr (F == Format::kFp8) {
        if (at.config->quant_ring && fp8_ring_applies(a, pair)) return launch_ring<E, kNorm>(a, items, pair, at);
    }
    constexpr int R = E == GemvEpilogue::kNone ? 1 : 2;
    const auto kernel = mma_gemv_kernel<F, E, kNorm, kGather>;
    const size_t smem = (size_t)smem_of<F>(a, R).bytes;
    static const bool raised = set_smem_limit(kernel);  // once a process: one device each
    (void)raised;
    // Warps a tile: the fewest that give at least 3/4 of the warps two blocks an SM hold (a tile's
    // warps add their sums at the end; a warp alone streams its tile's rows from end to end).
    const int64_t tiles = (items + kTile - 1) / kTile, target = (int64_t)sm_count() * 2 * kWarps * 3 / 4;
    int split = 1;
    while (split < kWarps && tiles * split < target) split *= 2;
    const int64_t per_block = kWarps / split;
    launch(kernel, (unsigned)((tiles + per_block - 1) / per_block), kThreads, smem, at, a, items, pair, split, at.config->gemv_early);
    TPX_LAUNCH_CHECK();
}

template <Format F, bool kGather>
void dispatch(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at) {
    if constexpr (!kGather) {
        if (a.has_norm && a.epi == GemvEpilogue::kSwiglu) return launch_mma<F, GemvEpilogue::kSwiglu, true>(a, items, pair, at);
        if (a.has_norm && a.epi == GemvEpilogue::kRopeKv) return launch_mma<F, GemvEpilogue::kRopeKv, true>(a, items, pair, at);
        if (a.has_norm) return launch_mma<F, GemvEpilogue::kNone, true>(a, items, pair, at);
    }
    if (a.epi == GemvEpilogue::kSwiglu) return launch_mma<F, GemvEpilogue::kSwiglu, false, kGather>(a, items, pair, at);
    if (a.epi == GemvEpilogue::kRopeKv) return launch_mma<F, GemvEpilogue::kRopeKv, false, kGather>(a, items, pair, at);
    launch_mma<F, GemvEpilogue::kNone, false, kGather>(a, items, pair, at);
}

}  // namespace

bool quant::mma_applies(const QuantGemvArgs& a) {
    const int R = a.epi == GemvEpilogue::kNone ? 1 : 2;
    if (a.tokens > 8) return false;
    if (a.w.format == Format::kFp8) {
        const cpu::Fp8Layout& l = a.w.fp8.l;
        const int64_t blocks = l.block_in / 64;
        return l.K % 16 == 0 && l.block_in % 64 == 0 && (blocks & (blocks - 1)) == 0 && l.in_offset % 64 == 0 && aligned16({a.w.fp8.w}) &&
               (size_t)smem_of<Format::kFp8>(a, R).bytes <= optin_smem();
    }
    const cpu::GptqLayout& l = a.w.gptq.l;
    return l.group_steps && !(a.has_norm && a.w.gptq.perm) && aligned16({a.w.gptq.qw}) &&
           (size_t)smem_of<Format::kGptq>(a, R).bytes <= optin_smem();
}

void quant::mma_gemv(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at) {
    if (a.w.format == Format::kFp8) dispatch<Format::kFp8, false>(a, items, pair, at);
    else if (a.w.gptq.perm) dispatch<Format::kGptq, true>(a, items, pair, at);
    else dispatch<Format::kGptq, false>(a, items, pair, at);
}

}  // namespace tpx::cuda
