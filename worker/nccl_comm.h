// The GPU backend's collectives: NCCL over the world (the ncclUniqueId comes from rank 0 over
// MPI) and, when every rank is on one host and the GPUs reach each other (NVLink or PCIe
// peer access), the one-shot all-reduce over CUDA IPC for messages up to kOneShotBytes
// (kernels/cuda/ops.h; backend.tuning.oneshot = false turns it off). Collectives run on the compute stream.
// sync() waits for the stream while polling ncclCommGetAsyncError and the one-shot kernel's
// error flag; on an error or after `timeout_s` it aborts the communicator and throws, so the
// worker's top level ends the job instead of hanging in a collective.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/cuda/ops.h"

namespace tpx {

class MpiCommunicator;

class NcclComm {
public:
    // tuning.oneshot and tuning.fused_all_reduce choose the all-reduce paths below.
    NcclComm(MpiCommunicator& mpi, cudaStream_t stream, double timeout_s, const KernelConfig& tuning);
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
    bool oneshot() const { return oneshot_.world > 1; }
    // The rank a one-shot all-reduce gave up waiting for, or -1.
    int oneshot_missing_rank() const;

    static constexpr size_t kOneShotBytes = 512u << 10;  // batch 64 of an 8B model's hidden size

    // The all-reduce fused into batch-1 GEMVs (cuda::ExchangeIn; on with the one-shot path unless
    // backend.tuning.fused_all_reduce = false): push_applies says whether `N` outputs of a K-wide GEMV can be pushed;
    // gemv_push computes them and pushes them as this rank's part of the forward's exchange
    // `seq`; exchange_in(seq) is what the next GEMV's norm reads; exchange_advance(calls) ends
    // a forward that made `calls` exchanges. Every rank must make the same calls.
    bool push_applies(int64_t K, int64_t N, const __nv_bfloat16* x, const __nv_bfloat16* w) const;
    void gemv_push(int64_t K, int64_t N, const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, uint32_t seq);
    cuda::ExchangeIn exchange_in(uint32_t seq) const;
    void exchange_advance(uint32_t calls);
    static constexpr int64_t kExchangeUnits = 8192;  // two elements each: hidden sizes up to 16384

private:
    void setup_oneshot(MpiCommunicator& mpi, const KernelConfig& tuning);
    void release_oneshot();
    void maybe_fail() const;

    ncclComm_t comm_ = nullptr;
    cuda::OneShotPeers oneshot_;
    bool fused_ = false;
    std::string oneshot_status_;
    void* oneshot_base_ = nullptr;           // this rank's flags + buffers
    std::vector<void*> oneshot_mapped_;      // the peers', opened over IPC
    int* oneshot_error_host_ = nullptr;
    cudaStream_t stream_;
    KernelConfig tuning_;  // the one-shot kernels' settings (launch_ points at it)
    cuda::Launch launch_;
    double timeout_s_;
    int world_ = 1;
    int rank_ = 0;
};

// Waits for `stream`, polling `comm` (may be null) for asynchronous NCCL errors; throws on a
// CUDA error, an NCCL error or after timeout_s.
void sync_with_watchdog(cudaStream_t stream, NcclComm* comm, double timeout_s);

}  // namespace tpx
