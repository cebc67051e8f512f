// The ring form of the FP8 decode GEMVs of 1 to 8 tokens ([backend.tuning] quant_ring), for
// weights in 128 x 128 scale blocks: a warp's 32 weight rows stream through weight_ring.cuh's ring
// of whole 128-byte lines (cp.async, swizzled, read by ldmatrix as b16), as the bf16 GEMV of a few
// tokens does, a step being one line of each row: 128 columns, one scale block. x is staged once a
// block by stage_x (quant_gemv_mma.cuh), token g's row being the mma's column g. Each 16-byte
// chunk is a k-slice: lane (g, c) gets bytes 4c .. 4c + 3 of rows g and g + 8, converted by
// e4m3x2 -> f16x2 into a0/a2 (row g) and a1/a3 (row g + 8), x at the same four columns being
// b0/b1; a set's 16 rows lie in one block of rows (one scale a set a step).
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/quant_gemv_mma.cuh"
#include "kernels/cuda/weight_ring.cuh"

namespace tpx::cuda {
namespace {

using namespace quant;

// stage_x's layout (x rows Kp, K rounded up to the 128-column step, plus 16 halves apart: 8-byte
// reads off the banks' period), then the ring on a 128-byte boundary.
struct RingSmem {
    Smem x;
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

// Where a warp's steps are: kpart, kpart + split, ... (mine of them).
struct WarpSteps {
    int64_t kpart = 0, mine = 0;
    int split = 1;
    __device__ int64_t at(int64_t n) const { return kpart + n * split; }
};

// FP8 scales: each lane holds set s's scale of 32 of the warp's steps (step n's in lane n % 32),
// loaded 32 steps ahead and shuffled to the step, so that no step waits on a scale's load.
struct Fp8Scales {
    const float* row[ring::kSets];  // each set's row of scale blocks
    float cur[ring::kSets], next[ring::kSets];
    template <GemvEpilogue E>
    __device__ void start(const QuantGemvArgs& a, int64_t tile, int64_t items, int64_t pair, int64_t half, const WarpSteps& ws) {
        const cpu::Fp8View& w = a.w.fp8;
#pragma unroll
        for (int s = 0; s < ring::kSets; ++s)
            row[s] = w.scale + (ring::tile_row<E>(tile, 16 * s, items, pair, half) / w.l.rows_per_scale) * w.l.scale_cols + w.l.in_offset / 128;
        load(cur, 0, ws), load(next, 32, ws);
    }
    __device__ void load(float (&to)[ring::kSets], int64_t from, const WarpSteps& ws) {
        const int lane = threadIdx.x & 31;
#pragma unroll
        for (int s = 0; s < ring::kSets; ++s) to[s] = from + lane < ws.mine ? __ldg(row[s] + ws.at(from + lane)) : 0.0f;
    }
    // Step n's scales (every lane of the warp, in step order).
    __device__ void take(int64_t n, const WarpSteps& ws, float (&k)[ring::kSets]) {
        if (n > 0 && n % 32 == 0) {
#pragma unroll
            for (int s = 0; s < ring::kSets; ++s) cur[s] = next[s];
            load(next, n + 32, ws);
        }
#pragma unroll
        for (int s = 0; s < ring::kSets; ++s) k[s] = __shfl_sync(0xffffffffu, cur[s], (int)(n % 32));
    }
};

// One FP8 step (128 columns of the warp's 32 rows) times x into acc, each set's sums times k[s].
// xr: token g's x at column 4c of the step's first chunk.
__device__ __forceinline__ void multiply_step(const char* slot, const __half* xr, const float (&k)[ring::kSets], float (&acc)[ring::kSets][4]) {
    const int lane = threadIdx.x & 31, m = lane >> 3, rr = lane & 7;
    float d[ring::kSets][4] = {};
#pragma unroll
    for (int q = 0; q < 8; q += 2) {  // chunks q and q + 1: a slice each
        uint2 xv[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) xv[j] = *reinterpret_cast<const uint2*>(xr + (q + j) * 16);
#pragma unroll
        for (int s = 0; s < ring::kSets; ++s) {
            uint32_t r[4];  // rows g, g + 8 of chunk q, then of chunk q + 1
            ldmatrix_x4(r, slot + ring::line_chunk(16 * s + rr + 8 * (m & 1), q + (m >> 1)));
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const uint32_t af[4] = {e4m3x2_to_f16x2(r[2 * j]), e4m3x2_to_f16x2(r[2 * j + 1]), e4m3x2_to_f16x2(r[2 * j] >> 16),
                                        e4m3x2_to_f16x2(r[2 * j + 1] >> 16)};
                mma16816(d[s], af, xv[j].x, xv[j].y);
            }
        }
    }
#pragma unroll
    for (int s = 0; s < ring::kSets; ++s)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[s][i] = __fmaf_rn(k[s], d[s][i], acc[s][i]);
}

#ifdef TPX_PROBE
// Probe builds (ops.h says what each stamp is); tags kProbeTag + 4 E + norm, past attention's 200 + head_dim.
constexpr unsigned kProbeTag = 400;
#endif

// Blocks of kThreads threads whatever the grid's shape (stage_x and the norm take all of them);
// the first `active` warps take tiles, the others only stage x and meet the barriers. The layout
// starts at the first 128-byte boundary of the dynamic shared memory (the static shared memory
// of the block sums comes first): ring slots off that boundary fill at a lower rate (docs/PERF.md).
// early: the ring's first kStages - 1 steps are copied before the wait for the kernel before, and
// the next one right behind x's first loads (stage_x's `then`), so that the weights keep arriving
// while x is staged; the scales are read before the wait too (weights: not written by it). The
// weights are launched as streamed (common.cuh): without it their stream evicted from L2 what the
// kernels after it read again, and the 8B's FP8 batch-1 step took 2.91 ms, not 2.76 (docs/PERF.md).
// (One block an SM, as the ring's shared memory allows: stated, so that the compiler does not hold
// the norm's instances to 128 registers and spill.)
template <GemvEpilogue E, bool kNorm>
__global__ void __launch_bounds__(kThreads, 1) fp8_ring_kernel(QuantGemvArgs a, int64_t items, int64_t pair, int active, int split, bool early) {
    TPX_PROBE_DECL;
    TPX_PROBE_MARK(0);
    TPX_PROBE_END(kProbeTag + 4 * (int)E + (kNorm ? 1 : 0), a.w.fp8.l.K);
    extern __shared__ __align__(16) char smem_raw[];
    char* smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(smem_raw) + 127) & ~(uintptr_t)127);
    const RingSmem L = ring_smem(a);
    char* ring_base = smem + L.ring;
    const int64_t K = a.w.fp8.l.K, steps = L.Kp / ring::kLine, half = a.rope.head_dim / 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int64_t tile = (int64_t)blockIdx.x * (active / split) + warp / split;
    const bool valid = warp < active && tile * ring::kTileItems<E> < items;
    WarpSteps ws;
    ws.kpart = warp % split, ws.split = split, ws.mine = valid ? (steps - ws.kpart + split - 1) / split : 0;
    ring::LineCopies lines;
    lines.init<E>(a.w.fp8.w, K, tile, items, pair, half);
    auto slot = [&](int64_t n) { return ring_base + ((n % ring::kStages) * ring::kWarps + warp) * ring::kWBytes; };
    auto copy = [&](int64_t n) {
        if (n < ws.mine) lines.copy(slot(n), ws.at(n), K);
    };
    NormWeights norm_weights;  // with the norm: loaded first, before the weights' early copies
    if (kNorm) norm_weights.load(K, a.norm);
    Fp8Scales scales;
    scales.start<E>(a, tile, items, pair, half, ws);
    if (early)
        for (int n = 0; n < ring::kStages - 1; ++n) copy(n);
    pdl_entry();
    TPX_PROBE_MARK(1);
    bool ahead = false;  // step kStages - 1 copied during stage_x (by the threads with loads there; the others copy it at n = 0)
    stage_x<Format::kFp8, kNorm, false>(
        a, smem, L.x, L.Kp, [&] {
            if (early) copy(ring::kStages - 1), ahead = true;
        },
        kNorm ? &norm_weights : nullptr);
    for (int n = 0; n < ring::kStages - 1; ++n) {
        if (!early) copy(n);
        cp_async_commit();
    }
    TPX_PROBE_MARK(2);
    const __half* xr = reinterpret_cast<const __half*>(smem + L.x.xh) + (g < a.tokens ? g : 0) * L.x.ld + 4 * c;
    float acc[ring::kSets][4] = {};
    for (int64_t n = 0; n < ws.mine; ++n) {
        if (n > 0 || !ahead) copy(n + ring::kStages - 1);
        cp_async_commit();
        cp_async_wait<ring::kStages - 1>();
        __syncwarp();
        float k[ring::kSets];
        scales.take(n, ws, k);
        multiply_step(slot(n), xr + ws.at(n) * ring::kLine, k, acc);
        __syncwarp();
    }
    cp_async_wait_all();
#ifdef TPX_PROBE
    __syncthreads();  // t[3]: every warp of the block past its last step (add_split_sums begins with a barrier anyway)
#endif
    TPX_PROBE_MARK(3);
    if (ring::add_split_sums(reinterpret_cast<float*>(ring_base), acc, split, valid))
        ring::write_tile<E>(a.tokens, a.w.N(), a.bias, a.y, a.rope, tile, items, pair, acc, {reinterpret_cast<const float*>(smem + L.x.xscale)});
}

// Whether the ring form takes these weights: FP8 scale blocks of 128 columns cut on a block's
// edge with each set's 16 rows inside one block of rows; SwiGLU's up rows and RoPE's half heads
// on a multiple of 16; within the shared memory.
bool ring_applies(const QuantGemvArgs& a, int64_t pair) {
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
    const Streamed weights{a.w.fp8.w, (size_t)a.w.N() * (size_t)a.w.K()};
    launch_streamed(kernel, g.blocks, 0, kThreads, (size_t)ring_smem(a).bytes, at, weights, a, items, pair, g.warps, g.split,
                    at.config->gemv_early);
    TPX_LAUNCH_CHECK();
}

}  // namespace

#ifdef TPX_PROBE
void probe_set_quant_ring(const ProbeSink& s) { probe_set_here(s); }
#endif

bool quant::ring_gemv(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at) {
    if (!ring_applies(a, pair)) return false;
    if (a.has_norm && a.epi == GemvEpilogue::kSwiglu) launch_ring<GemvEpilogue::kSwiglu, true>(a, items, pair, at);
    else if (a.has_norm && a.epi == GemvEpilogue::kRopeKv) launch_ring<GemvEpilogue::kRopeKv, true>(a, items, pair, at);
    else if (a.has_norm) launch_ring<GemvEpilogue::kNone, true>(a, items, pair, at);
    else if (a.epi == GemvEpilogue::kSwiglu) launch_ring<GemvEpilogue::kSwiglu, false>(a, items, pair, at);
    else if (a.epi == GemvEpilogue::kRopeKv) launch_ring<GemvEpilogue::kRopeKv, false>(a, items, pair, at);
    else launch_ring<GemvEpilogue::kNone, false>(a, items, pair, at);
    return true;
}

}  // namespace tpx::cuda
