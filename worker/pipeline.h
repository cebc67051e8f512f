// A pipeline stage as an Executor (the CPU backend): each forward's sequences are split into
// micro-batches that go through the stages in turn (GPipe's schedule within a forward: stage s
// runs micro-batch m while stage s+1 runs m-1), each stage receiving its input rows from the
// stage before and sending its output rows to the stage after, tp rank to tp rank. The last
// stage's logits (or, greedy, their argmax) go to world rank 0, which samples and broadcasts the
// chosen ids to every rank as with pp = 1; the other ranks' results are zeros of the same size.
// Invariant: every rank is given the same batch (generation broadcasts the chosen ids), so
// every rank splits it the same way.
#pragma once

#include <cstdint>
#include <vector>

#include "worker/executor.h"
#include "worker/mpi_pipe.h"

namespace tpx {

// One micro-batch: its tokens (logit_rows local to it), and for each of its wanted rows the
// row of the whole batch's result it fills.
struct MicroBatch {
    TokenBatch batch;
    std::vector<size_t> result_rows;
};

// `batch`'s sequences (its distinct slots, in order of first appearance) in at most `count`
// contiguous groups of nearly equal size; a sequence's tokens stay in one group, in order.
std::vector<MicroBatch> split_micro_batches(const TokenBatch& batch, int count);

class PipelineExecutor : public Executor {
public:
    // `stage` runs this rank's cut graph; `vocab` is the model's; `hidden` the width of the rows
    // passed between stages.
    PipelineExecutor(CpuExecutor& stage, MpiPipe& pipe, int micro_batches, int64_t vocab, int64_t hidden);

    std::vector<float> forward(const TokenBatch& batch) override;
    std::vector<int32_t> forward_argmax(const TokenBatch& batch) override;
    int64_t vocab() const override { return vocab_; }
    int64_t kv_cache_bytes() const override { return stage_.kv_cache_bytes(); }
    // A stage's weights and cache are its own executor's (a refit reads this rank's pieces).
    void reload_weights(Checkpoint& ckpt, int rank) override { stage_.reload_weights(ckpt, rank); }
    void clear_kv_cache() override { stage_.clear_kv_cache(); }
    std::string refit_limit() const override { return stage_.refit_limit(); }

private:
    // Runs this stage over every micro-batch; on the last stage returns the logits of the whole
    // batch's wanted rows, in order (elsewhere: empty).
    std::vector<float> run_stage(const TokenBatch& batch);

    CpuExecutor& stage_;
    MpiPipe& pipe_;
    int micro_batches_;
    int64_t vocab_, hidden_;
};

}  // namespace tpx
