// Pipeline stages on GPUs: the CUDA twin of worker/pipeline.h. Activations pass between stages
// with NCCL send/recv on a communicator per stage boundary (built over MpiPipe's boundary
// communicators: stage s's ranks then stage s+1's, tp rank to tp rank), enqueued on the compute
// stream around each micro-batch's forward, which replays the stage's captured decode graph
// (CUDA graphs per stage: the graph reads and writes the executor's fixed stage blocks, the
// sends and receives stay outside it). The last stage's argmax ids (or logits) go to world rank
// 0 over MPI, as on the CPU backend. Each micro-batch ends in a watched sync, so a stage whose
// peer stopped ends the job after backend.collective_timeout_s instead of waiting forever.
// NCCL refuses two ranks on one GPU: a boundary needs its two stages on different devices.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "worker/cuda_executor.h"
#include "worker/mpi_pipe.h"

namespace tpx {

class NcclPipe {
public:
    // Collective over both boundaries of this rank's stage, the one before first.
    NcclPipe(const MpiPipe& mpi, cudaStream_t stream);
    ~NcclPipe();
    NcclPipe(const NcclPipe&) = delete;
    NcclPipe& operator=(const NcclPipe&) = delete;

    // On the stream: to the next stage's rank of this tp_rank, from the previous stage's.
    void send_next(const __nv_bfloat16* data, size_t n);
    void recv_prev(__nv_bfloat16* data, size_t n);
    void abort();  // never blocks

private:
    PipeLayout layout_;
    cudaStream_t stream_;
    ncclComm_t prev_ = nullptr, next_ = nullptr;
};

class CudaPipelineExecutor : public Executor {
public:
    CudaPipelineExecutor(CudaExecutor& stage, MpiPipe& mpi, NcclPipe& nccl, int micro_batches, int64_t vocab, int64_t hidden);

    std::vector<float> forward(const TokenBatch& batch) override;
    std::vector<int32_t> forward_argmax(const TokenBatch& batch) override;
    int64_t vocab() const override { return vocab_; }
    int64_t kv_cache_bytes() const override { return stage_.kv_cache_bytes(); }
    // The stage's own (serving, and so refit, runs pp = 1 jobs only: these keep the interface whole).
    void reload_weights(Checkpoint& ckpt, int rank) override { stage_.reload_weights(ckpt, rank); }
    std::string refit_limit() const override { return stage_.refit_limit(); }
    void clear_kv_cache() override { stage_.clear_kv_cache(); }

private:
    // Runs every micro-batch through this stage; on the last stage `each` takes the rows of a
    // micro-batch after its forward (its wanted rows, in its order), as argmax ids when `greedy`.
    template <typename Each>
    void run_stage(const TokenBatch& batch, bool greedy, Each each);

    CudaExecutor& stage_;
    MpiPipe& mpi_;
    NcclPipe& nccl_;
    int micro_batches_;
    int64_t vocab_, hidden_;
};

}  // namespace tpx
