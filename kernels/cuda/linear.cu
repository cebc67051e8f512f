// GEMMs. For one row (batch-1 decode) a GEMV kernel streams the weights: kGemvSplit warps per
// output feature (gemv_fused: one warp per feature or pair of features), 16-byte loads,
// kGemvUnroll of them in flight per row per lane, fp32 sums reduced across the warp(s) (tpx-kbench on an H200: 10 to 14% faster than cuBLAS on the
// 8B's qkv and o, equal on the larger ones). The decode step fuses its neighbours into it
// (gemv_fused): the residual add + RMSNorm before it (each block normalises x into shared
// memory, block 0 writes the new residual), and after it SwiGLU (a warp takes gate row j and up
// row j + I) or RoPE with the KV-cache write (a warp takes rows i and i + head_dim / 2 of a head).
// Every fused result is bit-identical to the unfused kernels' when those take one warp per row
// (the default, see kGemvSplit): same sums in the same order, the same bf16 roundings between
// the stages. From two rows on, cuBLAS (a variant with 2 to 8 rows
// was half cuBLAS's speed at 8 rows: every row re-reads x): the checkpoint layout W[N, K]
// row-major is W^T column-major, so Y^T[N, T] = W[N, K] . X^T[K, T] is one cublasGemmEx with
// op(W) = T, and the bias is a separate row-broadcast kernel.
#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kGemvThreads = 256;
constexpr int kGemvWarps = kGemvThreads / 32;
constexpr int kGemvUnroll = 4;
// Warps per output row of the plain GEMV. 4 (tpx-kbench on an H200: o 11.8 -> 10.3 us, down 33.8
// -> 29.1 us with 4 instead of 1; the 8B decode step 4.52 -> 4.32 ms) while x came from global
// memory as four 4-byte loads per 16-byte chunk (see unpack_x); with one 16-byte load, 1 is
// faster again: tp=1's down 32.8 -> 28.7 us, o 9.7 -> 9.1 us, the tp=1 step 4.21 -> 4.08 ms (same call).
constexpr int kGemvSplit = 1;
constexpr int64_t kGemvNormMaxK = 12288;  // x and the norm weight (and the residual, summing) in shared memory: 48 (72) KiB

__global__ void add_bias_kernel(int64_t tokens, int64_t n, const bf16* bias, bf16* y) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * n) return;
    y[i] = __float2bfloat16(__bfloat162float(y[i]) + __bfloat162float(bias[i % n]));
}

__device__ inline float round_bf16(float v) { return __bfloat162float(__float2bfloat16(v)); }
__device__ inline float silu(float x) { return x / (1.0f + expf(-x)); }  // as silu_mul's

// The first batch of dot_rows's weight loads for rows[0 .. R), issued early: before the kernel
// waits for the one before it (pdl_entry; no kernel writes weights), so that the weight stream
// starts while that kernel drains, and before the norm prologue. Lanes whose first batch the
// loop would not load (short rows) leave it to the loop.
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

// Work item -> the weight rows it reads.
template <GemvEpilogue E>
__device__ inline void item_rows(int64_t item, int64_t pair, int64_t half, int64_t* rows) {
    if (E == GemvEpilogue::kNone) rows[0] = item;
    else if (E == GemvEpilogue::kSwiglu) rows[0] = item, rows[1] = item + pair;
    else rows[0] = (item / half) * 2 * half + item % half, rows[1] = rows[0] + half;
}

// Exchange e's sum into xs (bf16) by the block's T threads: each takes 16-byte lines of the
// exchange (two LL units, four elements) four at a time, lines t, t + T, ... so that a warp's
// loads are 512 contiguous bytes, and their ranks two at a time, so that eight 16-byte loads
// are in flight before the first flag is checked. (Before, a thread took the two lines of an 8-element
// chunk: ncu counted 28% of the kernel's L2 sectors as excess; tp=4's layer -1.1 us. tpx-kbench, tp=2's
// qkv: 16.7 us with a load and a check at a time, 11.6 us with eight in flight, 9.4 us for the
// plain prologue. Slower, and so not kept: the residual's and norm weight's loads issued here
// too, 13.9 us at 128 registers.) A line whose flags are not yet g + 1 is read again until
// they are. Each element is summed in fp32 in rank order (as the one-shot all-reduce) and
// rounded once. A wait longer than the timeout names the rank and gives up. g: the exchange
// (the epoch + e.seq); wait: not given up before. The caller syncs the block before reading xs.
template <int T>
__device__ void exchange_sum(const ExchangeIn& e, uint32_t g, bool wait, int64_t chunks, uint4* xs) {
    constexpr int kLines = 4;  // a thread's lines a pass
    const uint32_t flag = g + 1;
    const int64_t lines = 2 * chunks;
    auto ready = [&](const uint4& l) { return l.y == flag && l.w == flag; };
    for (int64_t i0 = threadIdx.x; i0 < lines; i0 += kLines * T) {
        float acc[kLines][4] = {};
        for (int r0 = 0; r0 < e.world; r0 += 2) {
            const int m = r0 + 1 < e.world ? 2 : 1;
            uint4 l[kLines][2];  // [line][rank]
            const uint4* at[2];
#pragma unroll
            for (int q = 0; q < 2; ++q) at[q] = reinterpret_cast<const uint4*>(e.ll + ((g & 1) * e.world + r0 + q) * e.units) + i0;
#pragma unroll
            for (int k = 0; k < kLines; ++k)
#pragma unroll
                for (int q = 0; q < 2; ++q)
                    if (i0 + k * T < lines && q < m) l[k][q] = ll_load(at[q] + k * T);
#pragma unroll
            for (int k = 0; k < kLines; ++k)
#pragma unroll
                for (int q = 0; q < 2; ++q) {
                    if (i0 + k * T >= lines || q >= m) continue;
                    if (wait && !ready(l[k][q])) {
                        const uint64_t start = global_ns();
                        do {
                            l[k][q] = ll_load(at[q] + k * T);
                            if (global_ns() - start > e.timeout_ns) give_up_on(r0 + q, e.error, e.gave_up), wait = false;
                        } while (wait && !ready(l[k][q]));
                    }
                    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&l[k][q].x));  // the units' data
                    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&l[k][q].z));
                    acc[k][0] += a.x, acc[k][1] += a.y, acc[k][2] += b.x, acc[k][3] += b.y;
                }
        }
#pragma unroll
        for (int k = 0; k < kLines; ++k) {
            if (i0 + k * T >= lines) continue;
            uint2 v;
            *reinterpret_cast<__nv_bfloat162*>(&v.x) = __floats2bfloat162_rn(acc[k][0], acc[k][1]);
            *reinterpret_cast<__nv_bfloat162*>(&v.y) = __floats2bfloat162_rn(acc[k][2], acc[k][3]);
            reinterpret_cast<uint2*>(xs)[i0 + k * T] = v;
        }
    }
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

// Before the kernel's wait, a summing GEMV (kSum) reads the exchange's epoch and give-up word and
// starts the copies of the norm weight and the residual into shared memory (read by
// norm_prologue after its barrier): none of them is written by the kernel just before, the
// pushing GEMV of the exchange (ExchangeIn's contract in ops.h). Returns the exchange g.
template <int T>
__device__ inline uint32_t sum_prefetch(int64_t K, const GemvNorm& nm, uint4* ws, uint4* rs, bool& wait) {
    const uint32_t g = __ldcg(nm.sum.epoch) + nm.sum.seq;
    wait = *reinterpret_cast<volatile const uint32_t*>(nm.sum.gave_up) == 0;
    for (int64_t i = threadIdx.x; i < K / 8; i += T) {
        cp_async16(ws + i, reinterpret_cast<const uint4*>(nm.weight) + i, true);
        if (nm.residual) cp_async16(rs + i, reinterpret_cast<const uint4*>(nm.residual) + i, true);
    }
    cp_async_commit();
    return g;
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
        if (lane != 0) continue;
        if (E == GemvEpilogue::kNone) {
            y[rows[0]] = __float2bfloat16(acc[0] + (bias ? __bfloat162float(bias[rows[0]]) : 0.0f));
            continue;
        }
        // The linear's outputs as the unfused path stores them (bf16), then the next op.
        const float a = round_bf16(acc[0] + (bias ? __bfloat162float(bias[rows[0]]) : 0.0f));
        const float b = round_bf16(acc[1] + (bias ? __bfloat162float(bias[rows[1]]) : 0.0f));
        if (E == GemvEpilogue::kSwiglu) {
            y[item] = __float2bfloat16(silu(a) * b);
            continue;
        }
        const int64_t head = item / half, i = item % half, d = rk.head_dim, kvw = rk.kv_heads * d;
        const int64_t at = ((int64_t)rk.slot[0] * rk.max_seq + rk.pos[0]) * kvw;
        if (head >= rk.heads + rk.kv_heads) {  // V: into the cache as it is
            bf16* vr = rk.v_cache + at + (head - rk.heads - rk.kv_heads) * d;
            vr[i] = __float2bfloat16(a), vr[i + half] = __float2bfloat16(b);
            continue;
        }
        float s, c;
        sincosf((float)rk.pos[0] * rk.inv_freq[i], &s, &c);  // as rope_kernel
        bf16* out = head < rk.heads ? y + head * d : rk.k_cache + at + (head - rk.heads) * d;
        out[i] = __float2bfloat16(a * c - b * s);
        out[i + half] = __float2bfloat16(b * c + a * s);
    }
}

// The plain GEMV with KS warps per row (each a KS-th of the chunks, interleaved), their sums
// meeting in shared memory (KS > 1 only where TPX_GEMV_SPLITK asks, see kGemvSplit). kPush:
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
    const uint32_t g = kPush ? __ldcg(push.counters + kOneShotBlocks + 1) + seq : 0;
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
    const __nv_bfloat162 v = __floats2bfloat162_rn(sum(2 * t, r0), sum(2 * t + 1, r0 + 1));  // y's two roundings
    const int64_t at = ((g & 1) * push.world + push.rank) * push.ll_units + r0 / 2;
    for (int r = 0; r < push.world; ++r) ll_store(push.ll[r] + at, *reinterpret_cast<const uint32_t*>(&v), g + 1);
}

// The GEMVs' first weight loads before pdl_entry (FirstLoads); gemv_early = false: after it.
bool gemv_early() { return kernel_config().gemv_early; }

// The split GEMV (plain, or pushing into the exchange) with KS warps a row.
template <int KS, bool kPush>
void launch_split(int64_t K, int64_t N, const bf16* x, const bf16* w, const bf16* bias, bf16* y, const OneShotPeers& p, uint32_t seq,
                  cudaStream_t stream) {
    launch(gemv_split_kernel<KS, kPush>, blocks_for(N, kGemvWarps / KS), kGemvThreads, 0, stream, K, N, x, w, bias, y, gemv_early(), p, seq);
    TPX_LAUNCH_CHECK();
}

// Warps per row for the plain GEMV: up to kGemvSplit, but each lane at least one full batch of
// loads (so that FirstLoads holds it). gemv_splitk (1, 2 or 4) overrides it (tpx-kbench
// compares them).
int gemv_split_for(int64_t K) {
    if (kernel_config().gemv_splitk > 0) return kernel_config().gemv_splitk;
    int ks = kGemvSplit;
    while (ks > 1 && K / 8 < 32 * ks * kGemvUnroll) ks /= 2;
    return ks;
}

// The summing GEMV in blocks of 512 threads (one an SM, 16 warps, as two blocks of 256 were): each
// block reads the whole exchange, the world's LL lines, twice x's bytes a rank, and half the
// blocks read half the bytes. The probe (tpx-kbench --layer in a -DTPX_PROBE build) had shown
// the sum phase taking time in proportion to all blocks' bytes, at about 3 TB/s: tp=4's qkv sum
// (96 blocks, 6.3 MB) 2 us after its wait, gate_up's (264 blocks, 17 MB) 5.9 us. sum_wide =
// false: blocks of 256. (Blocks of 512 for the plain norm GEMV of tp=1 were slower: qkv 15.1 -> 21.3 us.)
bool sum_wide() { return kernel_config().sum_wide; }

// gemv_balance = false: the grid of the fused GEMV with the norm as before (every warp the same
// number of items, see launch_gemv).
bool gemv_balanced() { return kernel_config().gemv_balance; }

// Blocks of `kernel` resident on the whole GPU at once (its registers and shared memory allowing).
int resident_blocks(const void* kernel, int threads, size_t smem) {
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    return sm_count() * std::max(1, per_sm);
}

// With the norm, the grid is at most what fits on the GPU at once, so that the prologue is paid
// once per resident block (tpx-kbench: one item per warp and a prologue in every block is 1 to 4
// us slower; prefetching the first rows into L2 during the prologue, 1 to 3 us slower; 8 loads
// in flight per row per lane instead of 4, no faster), each block an equal range of the items.
// Before, every warp took the same number of items: tp=1's qkv, 3072 items of two rows, ran on
// 192 blocks of 8 warps at 2 blocks an SM, so 60 SMs had twice the others' rows (ncu: 17%
// occupancy); with 264 blocks each taking 11 or 12 items, qkv 16.6 -> 15.2 us in tpx-kbench.
template <GemvEpilogue E, bool kNorm, bool kSum = false, int T = kGemvThreads>
void launch_gemv(int64_t K, int64_t items, int64_t pair, const bf16* x, const bf16* w, const bf16* bias, bf16* y, const GemvNorm& nm,
                 const GemvRopeKv& rk, cudaStream_t stream) {
    constexpr int kWarps = T / 32;
    unsigned blocks = blocks_for(items, kWarps);
    size_t smem = 0;
    const bool balanced = kNorm && gemv_balanced();
    if (kNorm) {
        smem = (kSum ? 3 : 2) * (size_t)K * sizeof(bf16);  // x, the norm weight (and the residual)
        // Up to kGemvNormMaxK: past the 48 KiB a kernel gets without asking (with its static
        // shared memory, K = 12288 is past it even without the residual). Once a process: one device each.
        static const bool once = [] {
            CUDA_CHECK(cudaFuncSetAttribute(gemv_kernel<E, kNorm, kSum, T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)((kSum ? 3 : 2) * kGemvNormMaxK * sizeof(bf16))));
            return true;
        }();
        (void)once;
        const int resident = resident_blocks((const void*)gemv_kernel<E, kNorm, kSum, T>, T, smem);
        const int64_t warps = (int64_t)resident * kWarps;
        blocks = balanced ? std::min<unsigned>(blocks, resident) : blocks_for(items, (int)(kWarps * ((items + warps - 1) / warps)));
    }
    launch(gemv_kernel<E, kNorm, kSum, T>, blocks, T, smem, stream, K, items, pair, x, w, bias, y, nm, rk, gemv_early(), balanced);
    TPX_LAUNCH_CHECK();
}

}  // namespace

#ifdef TPX_PROBE
void probe_set_linear(const ProbeSink& s) { probe_set_here(s); }
#endif

bool gemv_applies(const cpu::LinearShape& s, const bf16* x, const bf16* w) {
    return s.tokens == 1 && s.in % 8 == 0 && aligned16({x, w});
}

bool gemv_fused_applies(int64_t K, const GemvNorm* norm, const bf16* w) {
    if (K % 8 != 0 || !aligned16({w})) return false;
    if (!norm) return true;
    if (norm->sum.ll && K > 2 * norm->sum.units) return false;
    return K <= kGemvNormMaxK && aligned16({norm->sum.ll ? nullptr : norm->x, norm->weight}) &&
           (!norm->residual || aligned16({norm->residual, norm->residual_out}));
}

bool gemv_push_applies(int64_t K, int64_t N, const bf16* x, const bf16* w, const OneShotPeers& p) {
    return p.world > 1 && p.ll[p.rank] && N % 2 == 0 && N <= 2 * p.ll_units && gemv_applies({1, K, N}, x, w);
}

void gemv_push(int64_t K, int64_t N, const bf16* x, const bf16* w, const bf16* bias, const OneShotPeers& p, uint32_t seq,
               cudaStream_t stream) {
    TPX_CHECK(gemv_push_applies(K, N, x, w, p), "gemv_push: needs exchange buffers of at least N = " + std::to_string(N) +
                                                    " elements, N even, K a multiple of 8, x and W 16-byte aligned");
    const int ks = gemv_split_for(K);
    if (ks == 4) launch_split<4, true>(K, N, x, w, bias, nullptr, p, seq, stream);
    else if (ks == 2) launch_split<2, true>(K, N, x, w, bias, nullptr, p, seq, stream);
    else launch_split<1, true>(K, N, x, w, bias, nullptr, p, seq, stream);
}

void gemv_fused(int64_t K, int64_t N, const bf16* x, const bf16* w, const bf16* bias, bf16* y, const GemvNorm* norm, GemvEpilogue epi,
                const GemvRopeKv* rope, cudaStream_t stream) {
    TPX_CHECK(gemv_fused_applies(K, norm, w) && (norm || aligned16({x})), "gemv_fused: K must be a multiple of 8 (at most " +
                                                                            std::to_string(kGemvNormMaxK) + " with the norm), operands 16-byte aligned");
    const GemvNorm nm = norm ? *norm : GemvNorm{};
    GemvRopeKv rk{};
    rk.head_dim = 2;
    int64_t items = N, pair = 0;
    if (epi == GemvEpilogue::kSwiglu) {
        TPX_CHECK(N % 2 == 0, "gemv_fused: SwiGLU needs an even output width");
        items = pair = N / 2;
    } else if (epi == GemvEpilogue::kRopeKv) {
        TPX_CHECK(rope != nullptr, "gemv_fused: RoPE epilogue without its parameters");
        rk = *rope;
        TPX_CHECK(rk.head_dim % 2 == 0 && N == (rk.heads + 2 * rk.kv_heads) * rk.head_dim,
                  "gemv_fused: RoPE epilogue: output width is not (heads + 2 kv_heads) x head_dim");
        items = N / 2;
    }
    if (N == 0) return;
    auto go = [&](auto e) {
        constexpr GemvEpilogue E = decltype(e)::value;
        if (norm && norm->sum.ll && sum_wide()) launch_gemv<E, true, true, 512>(K, items, pair, x, w, bias, y, nm, rk, stream);
        else if (norm && norm->sum.ll) launch_gemv<E, true, true>(K, items, pair, x, w, bias, y, nm, rk, stream);
        else if (norm) launch_gemv<E, true>(K, items, pair, x, w, bias, y, nm, rk, stream);
        else launch_gemv<E, false>(K, items, pair, x, w, bias, y, nm, rk, stream);
    };
    if (epi == GemvEpilogue::kNone) go(std::integral_constant<GemvEpilogue, GemvEpilogue::kNone>{});
    else if (epi == GemvEpilogue::kSwiglu) go(std::integral_constant<GemvEpilogue, GemvEpilogue::kSwiglu>{});
    else go(std::integral_constant<GemvEpilogue, GemvEpilogue::kRopeKv>{});
}

void linear(cublasHandle_t handle, const cpu::LinearShape& s, const bf16* x, const bf16* w, const bf16* bias, bf16* y,
            cudaStream_t stream, bool allow_gemv, GemmTuner* tuner) {
    TPX_CHECK(s.tokens >= 0 && s.in > 0 && s.out > 0, "linear: bad shape");
    if (s.tokens == 0) return;
    if (allow_gemv && gemv_applies(s, x, w)) {
        const int ks = gemv_split_for(s.in);
        if (ks == 2 || ks == 4) {
            const OneShotPeers none;
            if (ks == 2) launch_split<2, false>(s.in, s.out, x, w, bias, y, none, 0u, stream);
            else launch_split<4, false>(s.in, s.out, x, w, bias, y, none, 0u, stream);
            return;
        }
        gemv_fused(s.in, s.out, x, w, bias, y, nullptr, GemvEpilogue::kNone, nullptr, stream);
        return;
    }
    if (!tuner || !tuner->matmul(s, x, w, y, stream)) {
        const float alpha = 1.0f, beta = 0.0f;
        // cublasSetStream also puts the handle back on cuBLAS's own workspace pool (dropping one
        // given by cublasSetWorkspace): only when the stream changes.
        cudaStream_t current = nullptr;
        CUBLAS_CHECK(cublasGetStream(handle, &current));
        if (current != stream) CUBLAS_CHECK(cublasSetStream(handle, stream));
        CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)s.out, (int)s.tokens, (int)s.in, &alpha, w, CUDA_R_16BF,
                                  (int)s.in, x, CUDA_R_16BF, (int)s.in, &beta, y, CUDA_R_16BF, (int)s.out, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    }
    if (bias) {
        launch(add_bias_kernel, blocks_for(s.tokens * s.out, 256), 256, 0, stream, s.tokens, s.out, bias, y);
        TPX_LAUNCH_CHECK();
    }
}

}  // namespace tpx::cuda
