// The batch-1 GEMV kernels (device side; their launchers are linear.cu's and
// fused_allreduce.cu's): one warp streams a weight row (or a pair of rows) in 16-byte loads,
// kGemvUnroll in flight per lane, fp32 sums reduced across the warp; gemv_kernel fuses the norm
// before it and SwiGLU or RoPE + the KV-cache write after it, bit-identical to the unfused
// kernels; gemv_split_kernel takes KS warps a row and may push its output into the fused
// all-reduce's exchange (fused_allreduce.cuh).
#pragma once

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/fused_allreduce.cuh"
#include "kernels/cuda/gemv_epilogue.cuh"

namespace tpx::cuda {
namespace {

constexpr int kGemvThreads = 256;
constexpr int kGemvWarps = kGemvThreads / 32;
constexpr int kGemvUnroll = 4;
// Warps per output row of the plain GEMV: one, x read as one 16-byte load per chunk (see
// unpack_x); docs/PERF.md compares it with four.
constexpr int kGemvSplit = 1;
constexpr int64_t kGemvNormMaxK = 12288;  // x and the norm weight (and the residual, summing) in shared memory: 48 (72) KiB

// The first batch of dot_rows's weight loads for rows[0 .. R), issued early: before the kernel
// waits for the one before it (pdl_entry; the kernel before writes no weights: linear()'s
// callers turn gemv_early off for a weight just written, as run_gemm does for a dequantized
// one), so that the weight stream starts while that kernel drains, and before the norm
// prologue. Lanes whose first batch the loop would not load (short rows) leave it to the loop.
template <int R, int KS = 1>
struct FirstLoads {
    uint4 v[R][kGemvUnroll];
    bool valid = false;
    __device__ void issue(int64_t K, const bf16* __restrict__ w, const int64_t* rows, int part) {
        constexpr int S = 32 * KS;
        const int64_t c = part * 32 + (threadIdx.x & 31);
        valid = c + S * (kGemvUnroll - 1) < K / 8;
        if (!valid) return;
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int u = 0; u < kGemvUnroll; ++u) v[r][u] = __ldcs(reinterpret_cast<const uint4*>(w + rows[r] * K) + c + S * u);
    }
};

// A 16-byte chunk of x into floats: from shared memory (kSharedX: the norm prologue's), or from
// global memory as one 16-byte load. (Read through a reference, as unpack8(xr[i], ...) does, the
// compiler loaded global x as four 4-byte loads: four times the load instructions of the
// weights', on the L1 that the weight stream also goes through.)
template <bool kSharedX>
__device__ __forceinline__ void unpack_x(const uint4* xr, int64_t i, float* f) {
    if constexpr (kSharedX) unpack8(xr[i], f);
    else unpack8(__ldg(xr + i), f);
}

// The warp's dot products of x with weight rows rows[0 .. R): lane l takes 16-byte chunks
// l, l + 32, ...; the R rows' loads are issued together (the first batch from `first` if it
// holds them; it is used up).
template <int R, int KS = 1, bool kSharedX = false>
__device__ inline void dot_rows(int64_t K, const uint4* xr, const bf16* __restrict__ w, const int64_t* rows, float* acc, int part = 0,
                                FirstLoads<R, KS>* first = nullptr) {
    const int lane = threadIdx.x & 31;
    const int64_t chunks = K / 8;
    constexpr int S = 32 * KS;  // the KS warps of a row take 16-byte chunks part * 32 + lane + S * u
    const uint4* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = reinterpret_cast<const uint4*>(w + rows[r] * K), acc[r] = 0.0f;
    auto fma8 = [&](const uint4& wv, const float* xf, float& a) {
        float wf[8];
        unpack8(wv, wf);
#pragma unroll
        for (int i = 0; i < 8; ++i) a += wf[i] * xf[i];
    };
    int64_t c = part * 32 + lane;
    for (; c + S * (kGemvUnroll - 1) < chunks; c += S * kGemvUnroll) {
        uint4 wv[R][kGemvUnroll];
        if (first && first->valid) {
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int u = 0; u < kGemvUnroll; ++u) wv[r][u] = first->v[r][u];
            first->valid = false;
        } else {
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int u = 0; u < kGemvUnroll; ++u) wv[r][u] = __ldcs(wr[r] + c + S * u);  // streamed: read once per step
        }
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u) {
            float xf[8];
            unpack_x<kSharedX>(xr, c + S * u, xf);
#pragma unroll
            for (int r = 0; r < R; ++r) fma8(wv[r][u], xf, acc[r]);
        }
    }
    for (; c < chunks; c += S) {
        float xf[8];
        unpack_x<kSharedX>(xr, c, xf);
#pragma unroll
        for (int r = 0; r < R; ++r) fma8(__ldcs(wr[r] + c), xf, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
}

// x = rmsnorm(residual + x) (or rmsnorm(x)) into shared memory, with rmsnorm_vec_kernel's
// arithmetic and summation order (same thread count, same chunks per thread), so that the
// result is bit-identical; block 0 writes residual + x to residual_out. The norm weight is
// loaded with x in the first pass (into ws), so that the second pass reads shared memory only.
// kSum: x is exchange nm.sum's sum, read as the ranks' parts arrive (a template parameter, so
// that the plain prologue compiles as before: with a run-time branch, ptxas gave the kernels
// other register counts, qkv's 76 instead of 108); the norm weight and the residual are then
// already on their way into ws and rs (sum_prefetch, before the kernel's wait), so that after
// the wait only the exchange's lines are a round trip to memory. T: the block's threads (the
// sum takes them all, the norm the first kGemvThreads).
template <bool kSum, int T>
__device__ void norm_prologue(int64_t K, const GemvNorm& nm, uint4* xs, uint4* ws, const uint4* rs, uint32_t g,
                              bool wait TPX_PROBE_PARAM) {
    const int64_t chunks = K / 8;
    float ss = 0;
    if (kSum) {
        exchange_sum<T>(nm.sum, g, wait, chunks, xs);
        cp_async_wait_all();  // this thread's copies into ws and rs
        __syncthreads();      // xs's lines and the other threads' copies
        TPX_PROBE_MARK(2);
    }
    // The norm by the first kGemvThreads threads (its order of sums is rmsnorm_vec_kernel's); the
    // others (T = 512) add nothing to ss, so block_sum's partials are those of 256 threads and zeros.
    for (int64_t i = threadIdx.x; i < (threadIdx.x < kGemvThreads ? chunks : 0); i += kGemvThreads) {
        float v[8];
        uint4 xv = kSum ? xs[i] : reinterpret_cast<const uint4*>(nm.x)[i];
        uint4 rv = !nm.residual ? make_uint4(0, 0, 0, 0) : kSum ? rs[i] : reinterpret_cast<const uint4*>(nm.residual)[i];
        if (!kSum) ws[i] = reinterpret_cast<const uint4*>(nm.weight)[i];
        unpack8(xv, v);
        if (nm.residual) {
            float r[8];
            unpack8(rv, r);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = round_bf16(r[j] + v[j]);  // the residual stream stays bf16
            if (blockIdx.x == 0) reinterpret_cast<uint4*>(nm.residual_out)[i] = pack8(v);
        }
        xs[i] = pack8(v);  // exact: v holds bf16 values
#pragma unroll
        for (int j = 0; j < 8; ++j) ss += v[j] * v[j];
    }
    const float inv = rsqrtf(block_sum(ss) / (float)K + nm.eps);  // its barriers make ws visible
    for (int64_t i = threadIdx.x; i < (threadIdx.x < kGemvThreads ? chunks : 0); i += kGemvThreads) {
        float v[8], wf[8], o[8];
        unpack8(xs[i], v);
        unpack8(ws[i], wf);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = wf[j] * (v[j] * inv);
        xs[i] = pack8(o);
    }
    __syncthreads();
}

// y over `items` work items (see item_rows); with kNorm, x is normalised per block first and the
// grid strides over the items, so that the prologue is paid once per block.
template <GemvEpilogue E, bool kNorm, bool kSum, int T>
__global__ void __launch_bounds__(T) gemv_kernel(int64_t K, int64_t items, int64_t pair, const bf16* __restrict__ x,
                                                 const bf16* __restrict__ w, const bf16* __restrict__ bias, bf16* __restrict__ y,
                                                 GemvNorm nm, GemvRopeKv rk, bool early, bool balanced) {
    constexpr int R = E == GemvEpilogue::kNone ? 1 : 2, kWarps = T / 32;
    static_assert(T >= kGemvThreads && T % kGemvThreads == 0, "the norm takes the first kGemvThreads threads");
    extern __shared__ uint4 xs[];
    const int lane = threadIdx.x & 31;
    const int64_t half = rk.head_dim / 2;
    int64_t item = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5), stride = (int64_t)gridDim.x * kWarps;
    if (balanced) {  // block b: items [b items / B, (b + 1) items / B), its warps taking every kWarps-th
        const int64_t end = ((int64_t)blockIdx.x + 1) * items / gridDim.x;
        item = (int64_t)blockIdx.x * items / gridDim.x + (threadIdx.x >> 5), stride = kWarps, items = end;
    }
    TPX_PROBE_DECL;
    TPX_PROBE_MARK(0);
    uint32_t g = 0;
    bool wait = false;
    if (kSum) g = sum_prefetch<T>(K, nm, xs + K / 8, xs + K / 4, wait);
    FirstLoads<R> first;
    if (early && item < items) {
        int64_t rows[2];
        item_rows<E>(item, pair, half, rows);
        first.issue(K, w, rows, 0);
    }
    pdl_entry();  // see common.cuh
    TPX_PROBE_MARK(1);
    const uint4* xr = reinterpret_cast<const uint4*>(x);
    if (kNorm) {
        norm_prologue<kSum, T>(K, nm, xs, xs + K / 8, xs + K / 4, g, wait TPX_PROBE_ARG);
        xr = xs;
    }
    TPX_PROBE_MARK(3);
    TPX_PROBE_END(1 + (unsigned)E * 4 + (kNorm ? 2 : 0) + (kSum ? 1 : 0), K);
    for (; item < items; item += stride) {
        int64_t rows[2];
        float acc[2];
        item_rows<E>(item, pair, half, rows);
        dot_rows<R, 1, kNorm>(K, xr, w, rows, acc, 0, &first);
        if (lane == 0) write_item<E>(item, rows, acc, 0, 0, pair, bias, y, rk);  // token 0: y's width unused
    }
}

// The plain GEMV with KS warps per row (each a KS-th of the chunks, interleaved), their sums
// meeting in shared memory (KS > 1 only where backend.tuning.gemv_splitk asks, see kGemvSplit). kPush:
// y goes, as this rank's part of exchange `seq`, to every rank's exchange buffer (ExchangeIn
// in ops.h), two rows a unit (a block's rows are an even number, N is even).
template <int KS, bool kPush>
__global__ void __launch_bounds__(kGemvThreads) gemv_split_kernel(int64_t K, int64_t N, const bf16* __restrict__ x,
                                                                  const bf16* __restrict__ w, const bf16* __restrict__ bias,
                                                                  bf16* __restrict__ y, bool early, OneShotPeers push, uint32_t seq) {
    constexpr int kRows = kGemvWarps / KS;  // per block
    static_assert(!kPush || kRows % 2 == 0, "a unit holds two rows");
    __shared__ float part_sum[kGemvWarps];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * (kGemvWarps / KS) + warp / KS;
    int64_t rows[1] = {row};
    TPX_PROBE_DECL;
    TPX_PROBE_MARK(0);
    FirstLoads<1, KS> first;
    if (early && row < N) first.issue(K, w, rows, warp % KS);
    pdl_entry();  // see common.cuh
    TPX_PROBE_MARK(1);
    TPX_PROBE_END(100 + KS * 2 + (kPush ? 1 : 0), K);
    // The exchange (the epoch is settled after the wait), read now so that the load is not a
    // round trip at the block's end.
    const uint32_t g = kPush ? exchange_of(push, seq) : 0;
    float acc[1] = {0.0f};
    if (row < N) dot_rows<1, KS>(K, reinterpret_cast<const uint4*>(x), w, rows, acc, warp % KS, &first);
    TPX_PROBE_MARK(3);
    if (lane == 0) part_sum[warp] = acc[0];
    __syncthreads();
    auto sum = [&](int local, int64_t r) {  // row `local` of the block, row r of y
        float s = 0.0f;
        for (int k = 0; k < KS; ++k) s += part_sum[local * KS + k];
        return s + (bias ? __bfloat162float(bias[r]) : 0.0f);
    };
    if (!kPush) {
        if (lane == 0 && warp % KS == 0 && row < N) y[row] = __float2bfloat16(sum(warp / KS, row));
        return;
    }
    const int t = threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.x * kRows + 2 * t;
    if (t >= kRows / 2 || r0 >= N) return;
    exchange_push(push, g, r0, __floats2bfloat162_rn(sum(2 * t, r0), sum(2 * t + 1, r0 + 1)));  // y's two roundings
}

// The split GEMV (plain, or pushing into the exchange) with KS warps a row.
template <int KS, bool kPush>
void launch_split(int64_t K, int64_t N, const bf16* x, const bf16* w, const bf16* bias, bf16* y, const OneShotPeers& p, uint32_t seq,
                  Launch at) {
    // gemv_early: the first weight loads before pdl_entry (FirstLoads); false: after it.
    launch(gemv_split_kernel<KS, kPush>, blocks_for(N, kGemvWarps / KS), kGemvThreads, 0, at, K, N, x, w, bias, y, at.config->gemv_early,
           p, seq);
    TPX_LAUNCH_CHECK();
}

// Warps per row for the plain GEMV: up to kGemvSplit, but each lane at least one full batch of
// loads (so that FirstLoads holds it). gemv_splitk (1, 2 or 4) overrides it.
inline int gemv_split_for(int64_t K, const KernelConfig& config) {
    if (config.gemv_splitk > 0) return config.gemv_splitk;
    int ks = kGemvSplit;
    while (ks > 1 && K / 8 < 32 * ks * kGemvUnroll) ks /= 2;
    return ks;
}

}  // namespace
}  // namespace tpx::cuda
