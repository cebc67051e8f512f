// RMSNorm and fused residual add + RMSNorm: one block per row, the sum of squares reduced in
// fp32 across the block.
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kThreads = 256;

template <bool kAdd>
__global__ void rmsnorm_kernel(int64_t width, float eps, const bf16* x, const bf16* res_in, bf16* residual, const bf16* w, bf16* y) {
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

}  // namespace

void rmsnorm(int64_t tokens, int64_t width, float eps, const bf16* x, const bf16* w, bf16* y, cudaStream_t stream) {
    if (tokens == 0) return;
    rmsnorm_kernel<false><<<(unsigned)tokens, kThreads, 0, stream>>>(width, eps, x, nullptr, nullptr, w, y);
    TPX_LAUNCH_CHECK();
}

void add_rmsnorm(int64_t tokens, int64_t width, float eps, const bf16* x, const bf16* residual_in, bf16* residual_out,
                 const bf16* w, bf16* y, cudaStream_t stream) {
    TPX_CHECK(x != residual_in && x != residual_out, "add_rmsnorm: x and the residual must not alias");
    if (tokens == 0) return;
    rmsnorm_kernel<true><<<(unsigned)tokens, kThreads, 0, stream>>>(width, eps, x, residual_in, residual_out, w, y);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
