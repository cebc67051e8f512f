// NCCL between pipeline stages, and the GPU stage's schedule (see cuda_pipeline.h).
#include "worker/cuda_pipeline.h"

#include <exception>

#include "common/check.h"
#include "common/cuda_check.h"
#include "common/mpi_check.h"
#include "worker/pipeline.h"

namespace tpx {
namespace {

// NCCL over boundary communicator `comm` (2 x tp ranks), this rank being `local` in it.
ncclComm_t boundary_nccl(MPI_Comm comm, int tp, int local) {
    ncclUniqueId id;
    if (local == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_CHECK(MPI_Bcast(&id, (int)sizeof(id), MPI_BYTE, 0, comm));
    ncclComm_t c = nullptr;
    NCCL_CHECK(ncclCommInitRank(&c, 2 * tp, id, local));
    return c;
}

}  // namespace

NcclPipe::NcclPipe(const MpiPipe& mpi, cudaStream_t stream) : layout_(mpi.layout()), stream_(stream) {
    // Previous boundary first: stage s joins boundary s-1 before boundary s, so the inits chain
    // from stage 0 onwards and never wait on each other in a cycle.
    if (mpi.prev_comm() != MPI_COMM_NULL) prev_ = boundary_nccl(mpi.prev_comm(), layout_.tp, layout_.tp + layout_.tp_rank);
    if (mpi.next_comm() != MPI_COMM_NULL) next_ = boundary_nccl(mpi.next_comm(), layout_.tp, layout_.tp_rank);
}

NcclPipe::~NcclPipe() {
    if (std::uncaught_exceptions()) {  // a peer may be gone: destroying could wait for it
        abort();
        return;
    }
    if (prev_) ncclCommDestroy(prev_);
    if (next_) ncclCommDestroy(next_);
}

void NcclPipe::abort() {
    if (prev_) ncclCommAbort(prev_);
    if (next_) ncclCommAbort(next_);
    prev_ = next_ = nullptr;
}

void NcclPipe::send_next(const __nv_bfloat16* data, size_t n) {
    TPX_CHECK(next_ != nullptr, "send_next on the last pipeline stage");
    NCCL_CHECK(ncclSend(data, n, ncclBfloat16, layout_.tp + layout_.tp_rank, next_, stream_));
}

void NcclPipe::recv_prev(__nv_bfloat16* data, size_t n) {
    TPX_CHECK(prev_ != nullptr, "recv_prev on the first pipeline stage");
    NCCL_CHECK(ncclRecv(data, n, ncclBfloat16, layout_.tp_rank, prev_, stream_));
}

CudaPipelineExecutor::CudaPipelineExecutor(CudaExecutor& stage, MpiPipe& mpi, NcclPipe& nccl, int micro_batches, int64_t vocab,
                                           int64_t hidden)
    : stage_(stage), mpi_(mpi), nccl_(nccl), micro_batches_(micro_batches), vocab_(vocab), hidden_(hidden) {}

// GPipe's schedule within a forward: receive m, run m, send m, for each micro-batch in turn.
// The host waits for each micro-batch (the executor refills one pinned input block per
// forward), so stage s runs m+1 while stage s+1 runs m.
template <typename Each>
void CudaPipelineExecutor::run_stage(const TokenBatch& batch, bool greedy, Each each) {
    const PipeLayout& l = mpi_.layout();
    std::vector<MicroBatch> mbs = split_micro_batches(batch, micro_batches_);
    for (MicroBatch& mb : mbs) {
        const int64_t T = (int64_t)mb.batch.ids.size();
        if (!l.first()) nccl_.recv_prev(stage_.stage_input(T), (size_t)(T * hidden_));
        const int64_t R = stage_.enqueue_stage(mb.batch, greedy);
        if (!l.last()) {
            nccl_.send_next(stage_.stage_output(), (size_t)(T * hidden_));
            stage_.sync();
        } else {
            each(mb, R);
        }
    }
}

std::vector<float> CudaPipelineExecutor::forward(const TokenBatch& batch) {
    const PipeLayout& l = mpi_.layout();
    std::vector<float> logits(batch.logit_rows.size() * vocab_, 0.0f);
    run_stage(batch, false, [&](const MicroBatch& mb, int64_t R) {
        std::vector<float> rows = stage_.finish_logits(R);
        for (size_t k = 0; k < mb.result_rows.size(); ++k)
            std::copy(rows.begin() + k * vocab_, rows.begin() + (k + 1) * vocab_, logits.begin() + mb.result_rows[k] * vocab_);
    });
    if (l.last() && l.tp_rank == 0 && l.rank != 0) mpi_.send_to_first(logits.data(), logits.size() * sizeof(float));
    if (l.rank == 0 && !l.last()) mpi_.recv_from_last(logits.data(), logits.size() * sizeof(float));
    if (l.rank != 0) std::fill(logits.begin(), logits.end(), 0.0f);  // only rank 0 chooses
    return logits;
}

std::vector<int32_t> CudaPipelineExecutor::forward_argmax(const TokenBatch& batch) {
    const PipeLayout& l = mpi_.layout();
    std::vector<int32_t> ids(batch.logit_rows.size(), 0);
    run_stage(batch, true, [&](const MicroBatch& mb, int64_t R) {
        std::vector<int32_t> rows = stage_.finish_argmax(R);
        for (size_t k = 0; k < mb.result_rows.size(); ++k) ids[mb.result_rows[k]] = rows[k];
    });
    if (l.last() && l.tp_rank == 0 && l.rank != 0) mpi_.send_to_first(ids.data(), ids.size() * sizeof(int32_t));
    if (l.rank == 0 && !l.last()) mpi_.recv_from_last(ids.data(), ids.size() * sizeof(int32_t));
    return ids;
}

}  // namespace tpx
