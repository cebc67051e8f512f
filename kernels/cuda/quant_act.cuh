// Activations to e4m3 per token and 128 columns (ops.h's ActFp8) as cpu::quantize_act_fp8 does:
// with m a block's max |x|, its scale m / 448 and each value times 448 / m, both by one IEEE fp32
// division a block, rounded to nearest even and saturated. For the kernels that write the w8a8
// prefill's input themselves (the norms, SwiGLU, the flash prefill attention) and for its own
// quantization kernel (quant_prefill.cu).
#pragma once

#include <cuda_fp8.h>

#include <cfloat>
#include <cstdint>

namespace tpx::cuda {

__device__ inline float act_scale(float amax) { return amax > 0.0f ? __fdiv_rn(amax, 448.0f) : 1.0f; }
__device__ inline float act_inverse(float amax) { return amax > 0.0f ? fminf(__fdiv_rn(448.0f, amax), FLT_MAX) : 1.0f; }

__device__ inline uint32_t to_e4m3(float v, float inv) {
    return (uint32_t)__nv_cvt_float_to_fp8(__fmul_rn(v, inv), __NV_SATFINITE, __NV_E4M3);
}

// The codes of two values, the first in the low byte.
__device__ inline uint32_t to_e4m3x2(float a, float b, float inv) {
    return __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(a, inv), __fmul_rn(b, inv)), __NV_SATFINITE, __NV_E4M3);
}

// One lane's eight consecutive values of a 128-column block held by its half-warp (16 lanes in
// column order, of a 1-D block whose size is a multiple of 32; every lane of the half-warp calls
// this): the block's scale, and the lane's eight codes in `codes` (8 bytes, column order).
__device__ inline float act_block_fp8(const float (&v)[8], uint2& codes) {
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(v[j]));
    const unsigned half = 0xffffu << (threadIdx.x & 16);
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(half, amax, o));
    const float inv = act_inverse(amax);
    uint32_t pairs[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) pairs[j] = to_e4m3x2(v[2 * j], v[2 * j + 1], inv);
    codes = make_uint2(pairs[0] | pairs[1] << 16, pairs[2] | pairs[3] << 16);
    return act_scale(amax);
}

// act_block_fp8, stored: the lane's codes at q (8 bytes), the block's scale at *s by its first lane.
__device__ inline void store_act_block_fp8(const float (&v)[8], uint8_t* q, float* s) {
    uint2 codes;
    const float scale = act_block_fp8(v, codes);
    if ((threadIdx.x & 15) == 0) *s = scale;
    *reinterpret_cast<uint2*>(q) = codes;
}

}  // namespace tpx::cuda
