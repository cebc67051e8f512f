// GPU context setup.
#include "worker/gpu_context.h"

#include <cstdlib>
#include <exception>

#include "common/cuda_check.h"
#include "common/log.h"
#include "worker/device.h"
#include "worker/mpi_comm.h"

namespace tpx {

GpuContext::GpuContext(MpiCommunicator& mpi, const KernelConfig& tuning) {
    device = select_device();
    timeout_s = mpi.timeout_s();
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    if (mpi.world() > 1) nccl = std::make_unique<NcclComm>(mpi, stream, timeout_s, tuning);
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

int64_t device_free_memory() {
    size_t free_b = 0, total = 0;
    if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return -1;
    return (int64_t)free_b;
}

int64_t device_memory_in_use() {
    size_t free_b = 0, total = 0;
    if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return 0;
    return (int64_t)(total - free_b);
}

}  // namespace tpx

#include <cublas_v2.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

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

    // The bf16 matrix rate: cuBLAS 8192^3, on random matrices, after enough products for the
    // clocks to settle under the power limit. A product of constant matrices (as measured until
    // the tenth run of docs/PERF.md: every element 0x3c3c) flips fewer transistors, draws less
    // power and is throttled less: it ran at 900 TFLOP/s on an H200 where ../shared/device
    // measured 790, and where the prefill's GEMMs, on real weights, ran 10 to 19% slower than
    // that. All are measured; the floor takes the higher random one (burst or settled).
    const int n = 8192;
    const size_t elems = (size_t)n * n;
    void *ma = nullptr, *mb = nullptr, *mc = nullptr;
    CUDA_CHECK(cudaMalloc(&ma, elems * 2));
    CUDA_CHECK(cudaMalloc(&mb, elems * 2));
    CUDA_CHECK(cudaMalloc(&mc, elems * 2));
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    CUBLAS_CHECK(cublasSetStream(h, stream));
    const float alpha = 1, beta = 0;
    auto rate = [&](int warmup, int timed) {
        for (int i = 0; i < warmup + timed; ++i) {
            if (i == warmup) CUDA_CHECK(cudaEventRecord(a, stream));
            CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, ma, CUDA_R_16BF, n, mb, CUDA_R_16BF, n, &beta, mc,
                                      CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
        CUDA_CHECK(cudaEventRecord(b, stream));
        CUDA_CHECK(cudaEventSynchronize(b));
        CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        return timed * 2.0 * n * n * (double)n / (ms / 1e3);
    };
    CUDA_CHECK(cudaMemsetAsync(ma, 0x3c, elems * 2, stream));  // ~0.0115 everywhere: not zeros, but constant
    CUDA_CHECK(cudaMemsetAsync(mb, 0x3c, elems * 2, stream));
    r.matmul_constant_flops_per_s = rate(1, 5);
    {
        // bf16 with random sign and mantissa, exponents for magnitudes in [0.25, 4): no
        // infinities or NaNs in the fp32 sums. xorshift64: 128 MiB in about 0.1 s.
        std::vector<uint16_t> host(elems);
        uint64_t state = 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < elems; ++i) {
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            const uint16_t sign = (uint16_t)((state >> 63) << 15), exponent = (uint16_t)((125 + (state >> 40) % 4) << 7);
            host[i] = sign | exponent | (uint16_t)(state & 0x7f);
        }
        CUDA_CHECK(cudaMemcpyAsync(ma, host.data(), elems * 2, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        std::reverse(host.begin(), host.end());  // B other than A
        CUDA_CHECK(cudaMemcpyAsync(mb, host.data(), elems * 2, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    r.matmul_random_burst_flops_per_s = rate(1, 5);
    r.matmul_random_settled_flops_per_s = rate(100, 50);  // about 0.14 + 0.07 s at 800 TFLOP/s: as long as the prefills
    r.matmul_flops_per_s = std::max(r.matmul_random_burst_flops_per_s, r.matmul_random_settled_flops_per_s);
    cublasDestroy(h);
    CUDA_CHECK(cudaFree(ma));
    CUDA_CHECK(cudaFree(mb));
    CUDA_CHECK(cudaFree(mc));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return r;
}

}  // namespace tpx
