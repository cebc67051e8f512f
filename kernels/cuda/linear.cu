// GEMM through cuBLAS: checkpoint layout W[N, K] row-major is W^T column-major, so
// Y^T[N, T] = W[N, K] . X^T[K, T] is one cublasGemmEx with op(W) = T. The bias is a separate
// row-broadcast kernel.
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

__global__ void add_bias_kernel(int64_t tokens, int64_t n, const bf16* bias, bf16* y) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * n) return;
    y[i] = __float2bfloat16(__bfloat162float(y[i]) + __bfloat162float(bias[i % n]));
}

}  // namespace

void linear(cublasHandle_t handle, const cpu::LinearShape& s, const bf16* x, const bf16* w, const bf16* bias, bf16* y,
            cudaStream_t stream) {
    TPX_CHECK(s.tokens >= 0 && s.in > 0 && s.out > 0, "linear: bad shape");
    if (s.tokens == 0) return;
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasSetStream(handle, stream));
    CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)s.out, (int)s.tokens, (int)s.in, &alpha, w, CUDA_R_16BF,
                              (int)s.in, x, CUDA_R_16BF, (int)s.in, &beta, y, CUDA_R_16BF, (int)s.out, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    if (bias) {
        add_bias_kernel<<<blocks_for(s.tokens * s.out, 256), 256, 0, stream>>>(s.tokens, s.out, bias, y);
        TPX_LAUNCH_CHECK();
    }
}

}  // namespace tpx::cuda
