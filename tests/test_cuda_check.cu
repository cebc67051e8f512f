// CUDA_CHECK / CUBLAS_CHECK / NCCL_CHECK: a failing call becomes CheckError naming the library,
// the statement and the CUDA error; it needs no GPU (a call for a device that cannot exist
// fails on any machine, with or without a driver).
#include <gtest/gtest.h>

#include "common/cuda_check.h"

TEST(CudaCheck, FailedCudaCallNamesStatementAndError) {
    try {
        CUDA_CHECK(cudaSetDevice(100000));
        FAIL() << "CUDA_CHECK did not throw";
    } catch (const tpx::CheckError& e) {
        std::string m = e.what();
        EXPECT_NE(m.find("CUDA call `cudaSetDevice(100000)` failed at"), std::string::npos) << m;
        EXPECT_NE(m.find("cudaError"), std::string::npos) << m;
    }
}

TEST(CudaCheck, FailedCublasAndNcclCallsThrow) {
    EXPECT_THROW(CUBLAS_CHECK(cublasSetStream(nullptr, nullptr)), tpx::CheckError);
    EXPECT_THROW(NCCL_CHECK(ncclCommInitRank(nullptr, 0, ncclUniqueId{}, 0)), tpx::CheckError);
}
