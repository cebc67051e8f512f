// GPU context setup.
#include "worker/gpu_context.h"

#include <cstdlib>
#include <exception>

#include "common/cuda_check.h"
#include "common/log.h"
#include "worker/device.h"
#include "worker/mpi_comm.h"

namespace tpx {

GpuContext::GpuContext(MpiCommunicator& mpi) {
    device = select_device();
    if (const char* t = std::getenv("TPX_COLLECTIVE_TIMEOUT_S")) timeout_s = std::atof(t);
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    if (mpi.world() > 1) nccl = std::make_unique<NcclComm>(mpi, stream, timeout_s);
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    log_debug("GPU ", device, ": ", prop.name);
}

GpuContext::~GpuContext() {
    if (std::uncaught_exceptions()) {
        if (nccl) nccl->abort();  // never blocks, unlike destroying a communicator mid-collective
        return;
    }
    nccl.reset();
    if (stream) cudaStreamDestroy(stream);
}

int64_t device_memory_in_use() {
    size_t free_b = 0, total = 0;
    if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return 0;
    return (int64_t)(total - free_b);
}

}  // namespace tpx

#include <cublas_v2.h>

#include <chrono>

#include "worker/bench.h"

namespace tpx {

DeviceRates measure_device_rates(cudaStream_t stream) {
    DeviceRates r;
    cudaEvent_t a, b;
    CUDA_CHECK(cudaEventCreate(&a));
    CUDA_CHECK(cudaEventCreate(&b));
    float ms = 0;
    const size_t bytes = 1ull << 30;
    void *x = nullptr, *y = nullptr;
    CUDA_CHECK(cudaMalloc(&x, bytes));
    CUDA_CHECK(cudaMalloc(&y, bytes));
    for (int i = 0; i < 3; ++i) CUDA_CHECK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, stream));
    CUDA_CHECK(cudaEventRecord(a, stream));
    for (int i = 0; i < 10; ++i) CUDA_CHECK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, stream));
    CUDA_CHECK(cudaEventRecord(b, stream));
    CUDA_CHECK(cudaEventSynchronize(b));
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    r.copy_bytes_per_s = 2.0 * 10 * bytes / (ms / 1e3);
    CUDA_CHECK(cudaFree(x));
    CUDA_CHECK(cudaFree(y));

    const int n = 8192;
    void *ma = nullptr, *mb = nullptr, *mc = nullptr;
    CUDA_CHECK(cudaMalloc(&ma, (size_t)n * n * 2));
    CUDA_CHECK(cudaMalloc(&mb, (size_t)n * n * 2));
    CUDA_CHECK(cudaMalloc(&mc, (size_t)n * n * 2));
    CUDA_CHECK(cudaMemsetAsync(ma, 0x3c, (size_t)n * n * 2, stream));  // ~1.0-ish bf16 values, not zeros
    CUDA_CHECK(cudaMemsetAsync(mb, 0x3c, (size_t)n * n * 2, stream));
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    CUBLAS_CHECK(cublasSetStream(h, stream));
    const float alpha = 1, beta = 0;
    auto gemm = [&] {
        CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, ma, CUDA_R_16BF, n, mb, CUDA_R_16BF, n, &beta, mc,
                                  CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    };
    gemm();
    CUDA_CHECK(cudaEventRecord(a, stream));
    for (int i = 0; i < 5; ++i) gemm();
    CUDA_CHECK(cudaEventRecord(b, stream));
    CUDA_CHECK(cudaEventSynchronize(b));
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    r.matmul_flops_per_s = 5 * 2.0 * n * n * (double)n / (ms / 1e3);
    cublasDestroy(h);
    CUDA_CHECK(cudaFree(ma));
    CUDA_CHECK(cudaFree(mb));
    CUDA_CHECK(cudaFree(mc));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return r;
}

}  // namespace tpx
