// NCCL over the world, for the GPU backend: the ncclUniqueId comes from rank 0 over MPI;
// collectives run on the compute stream. sync() waits for the stream while polling
// ncclCommGetAsyncError; on an error or after `timeout_s` it aborts the communicator and
// throws, so the worker's top level ends the job instead of hanging in a collective.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>

namespace tpx {

class MpiCommunicator;

class NcclComm {
public:
    NcclComm(MpiCommunicator& mpi, cudaStream_t stream, double timeout_s);
    ~NcclComm();
    NcclComm(const NcclComm&) = delete;
    NcclComm& operator=(const NcclComm&) = delete;

    void all_reduce(__nv_bfloat16* data, size_t n);
    void all_reduce(const __nv_bfloat16* in, __nv_bfloat16* out, size_t n);
    // out = every rank's n elements, rank 0's first.
    void all_gather(const __nv_bfloat16* in, size_t n, __nv_bfloat16* out);
    void sync();
    void abort();
    int world() const { return world_; }
    ncclComm_t comm_handle() const { return comm_; }

private:
    ncclComm_t comm_ = nullptr;
    cudaStream_t stream_;
    double timeout_s_;
    int world_ = 1;
    int rank_ = 0;
};

// Waits for `stream`, polling `comm` (may be null) for asynchronous NCCL errors; throws on a
// CUDA error, an NCCL error or after timeout_s.
void sync_with_watchdog(cudaStream_t stream, NcclComm* comm, double timeout_s);

}  // namespace tpx
