// GEMMs. For one row (batch-1 decode) a GEMV kernel streams the weights: one warp per output
// feature, 16-byte loads, kGemvUnroll of them in flight per lane, the input read through the
// read-only cache, fp32 sums reduced across the warp (tpx-kbench on an H200: 10 to 14% faster
// than cuBLAS on the 8B's qkv and o, equal on the larger ones). From two rows on, cuBLAS
// (a variant with 2 to 8 rows was half cuBLAS's speed at 8 rows: every row re-reads x): the
// checkpoint layout W[N, K] row-major is W^T column-major, so Y^T[N, T] = W[N, K] . X^T[K, T]
// is one cublasGemmEx with op(W) = T, and the bias is a separate row-broadcast kernel.
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kGemvThreads = 256;
constexpr int kGemvUnroll = 4;

__global__ void add_bias_kernel(int64_t tokens, int64_t n, const bf16* bias, bf16* y) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * n) return;
    y[i] = __float2bfloat16(__bfloat162float(y[i]) + __bfloat162float(bias[i % n]));
}

__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(int64_t K, int64_t N, const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                            const bf16* __restrict__ bias, bf16* __restrict__ y) {
    int lane = threadIdx.x & 31;
    int64_t n = (int64_t)blockIdx.x * (kGemvThreads / 32) + (threadIdx.x >> 5);
    if (n >= N) return;
    const uint4* wr = reinterpret_cast<const uint4*>(w + n * K);
    const uint4* xr = reinterpret_cast<const uint4*>(x);
    const int64_t chunks = K / 8;
    float acc = 0.0f;
    auto fma8 = [&](const uint4& wv, int64_t c) {
        float wf[8], xf[8];
        unpack8(wv, wf);
        unpack8(__ldg(xr + c), xf);  // x: every warp of the grid reads it, from the read-only cache
#pragma unroll
        for (int i = 0; i < 8; ++i) acc += wf[i] * xf[i];
    };
    int64_t c = lane;
    for (; c + 32 * (kGemvUnroll - 1) < chunks; c += 32 * kGemvUnroll) {
        uint4 wv[kGemvUnroll];
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u) wv[u] = __ldcs(wr + c + 32 * u);  // streamed: read once per step
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u) fma8(wv[u], c + 32 * u);
    }
    for (; c < chunks; c += 32) fma8(__ldcs(wr + c), c);
    float s = warp_sum(acc);
    if (lane == 0) y[n] = __float2bfloat16(s + (bias ? __bfloat162float(bias[n]) : 0.0f));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool gemv_applies(const cpu::LinearShape& s, const bf16* x, const bf16* w) {
    return s.tokens == 1 && s.in % 8 == 0 && aligned16(x) && aligned16(w);
}

void linear(cublasHandle_t handle, const cpu::LinearShape& s, const bf16* x, const bf16* w, const bf16* bias, bf16* y,
            cudaStream_t stream, bool allow_gemv) {
    TPX_CHECK(s.tokens >= 0 && s.in > 0 && s.out > 0, "linear: bad shape");
    if (s.tokens == 0) return;
    if (allow_gemv && gemv_applies(s, x, w)) {
        gemv_kernel<<<blocks_for(s.out, kGemvThreads / 32), kGemvThreads, 0, stream>>>(s.in, s.out, x, w, bias, y);
        TPX_LAUNCH_CHECK();
        return;
    }
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
