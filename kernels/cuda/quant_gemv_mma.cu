// The quantized decode GEMVs on tensor cores ([backend.tuning] quant_mma, the default), the form
// fed from registers (FP8 weights in 128 x 128 blocks take the ring form instead where it
// applies: quant_gemv_ring.cu, quant_ring). The FMA GEMVs (quant_gemv.cu) are bound
// by the instructions that convert and multiply each weight (docs/PERF.md); here the products go
// through mma.sync m16n8k16 (fp16 in, fp32 sums), the weight converted once to fp16 and x
// converted once per block into shared memory as fp16 (quant_gemv_mma.cuh). A warp takes a tile
// of 16 items (16 weight rows, 32 with an epilogue); one to 8 warps share a tile's steps: lane
// (g, c) streams 16 bytes of rows g and g + 8 at the step's c-th quarter, and the step's mmas read
// them as k-slices in an order of their own (the mma's k order is free where A and B agree), B
// being token g's x, stored in that order.
//   FP8: a step is 64 columns, 16 a lane; slice j is the lane's values 4j .. 4j + 3, through the
//   hardware's e4m3x2 -> f16x2 (exact). A step lies in one scale block (block_in 64 x 2^n
//   columns, the cut a multiple of 64); its sums times the rows' scales go into the fp32 sums.
//   GPTQ: a step is 128 positions (one group: GptqLayout::group_steps), 32 a lane, a tile's
//   16 rows of it 1 KB in a row (cpu::gptq_word: each load 512 contiguous bytes); word i's
//   nibbles pair as (0, 4), (1, 5), (2, 6), (3, 7) (int4x8_to_f16), x stored in the same pairing;
//   an asymmetric zero adds (8 - zero) x the step's sum of x. Act-order weights read x gathered
//   per segment; a tile whose rows span segments runs once per segment, keeping each row's own.
// The warps' partial sums are added in warp order in shared memory; the epilogue is
// quant_gemv.cuh's.
#include <algorithm>

#include "kernels/cuda/quant_gemv_mma.cuh"

namespace tpx::cuda {
namespace {

using namespace quant;

constexpr int kTile = 16;  // items a tile: the mma's m

template <Format F>
__host__ __device__ constexpr int64_t step_k() {
    return F == Format::kFp8 ? 64 : cpu::kGptqStep;
}
// 16-byte loads (uint4) from one step of a row to the next: FP8 rows of K bytes; GPTQ's tiles of
// 16 rows by a step (cpu::gptq_word).
template <Format F>
__host__ __device__ constexpr int step_stride() {
    return F == Format::kFp8 ? 4 : 64;
}

// (w & mask) | bits as one LOP3 (0xea: a & b | c); the same in C++ compiles to two.
__device__ __forceinline__ uint32_t and_or(uint32_t w, uint32_t mask, uint32_t bits) {
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(w), "r"(mask), "r"(bits));
    return r;
}

// Nibbles (j, j + 4) of a word, j = 0..3, as fp16 q - 8, both exact: the mask puts q (or 16 q) in
// the mantissa of 1024.
__device__ __forceinline__ void int4x8_to_f16(uint32_t word, uint32_t* p) {
    const __half2 lo_off = __float2half2_rn(1032.0f), hi_mul = __float2half2_rn(0.0625f), hi_off = __float2half2_rn(-72.0f);
    const uint32_t up = word >> 8;
    const uint32_t v[4] = {and_or(word, 0x000f000fu, 0x64006400u), and_or(word, 0x00f000f0u, 0x64006400u), and_or(up, 0x000f000fu, 0x64006400u),
                           and_or(up, 0x00f000f0u, 0x64006400u)};
    __half2 h[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = *reinterpret_cast<const __half2*>(&v[i]);
    h[0] = __hsub2(h[0], lo_off), h[2] = __hsub2(h[2], lo_off);
    h[1] = __hfma2(h[1], hi_mul, hi_off), h[3] = __hfma2(h[3], hi_mul, hi_off);
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = *reinterpret_cast<const uint32_t*>(&h[i]);
}

// The register-fed form's shared memory (Smem, quant_gemv_mma.cuh): x rows Kp + 8 halves apart;
// the warps' partial sums reuse x's bytes.
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

// One weight row set of a tile: rows g and g + 8 of one of an item's R rows, in one segment.
struct RowSet {
    const uint4* w[2];  // the rows at this lane's quarter of step 0
    const float* fp8_scale[2];
    const uint16_t* gptq_scales;  // the whole [N, G] scales: row h's group g at gptq_scale_at[h] + g (N G < 2^32: mma_applies)
    uint32_t gptq_scale_at[2];
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
    if constexpr (F == Format::kGptq) rs.gptq_scales = a.w.gptq.scales;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if constexpr (F == Format::kFp8) {
            const cpu::Fp8View& w = a.w.fp8;
            rs.w[h] = reinterpret_cast<const uint4*>(w.w + rows[h] * w.l.K + 16 * c);
            rs.fp8_scale[h] = w.scale + (rows[h] / w.l.rows_per_scale) * w.l.scale_cols;
            rs.mine[h] = true;
        } else {
            const cpu::GptqView& w = a.w.gptq;
            rs.w[h] = reinterpret_cast<const uint4*>(w.qw + cpu::gptq_word(w.l, rows[h], 4 * c));
            rs.gptq_scale_at[h] = (uint32_t)(rows[h] * w.l.G);
            rs.gptq_zero[h] = w.zeros ? w.zeros + rows[h] * w.l.G : nullptr;
            rs.groups = w.chunk_group + seg * (Kp / cpu::kGptqChunk);
            rs.mine[h] = w.perm == nullptr || cpu::gptq_segment(w.l, rows[h]) == seg;
        }
    }
    return rs;
}

// The weights of steps s0 .. s0 + U - 1 before `end` into registers.
template <Format F, int U>
__device__ inline void load_steps(const RowSet& rs, int s0, int end, int64_t K, int c, uint4 (&wv)[U][2]) {
    constexpr int kStep = (int)step_k<F>();
    constexpr int kStride = step_stride<F>();
    const uint4* w[2] = {rs.w[0] + kStride * (int64_t)s0, rs.w[1] + kStride * (int64_t)s0};  // the steps at constant offsets from here
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int s = s0 + u;
        if (s >= end) continue;  // past the run: left as they are, never read (mma_steps stops at end)
        // An FP8 row's last step past K (K % 64 != 0): zeros, which the mma does read (x is zero
        // there too, but garbage weights could decode to NaN).
        const bool in_k = F != Format::kFp8 || (int64_t)s * kStep + 16 * c < K;
#pragma unroll
        for (int h = 0; h < 2; ++h) wv[u][h] = in_k ? __ldcs(w[h] + kStride * u) : make_uint4(0, 0, 0, 0);  // 64 bytes a row a step, streamed
    }
}

// Steps s0 .. s0 + U - 1 (those before `end`) times x into acc (rows g, g + 8 at columns 2c,
// 2c + 1). fp8_col: the FP8 step's scale column is (s + fp8_col.x) >> fp8_col.y. xsum: GPTQ's
// per-step sums of x of this segment, [tokens][xsum_stride]. Every lane reads x: lanes
// g >= tokens read token 0's, which reaches only the mma's columns >= tokens, never written out.
template <Format F, bool kGather, int U>
__device__ inline void mma_steps(const QuantGemvArgs& a, const RowSet& rs, int s0, int end, int xsum_stride, const uint4 (&wv)[U][2],
                                 uint2 fp8_col, const float* xsum, int g, int c, float* acc) {
    constexpr int kStep = (int)step_k<F>(), kChunks = (int)(kStep / cpu::kGptqChunk);
    const int T = (int)a.tokens;
    const int32_t* groups = F == Format::kGptq ? rs.groups + (int64_t)s0 * kChunks : nullptr;  // step s0 + u's group at groups[u * kChunks]
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int s = s0 + u;
        if (s >= end) break;
        float s_lo, s_hi;  // the step's scales, loaded first
        int grp = 0;
        if constexpr (F == Format::kFp8) {
            const unsigned col = ((unsigned)s + fp8_col.x) >> fp8_col.y;
            s_lo = __ldg(rs.fp8_scale[0] + col), s_hi = __ldg(rs.fp8_scale[1] + col);
        } else {
            grp = __ldg(groups + u * kChunks);  // a group index: never negative
            s_lo = __half2float(__ushort_as_half(__ldg(rs.gptq_scales + (rs.gptq_scale_at[0] + (uint32_t)grp))));
            s_hi = __half2float(__ushort_as_half(__ldg(rs.gptq_scales + (rs.gptq_scale_at[1] + (uint32_t)grp))));
        }
        if constexpr (kGather) {
            if (!rs.mine[0]) s_lo = 0.0f;
            if (!rs.mine[1]) s_hi = 0.0f;
        }
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        const uint32_t w0[4] = {wv[u][0].x, wv[u][0].y, wv[u][0].z, wv[u][0].w};
        const uint32_t w1[4] = {wv[u][1].x, wv[u][1].y, wv[u][1].z, wv[u][1].w};
        if constexpr (F == Format::kFp8) {
            const uint4* xp = reinterpret_cast<const uint4*>(rs.x + s * kStep + 16 * c);
            const uint4 xv[2] = {xp[0], xp[1]};
            const uint32_t b[8] = {xv[0].x, xv[0].y, xv[0].z, xv[0].w, xv[1].x, xv[1].y, xv[1].z, xv[1].w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {  // slice j: the lane's values 4j, 4j+1 (a0, a1, b0) and 4j+2, 4j+3 (a2, a3, b1)
                const uint32_t af[4] = {e4m3x2_to_f16x2(w0[j]), e4m3x2_to_f16x2(w1[j]), e4m3x2_to_f16x2(w0[j] >> 16), e4m3x2_to_f16x2(w1[j] >> 16)};
                mma16816(d, af, b[2 * j], b[2 * j + 1]);
            }
        } else {
            const uint4* xp = reinterpret_cast<const uint4*>(rs.x + s * kStep + 32 * c);
#pragma unroll
            for (int i = 0; i < 4; ++i) {  // word i: slices 2i (nibbles 0,4 and 1,5) and 2i + 1 (2,6 and 3,7)
                const uint4 xv = xp[i];
                uint32_t p0[4], p1[4];
                int4x8_to_f16(w0[i], p0);
                int4x8_to_f16(w1[i], p1);
                const uint32_t lo[4] = {p0[0], p1[0], p0[1], p1[1]}, hi[4] = {p0[2], p1[2], p0[3], p1[3]};
                mma16816(d, lo, xv.x, xv.y);
                mma16816(d, hi, xv.z, xv.w);
            }
            if (rs.gptq_zero[0]) {  // q - zero = (q - 8) + (8 - zero)
                const float z_lo = 8.0f - (float)__ldg(rs.gptq_zero[0] + grp), z_hi = 8.0f - (float)__ldg(rs.gptq_zero[1] + grp);
                const float x0 = 2 * c < T ? xsum[(2 * c) * xsum_stride + s] : 0.0f, x1 = 2 * c + 1 < T ? xsum[(2 * c + 1) * xsum_stride + s] : 0.0f;
                d[0] = __fmaf_rn(z_lo, x0, d[0]), d[1] = __fmaf_rn(z_lo, x1, d[1]);
                d[2] = __fmaf_rn(z_hi, x0, d[2]), d[3] = __fmaf_rn(z_hi, x1, d[3]);
            }
        }
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

// A block's 8 warps take 8 / split tiles, `split` warps a tile splitting its steps into as many
// runs of consecutive steps (split 1, 2, 4 or 8: more where there are few tiles, so that enough
// weight bytes are in flight; a run's steps are one base address plus constants). early: the
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
    const int kpart = warp % split, per = (int)((steps + split - 1) / split);  // this warp's steps: first .. end - 1
    const int first = kpart * per, end = (int)min(steps, (int64_t)first + per);
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
        const int64_t rows0[2] = {rows[0][0], rows[1][0]};
        const int seg = tile_segments<E, kGather>(a, tile, items, pair, half, 0).x;
        load_steps<F, U>(row_set<F>(a, rows0, seg, xh, L.ld, Kp, g, c), first, end, K, c, wv);
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
            for (int s0 = first; s0 < end; s0 += U) {
                if (!loaded) load_steps<F, U>(rs, s0, end, K, c, wv);
                loaded = false;
                mma_steps<F, kGather, U>(a, rs, s0, end, (int)steps, wv, fp8_col, seg_xsum, g, c, acc[r]);
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

template <Format F, GemvEpilogue E, bool kNorm, bool kGather = false>
void launch_mma(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at) {
    if constexpr (F == Format::kFp8) {
        if (at.config->quant_ring && ring_gemv(a, items, pair, at)) return;
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
    // (The steps a row are counted in int: x's K columns in shared memory keep them far below 2^31.)
    const cpu::GptqLayout& l = a.w.gptq.l;
    return l.group_steps && !(a.has_norm && a.w.gptq.perm) && aligned16({a.w.gptq.qw}) && (uint64_t)l.N * (uint64_t)l.G < (1ull << 32) &&
           (size_t)smem_of<Format::kGptq>(a, R).bytes <= optin_smem();
}

void quant::mma_gemv(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at) {
    if (a.w.format == Format::kFp8) dispatch<Format::kFp8, false>(a, items, pair, at);
    else if (a.w.gptq.perm) dispatch<Format::kGptq, true>(a, items, pair, at);
    else dispatch<Format::kGptq, false>(a, items, pair, at);
}

}  // namespace tpx::cuda
