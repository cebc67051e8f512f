// The executor walks the rank's sharded graph in order and calls the backend's ops; this is
// the CPU backend (kernels/cpu). A forward takes a batch of tokens, each with its sequence
// slot and position, so prefill (whole prompts) and decode (one token per sequence) are the
// same call; the KV cache lives across calls.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/draw.h"
#include "kernels/cpu/ops.h"
#include "sharding/graph.h"
#include "worker/comm.h"
#include "sharding/kv_cache.h"

namespace tpx {

class Checkpoint;

struct TokenBatch {
    std::vector<int32_t> ids;
    std::vector<int32_t> positions;
    std::vector<int32_t> slots;      // KV-cache slot (sequence) of each token
    std::vector<int64_t> logit_rows; // tokens whose logits are wanted, in order
    // The rows a forward returns: those of logit_rows, or every token's where it names none.
    int64_t rows() const { return logit_rows.empty() ? (int64_t)ids.size() : (int64_t)logit_rows.size(); }
};

// The rope node's attributes as the kernels' parameters (the GPU backend uses it too).
cpu::RopeParams rope_params(const Node& rope);

// Throws Error unless every token's slot and position fit a cache of `slots` x `max_seq`.
void check_batch(const TokenBatch& batch, int64_t slots, int64_t max_seq);

// What generation needs from a backend.
class Executor {
public:
    virtual ~Executor() = default;
    // Logits [logit_rows.size(), vocab] in host memory (the full vocabulary, gathered).
    virtual std::vector<float> forward(const TokenBatch& batch) = 0;
    // The argmax of each wanted row (greedy decoding): the GPU backend finds it on the device
    // and copies back one id per row instead of the whole vocabulary.
    virtual std::vector<int32_t> forward_argmax(const TokenBatch& batch);
    // forward's logits in a host buffer the executor keeps, valid until its next forward (a
    // serve step's rows are read in place). The GPU backend reuses pinned memory: a fresh vector
    // a step is 33 MB at batch 64 of a 128k vocabulary, its pages faulted in and the copy staged.
    virtual const float* forward_view(const TokenBatch& batch) {
        view_ = forward(batch);
        return view_.data();
    }
    // Each wanted row's token by cpu::draw_token's rule from draws[row] (the argmax where its
    // temperature is 0; -1 for a row that is not finite), and the fp32 logits of the rows in
    // `host_rows` (ascending) in *logits ([rows, vocab], valid until the next forward; other rows
    // there unspecified) for the caller to read itself (a call's logprobs, or its penalties,
    // whose token it draws from its changed row). The GPU backend draws on the device and copies
    // back only the ids and the host rows: the same ids the twin draws from forward_view's rows of
    // the same step. Here: forward_view, and that twin row by row on this thread.
    virtual std::vector<int32_t> forward_draw(const TokenBatch& batch, const std::vector<cpu::DrawParams>& draws,
                                              const std::vector<int64_t>& host_rows, const float** logits);
    // Whether sampled rows should come from forward_draw, rather than each row's logits handed to
    // the caller's threads (forward_view): the GPU backend's draws (unless [backend.tuning]
    // device_draws = false), and the CPU backend's, whose rows cost little beside its forward.
    virtual bool draws_in_forward() const { return false; }
    // A follower's part of a step whose outcome only rank 0 reads (`tpx serve`'s other ranks):
    // `logits` says which of forward and forward_argmax rank 0 runs, so that every rank runs the
    // same kernels and collectives. The GPU backend leaves the logits on the device.
    virtual void forward_follower(const TokenBatch& batch, bool logits) {
        if (logits) (void)forward(batch);
        else (void)forward_argmax(batch);
    }
    virtual int64_t vocab() const = 0;
    virtual int64_t kv_cache_bytes() const = 0;
    // With backend.tuning.profile, time per op kind since the last reset (GPU backend; "" elsewhere).
    virtual std::string profile() const { return ""; }
    virtual void reset_profile() {}
    // The GEMM tuner's choice for each product it timed, a line each (GPU backend; "" elsewhere).
    virtual std::string tuner_summary() const { return ""; }
    // The last forward_argmax on the device, CUDA events from its inputs' upload to its ids'
    // download (GPU backend; negative elsewhere): the step without the host's turn between steps.
    virtual double last_device_ms() const { return -1; }
    // Refit (worker/refit.h), between steps: reads this rank's slices of `ckpt` into the weight
    // buffers it holds now (the same addresses: nothing is reallocated, so captured CUDA graphs
    // stay valid). The caller has checked every tensor's name, shape and dtype against the plan;
    // a failure here leaves some weights new and some old.
    virtual void reload_weights(Checkpoint& ckpt, int rank) = 0;
    // Why this executor cannot refit at all ("" when it can), asked before anything is written.
    virtual std::string refit_limit() const { return ""; }
    // Zeroes the KV cache (its rows came from the weights that were replaced).
    virtual void clear_kv_cache() = 0;

protected:
    std::vector<float> view_;  // forward_view's default's (and a backend's past its own buffer)
};

class CpuExecutor : public Executor {
public:
    // `weights`: parameter name -> local fp32 values; the cache is `kv`'s layers (fp32).
    CpuExecutor(const Graph& graph, Communicator& comm, std::map<std::string, std::vector<float>> weights, const KvCacheLayout& kv);

    std::vector<float> forward(const TokenBatch& batch) override { return forward_stage(batch, nullptr); }
    bool draws_in_forward() const override { return true; }
    // A pipeline stage's forward: `hidden` holds the previous stage's output rows [ids, hidden
    // size] for the graph's stage_input (null when the graph has none); the result is the graph's
    // output: the next stage's input rows, or the logits of the wanted rows on the last stage.
    std::vector<float> forward_stage(const TokenBatch& batch, const float* hidden);
    int64_t vocab() const override { return vocab_; }
    int64_t kv_cache_bytes() const override;
    void reload_weights(Checkpoint& ckpt, int rank) override;
    void clear_kv_cache() override;

private:
    const float* interleaved_w13(const Node* moe, const float* w1, const float* w3);

    const Graph& graph_;
    Communicator& comm_;
    std::map<std::string, std::vector<float>> weights_;
    std::map<int64_t, std::vector<float>> k_cache_, v_cache_;  // by layer
    std::map<const Node*, std::vector<float>> fused_w13_;      // moe nodes left unfused
    std::map<const Value*, size_t> last_use_;
    int64_t slots_, max_seq_, vocab_ = 0;
};

}  // namespace tpx
