// What the two forms of the tensor-core quantized GEMV share (quant_gemv_mma.cu: weights fed
// from registers; quant_gemv_ring.cu: FP8 through weight_ring.cuh's ring of whole lines): the
// mma, the FP8 conversion, and x staged once a block in shared memory as fp16 (a bf16 value in
// fp16's normal range is exact, below it fp16 subnormals lose bits; a token whose largest |x|
// reaches 2^15 is scaled by a power of two first, exactly, and its sums scaled back).
#pragma once

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/quant_gemv.cuh"

namespace tpx::cuda::quant {
using Format = QuantWeightView::Format;
constexpr float kHalfSafe = 32768.0f;

// d += A B, one m16n8k16 (PTX ISA fragment layouts: a0/a2 row g, a1/a3 row g + 8, a0/a1 k 2c..2c+1,
// a2/a3 k 2c+8..2c+9; b0/b1 column g at those k; d0/d1 row g, d2/d3 row g + 8, columns 2c, 2c + 1).
__device__ __forceinline__ void mma16816(float* d, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t two) {
    const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
    return (uint32_t)r.x | ((uint32_t)r.y << 16);
}

// Shared memory: the tokens' scale-back factors, GPTQ's per-step sums of x [segments][tokens]
// [steps], the norm's floats and staging, then x as fp16 [segments][tokens][ld] (ld: Kp, K
// rounded up to the step, plus 8: rows 16 bytes off the banks' period; zeros past K; GPTQ in
// nibble-pair order), whose bytes the warps' partial sums [warp][R][4][lane] reuse at the end.
struct Smem {
    int64_t ld = 0, xscale = 0, xsum = 0, norm = 0, xh = 0, part = 0, bytes = 0;
};
// Position p of a step-ordered x row: where x's position k goes (GPTQ pairs nibbles (j, j + 4)
// of each 8: stored order 0 4 1 5 2 6 3 7).
template <Format F>
__device__ inline int64_t stored_at(int64_t k) {
    if constexpr (F == Format::kFp8) return k;
    else return (k & ~7) | ((k & 3) << 1) | ((k >> 2) & 1);
}

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

// x (or the norm's output; for act-order, x gathered per segment) into shared memory as fp16, each
// token scaled by a power of two where its largest |x| reaches kHalfSafe (a rare redo pass);
// xscale[t] the factor that undoes it; for asymmetric GPTQ the per-step sums of the stored x.
// A thread loads kLoadBatch turns of x at once. then(): run at most once by each thread, right
// after its first loads are issued (those of norm_into with the norm), only by threads that have
// loads (threadIdx.x < tokens x Kp / 8, or < K / 8 with the norm) and never when gathering: the
// caller covers the other threads.
template <Format F, bool kNorm, bool kGather, typename Then = Nothing>
__device__ void stage_x(const QuantGemvArgs& a, char* smem, const Smem& L, int64_t Kp, Then then = Nothing{}, const NormWeights* loaded = nullptr) {
    const int64_t K = a.w.K(), T = a.tokens, S = kGather ? a.w.gptq.l.segments : 1;
    __half* xh = reinterpret_cast<__half*>(smem + L.xh);
    float* xscale = reinterpret_cast<float*>(smem + L.xscale);
    float* xf = reinterpret_cast<float*>(smem + L.norm);
    if constexpr (kNorm) norm_into(K, a.norm, reinterpret_cast<uint4*>(smem + L.norm + K * 4), xf, then, loaded);
    bool big = false;
    const int per = (int)(Kp / 8);  // 8 positions a thread a turn: one 16-byte store
    const int n = (int)(S * T) * per;
    const int64_t ld = L.ld;
    constexpr int kB = kLoadBatch;  // turns a thread loads x for at once (one wait on memory a round)
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

// The kernel's dynamic shared memory limit raised to optin_smem().
template <typename Kernel>
bool set_smem_limit(Kernel kernel) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)optin_smem()));
    return true;
}

}  // namespace tpx::cuda::quant
