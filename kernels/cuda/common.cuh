// Shared by the .cu files: the launch check and block reductions.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "common/cuda_check.h"
#include "kernels/cuda/ops.h"

#define TPX_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

namespace tpx::cuda {

inline unsigned blocks_for(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

// Every pointer on a 16-byte boundary (the vector kernels' uint4 loads and stores).
inline bool aligned16(std::initializer_list<const void*> ptrs) {
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) & 15) return false;
    return true;
}

// Eight bf16 in 16 bytes, to and from fp32.
__device__ inline void unpack8(const uint4& v, float* f) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 p = __bfloat1622float2(h[i]);
        f[2 * i] = p.x, f[2 * i + 1] = p.y;
    }
}
__device__ inline uint4 pack8(const float* f) {
    uint4 v;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return v;
}

struct SumOp {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Op>
__device__ inline float warp_reduce(float v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ inline float warp_sum(float v) { return warp_reduce(v, SumOp{}); }

// Reduction over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
template <typename Op>
__device__ inline float block_reduce(float v, Op op, float identity) {
    __shared__ float part[32];
    __shared__ float total;
    v = warp_reduce(v, op);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float w = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : identity;
        w = warp_reduce(w, op);
        if (threadIdx.x == 0) total = w;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}
__device__ inline float block_sum(float v) { return block_reduce(v, SumOp{}, 0.0f); }
__device__ inline float block_max(float v) { return block_reduce(v, MaxOp{}, -INFINITY); }

}  // namespace tpx::cuda
