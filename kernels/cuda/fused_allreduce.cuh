// The fused all-reduce of a batch-1 decode step, device side (the protocol is ExchangeIn's in
// ops.h): the LL units, the push of a rank's part by the GEMV that makes it (gemv.cuh's
// gemv_split_kernel<KS, true>), and the sum of the world's parts by the next GEMV's norm
// prologue (gemv.cuh's norm_prologue<true>). The host side is fused_allreduce.cu. What must stay
// true: exchange g uses buffer g & 1 and flag g + 1, and a rank is at most one exchange ahead.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

// The LL units: an 8-byte store arrives whole, so a reader that sees the flag sees the data
// stored with it; volatile: past L1, to whichever GPU owns the memory.
__device__ __forceinline__ void ll_store(uint2* p, uint32_t data, uint32_t flag) {
    asm volatile("st.volatile.global.v2.u32 [%0], {%1, %2};" ::"l"(p), "r"(data), "r"(flag) : "memory");
}
__device__ __forceinline__ uint4 ll_load(const uint4* p) {  // two units
    uint4 v;
    asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
    return v;
}

// The exchange a pushing GEMV writes: its place `seq` in the forward past the epoch. Read after
// the kernel's wait, when the epoch is settled.
__device__ __forceinline__ uint32_t exchange_of(const OneShotPeers& p, uint32_t seq) {
    return __ldcg(p.counters + kOneShotBlocks + 1) + seq;
}

// Rows r0 and r0 + 1 of this rank's part of exchange g (one LL unit, r0 even) into every rank's
// buffer, this rank's slot.
__device__ __forceinline__ void exchange_push(const OneShotPeers& p, uint32_t g, int64_t r0, __nv_bfloat162 v) {
    const int64_t at = ((g & 1) * p.world + p.rank) * p.ll_units + r0 / 2;
    for (int r = 0; r < p.world; ++r) ll_store(p.ll[r] + at, *reinterpret_cast<const uint32_t*>(&v), g + 1);
}

// Exchange e's sum into xs (bf16) by the block's T threads: each takes 16-byte lines of the
// exchange (two LL units, four elements) four at a time, lines t, t + T, ... so that a warp's
// loads are 512 contiguous bytes, and their ranks two at a time, so that eight 16-byte loads
// are in flight before the first flag is checked (docs/PERF.md: the forms tried and their
// times). A line whose flags are not yet g + 1 is read again until
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

}  // namespace
}  // namespace tpx::cuda
