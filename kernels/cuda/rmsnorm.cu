// RMSNorm and fused residual add + RMSNorm: one block per row, the sum of squares reduced in
// fp32 across the block; rows of a multiple of 8 up to 8192 wide in 16-byte pieces, kept in
// registers (one read of x and the residual), others element by element. The vector kernel can
// write y in its e4m3 form (ActFp8) for the w8a8 prefill.
#include <initializer_list>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant_act.cuh"

namespace tpx::cuda {
namespace {

constexpr int kThreads = 256;

template <bool kAdd>
__global__ void rmsnorm_kernel(int64_t width, float eps, const bf16* x, const bf16* res_in, bf16* residual, const bf16* w, bf16* y) {
    pdl_entry();  // see common.cuh
    int64_t row = blockIdx.x;
    const bf16* xr = x + row * width;
    const bf16* ri = kAdd ? res_in + row * width : nullptr;
    bf16* rr = kAdd ? residual + row * width : nullptr;
    float ss = 0;
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
        float v = __bfloat162float(xr[i]);
        if (kAdd) {
            bf16 sum = __float2bfloat16(__bfloat162float(ri[i]) + v);  // the residual stream stays bf16
            rr[i] = sum;
            v = __bfloat162float(sum);
        }
        ss += v * v;
    }
    float inv = rsqrtf(block_sum(ss) / (float)width + eps);
    const bf16* src = kAdd ? rr : xr;
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
        y[row * width + i] = __float2bfloat16(__bfloat162float(w[i]) * (__bfloat162float(src[i]) * inv));
}

constexpr int kVecPerThread = 4;  // rows up to kThreads * 8 * 4 = 8192 wide stay in registers
static_assert(kThreads * 8 * kVecPerThread == kRmsnormVecMaxWidth, "ops.h states the vector kernel's widest row");

// The same arithmetic, for rows of a multiple of 8 up to 8192 elements: 16-byte loads and
// stores, the row held in registers between the sum of squares and the scaling. kFp8 (rows of
// whole 128-column blocks): y's bf16 values written in their e4m3 form y8 instead, a half-warp
// holding each block (the grid's blocks are the rows: gridDim.x tokens).
// early ([backend.tuning] gemv_early): the norm weight (a parameter, which the kernel before
// does not write) is loaded before the wait for that kernel, so that the scaling does not wait on
// memory after the sum of squares.
template <bool kAdd, bool kFp8>
__global__ void rmsnorm_vec_kernel(int64_t width, float eps, const bf16* x, const bf16* res_in, bf16* residual, const bf16* w, bf16* y,
                                   ActFp8 y8, bool early) {
    int64_t row = blockIdx.x, nvec = width / 8;
    uint4 wk[kVecPerThread];
    auto load_weight = [&] {
#pragma unroll
        for (int k = 0; k < kVecPerThread; ++k) {
            int64_t i = threadIdx.x + k * kThreads;
            if (i < nvec) wk[k] = __ldg(reinterpret_cast<const uint4*>(w) + i);
        }
    };
    if (early) load_weight();
    pdl_entry();  // see common.cuh
    if (!early) load_weight();
    const uint4* xr = reinterpret_cast<const uint4*>(x + row * width);
    float v[kVecPerThread][8];
    float ss = 0;
#pragma unroll
    for (int k = 0; k < kVecPerThread; ++k) {
        int64_t i = threadIdx.x + k * kThreads;
        if (i >= nvec) break;
        unpack8(xr[i], v[k]);
        if (kAdd) {
            float r[8];
            unpack8(reinterpret_cast<const uint4*>(res_in + row * width)[i], r);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[k][j] = __bfloat162float(__float2bfloat16(r[j] + v[k][j]));  // the residual stream stays bf16
            reinterpret_cast<uint4*>(residual + row * width)[i] = pack8(v[k]);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) ss += v[k][j] * v[k][j];
    }
    float inv = rsqrtf(block_sum(ss) / (float)width + eps);
#pragma unroll
    for (int k = 0; k < kVecPerThread; ++k) {
        int64_t i = threadIdx.x + k * kThreads;
        if (i >= nvec) break;
        float wf[8], o[8];
        unpack8(wk[k], wf);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = wf[j] * (v[k][j] * inv);
        if constexpr (kFp8) {
#pragma unroll
            for (int j = 0; j < 8; ++j) o[j] = round_bf16(o[j]);  // y's value, as the unfused route quantizes it
            store_act_block_fp8(o, y8.q + row * width + i * 8, y8.s + i / 16 * gridDim.x + row);
        } else {
            reinterpret_cast<uint4*>(y + row * width)[i] = pack8(o);
        }
    }
}

bool vec_ok(int64_t width, std::initializer_list<const void*> ptrs) {
    return width % 8 == 0 && width <= kRmsnormVecMaxWidth && aligned16(ptrs);
}

// y in e4m3: the vector kernel over whole 128-column blocks.
void launch_fp8(const RmsnormArgs& a, const bf16* residual_in, bf16* residual_out, Launch at) {
    TPX_CHECK(rmsnorm_fp8_applies(a, residual_in, residual_out) && a.y8.s,
              "rmsnorm: y in e4m3 needs rows of whole 128-column blocks up to " + std::to_string(kRmsnormVecMaxWidth) +
                  " wide, operands on 16 bytes");
    if (residual_in)
        launch(rmsnorm_vec_kernel<true, true>, (unsigned)a.tokens, kThreads, 0, at, a.width, a.eps, a.x, residual_in, residual_out, a.w,
               a.y, a.y8, at.config->gemv_early);
    else
        launch(rmsnorm_vec_kernel<false, true>, (unsigned)a.tokens, kThreads, 0, at, a.width, a.eps, a.x, residual_in, residual_out, a.w,
               a.y, a.y8, at.config->gemv_early);
    TPX_LAUNCH_CHECK();
}

}  // namespace

bool rmsnorm_fp8_applies(const RmsnormArgs& a, const bf16* residual_in, const bf16* residual_out) {
    return a.width % 128 == 0 && vec_ok(a.width, {a.x, a.w, a.y8.q, residual_in, residual_out});
}

void rmsnorm(const RmsnormArgs& a, Launch at) {
    const int64_t tokens = a.tokens, width = a.width;
    const float eps = a.eps;
    const bf16 *x = a.x, *w = a.w;
    bf16* y = a.y;
    if (tokens == 0) return;
    if (a.y8.q) return launch_fp8(a, nullptr, nullptr, at);
    if (vec_ok(width, {x, w, y}))
        launch(rmsnorm_vec_kernel<false, false>, (unsigned)tokens, kThreads, 0, at, width, eps, x, nullptr, nullptr, w, y, ActFp8{},
               at.config->gemv_early);
    else launch(rmsnorm_kernel<false>, (unsigned)tokens, kThreads, 0, at, width, eps, x, nullptr, nullptr, w, y);
    TPX_LAUNCH_CHECK();
}

void add_rmsnorm(const RmsnormArgs& a, const bf16* residual_in, bf16* residual_out, Launch at) {
    const int64_t tokens = a.tokens, width = a.width;
    const float eps = a.eps;
    const bf16 *x = a.x, *w = a.w;
    bf16* y = a.y;
    TPX_CHECK(x != residual_in && x != residual_out, "add_rmsnorm: x and the residual must not alias");
    if (tokens == 0) return;
    if (a.y8.q) return launch_fp8(a, residual_in, residual_out, at);
    if (vec_ok(width, {x, residual_in, residual_out, w, y}))
        launch(rmsnorm_vec_kernel<true, false>, (unsigned)tokens, kThreads, 0, at, width, eps, x, residual_in, residual_out, w, y, ActFp8{},
               at.config->gemv_early);
    else launch(rmsnorm_kernel<true>, (unsigned)tokens, kThreads, 0, at, width, eps, x, residual_in, residual_out, w, y);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
