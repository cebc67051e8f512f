// NCCL communicator and the watchdog sync.
#include "worker/nccl_comm.h"

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "common/cuda_check.h"
#include "worker/mpi_comm.h"

namespace tpx {

NcclComm::NcclComm(MpiCommunicator& mpi, cudaStream_t stream, double timeout_s)
    : stream_(stream), timeout_s_(timeout_s), world_(mpi.world()), rank_(mpi.rank()) {
    ncclUniqueId id;
    if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    mpi.broadcast(&id, sizeof(id), 0);
    NCCL_CHECK(ncclCommInitRank(&comm_, world_, id, rank_));
}

NcclComm::~NcclComm() {
    if (comm_) ncclCommDestroy(comm_);
}

void NcclComm::abort() {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
}

void NcclComm::all_reduce(__nv_bfloat16* data, size_t n) { all_reduce(data, data, n); }

void NcclComm::all_reduce(const __nv_bfloat16* in, __nv_bfloat16* out, size_t n) {
    if (const char* f = std::getenv("TPX_FAULT"))  // the failure tests' hook: this rank dies here
        if (std::string(f) == std::to_string(rank_) + ":allreduce") throw Error("injected failure inside an NCCL all-reduce (TPX_FAULT)");
    NCCL_CHECK(ncclAllReduce(in, out, n, ncclBfloat16, ncclSum, comm_, stream_));
}

void NcclComm::all_gather(const __nv_bfloat16* in, size_t n, __nv_bfloat16* out) {
    NCCL_CHECK(ncclAllGather(in, out, n, ncclBfloat16, comm_, stream_));
}

void NcclComm::sync() { sync_with_watchdog(stream_, this, timeout_s_); }

void sync_with_watchdog(cudaStream_t stream, NcclComm* comm, double timeout_s) {
    auto start = std::chrono::steady_clock::now();
    for (;;) {
        cudaError_t e = cudaStreamQuery(stream);
        if (e == cudaSuccess) return;
        if (e != cudaErrorNotReady) CUDA_CHECK(e);
        if (comm && comm->comm_handle()) {
            ncclResult_t async = ncclSuccess;
            NCCL_CHECK(ncclCommGetAsyncError(comm->comm_handle(), &async));
            if (async != ncclSuccess && async != ncclInProgress) {
                comm->abort();
                throw Error(std::string("NCCL reported an asynchronous error: ") + ncclGetErrorString(async) + "; communicator aborted");
            }
        }
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s) {
            if (comm) comm->abort();
            throw Error("the GPU stream did not finish within " + std::to_string((int)timeout_s) +
                        " s (a peer rank stopped in a collective?); NCCL communicator aborted");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
}

}  // namespace tpx
