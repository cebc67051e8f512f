// CUDA_CHECK, CUBLAS_CHECK, NCCL_CHECK: library calls that must succeed, reported with the
// statement, file:line, host and rank (as llama.cpp's CUDA_CHECK, with nccl-tests' hostname).
// Only for code built with the CUDA toolkit (kernels/ and worker/ GPU sources).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <string>

#include "common/check.h"

#define CUDA_CHECK(stmt)                                                                   \
    do {                                                                                   \
        cudaError_t tpx_cuda_err_ = (stmt);                                                \
        if (tpx_cuda_err_ != cudaSuccess)                                                  \
            ::tpx::fail_check("CUDA", #stmt, __FILE__, __LINE__,                           \
                              std::string(cudaGetErrorName(tpx_cuda_err_)) + ": " +        \
                                  cudaGetErrorString(tpx_cuda_err_));                      \
    } while (0)

#define CUBLAS_CHECK(stmt)                                                                 \
    do {                                                                                   \
        cublasStatus_t tpx_cublas_st_ = (stmt);                                            \
        if (tpx_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                       \
            ::tpx::fail_check("cuBLAS", #stmt, __FILE__, __LINE__,                         \
                              std::string(cublasGetStatusName(tpx_cublas_st_)) + ": " +    \
                                  cublasGetStatusString(tpx_cublas_st_));                  \
    } while (0)

#define NCCL_CHECK(stmt)                                                                   \
    do {                                                                                   \
        ncclResult_t tpx_nccl_res_ = (stmt);                                               \
        if (tpx_nccl_res_ != ncclSuccess && tpx_nccl_res_ != ncclInProgress)               \
            ::tpx::fail_check("NCCL", #stmt, __FILE__, __LINE__,                           \
                              std::string(ncclGetErrorString(tpx_nccl_res_)) + " (" +      \
                                  ncclGetLastError(nullptr) + ")");                        \
    } while (0)
