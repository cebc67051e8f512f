// Device pieces the two quantized decode GEMVs share (quant_gemv.cu: fp32 FMAs; quant_gemv_mma.cu:
// tensor cores): the epilogues and the norm prologue, which repeat the bf16 GEMV's and the
// rmsnorm kernel's arithmetic (so both GEMVs and the unfused kernels round alike), and the
// tensor-core path's entry points.
#pragma once

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemv_epilogue.cuh"
#include "kernels/cuda/quant_gemv.h"

namespace tpx::cuda::quant {

constexpr int kThreads = 256, kWarps = kThreads / 32;

// The epilogue of one item at one token (gemv_epilogue.cuh's, as the bf16 GEMV writes it).
template <GemvEpilogue E>
__device__ inline void write_item(const QuantGemvArgs& a, int64_t item, const int64_t* rows, const float* acc) {
    ::tpx::cuda::write_item<E>(item, rows, acc, 0, a.w.N(), 0, a.bias, a.y, a.rope);  // token 0: SwiGLU's width unused
}

// x = rmsnorm(residual + x) (or rmsnorm(x)) of one token into xf (K floats holding the bf16
// results), as gemv.cuh's norm_prologue (without the exchange sum) and so as rmsnorm_vec_kernel:
// the same 256 threads, the same chunks per thread, the same roundings; block 0 writes
// residual + x to residual_out. xs: K bf16 of staging. K is at most kRmsnormVecMaxWidth
// (quant_gemv_applies), so one round of kLoadBatch chunks a thread covers it: a thread loads its
// chunks of x, the residual and the norm's weight at once (one wait on memory, not one a chunk:
// the GEMV's weight stream is stalled while a block stages x), the weight's kept in registers for
// the second pass. then(): run by each thread that has a chunk (threadIdx.x < K / 8) right after
// its loads are issued.
constexpr int kLoadBatch = 4;
struct Nothing {
    __device__ void operator()() const {}
};
// The norm's weight, this thread's chunks of it (norm_into's): a GEMV may load them before its
// wait for the kernel before (a weight: no kernel writes it), so that x's loads after the wait
// queue behind fewer.
struct NormWeights {
    uint4 wk[kLoadBatch];
    __device__ void load(int64_t K, const GemvNorm& nm) {
#pragma unroll
        for (int u = 0; u < kLoadBatch; ++u) {
            const int64_t i = threadIdx.x + u * kThreads;
            if (i < K / 8) wk[u] = __ldg(reinterpret_cast<const uint4*>(nm.weight) + i);
        }
    }
};
template <typename Then = Nothing>
__device__ inline void norm_into(int64_t K, const GemvNorm& nm, uint4* xs, float* xf, Then then = Nothing{}, const NormWeights* loaded = nullptr) {
    static_assert(kThreads == 256, "the norm's order of sums is that of rmsnorm_vec_kernel's 256 threads");
    static_assert((int64_t)kLoadBatch * kThreads * 8 == kRmsnormVecMaxWidth, "one round of loads covers the widest row the vector kernel takes");
    const int64_t chunks = K / 8;
    const uint4* weight = reinterpret_cast<const uint4*>(nm.weight);
    uint4 xv[kLoadBatch], rv[kLoadBatch], wk[kLoadBatch];
#pragma unroll
    for (int u = 0; u < kLoadBatch; ++u) {
        const int64_t i = threadIdx.x + u * kThreads;
        if (i >= chunks) break;
        xv[u] = reinterpret_cast<const uint4*>(nm.x)[i];
        if (nm.residual) rv[u] = reinterpret_cast<const uint4*>(nm.residual)[i];
        wk[u] = loaded ? loaded->wk[u] : __ldg(weight + i);
    }
    if (threadIdx.x < chunks) then();
    float ss = 0;
#pragma unroll
    for (int u = 0; u < kLoadBatch; ++u) {  // in the order of i, as the rmsnorm kernel sums
        const int64_t i = threadIdx.x + u * kThreads;
        if (i >= chunks) break;
        float v[8];
        unpack8(xv[u], v);
        if (nm.residual) {
            float r[8];
            unpack8(rv[u], r);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = round_bf16(r[j] + v[j]);  // the residual stream stays bf16
            if (blockIdx.x == 0) reinterpret_cast<uint4*>(nm.residual_out)[i] = pack8(v);
        }
        xs[i] = pack8(v);  // exact: v holds bf16 values
#pragma unroll
        for (int j = 0; j < 8; ++j) ss += v[j] * v[j];
    }
    const float inv = rsqrtf(block_sum(ss) / (float)K + nm.eps);
#pragma unroll
    for (int u = 0; u < kLoadBatch; ++u) {
        const int64_t i = threadIdx.x + u * kThreads;
        if (i >= chunks) break;
        float v[8], wf[8], o[8];
        unpack8(xs[i], v);
        unpack8(wk[u], wf);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = wf[j] * (v[j] * inv);
        float r[8];
        unpack8(pack8(o), r);  // rounded to bf16, as the rmsnorm kernel stores it
        reinterpret_cast<float4*>(xf)[2 * i] = make_float4(r[0], r[1], r[2], r[3]);
        reinterpret_cast<float4*>(xf)[2 * i + 1] = make_float4(r[4], r[5], r[6], r[7]);
    }
    __syncthreads();
}

// The dynamic shared memory a block may have: kQuantGemvMaxSmem, or less where the device offers less.
size_t smem_limit();

// The tensor-core GEMV (quant_gemv_mma.cu): whether it takes these arguments, and its launch.
bool mma_applies(const QuantGemvArgs& a);
void mma_gemv(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at);
// Its ring form for FP8 (quant_gemv_ring.cu), for arguments mma_applies takes: launched and true
// where the weights allow it, else false and nothing launched.
bool ring_gemv(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at);

}  // namespace tpx::cuda::quant
