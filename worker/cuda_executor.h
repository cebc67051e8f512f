// The GPU backend: bf16 weights and activations on the rank's device, fp32 accumulation,
// cuBLAS GEMMs, the kernels of kernels/cuda, NCCL collectives on the compute stream, a bf16
// KV cache, and the decode step captured as a CUDA graph (NCCL calls inside) and replayed.
// The weights come from worker/device_weights.h.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "kernels/cuda/ops.h"
#include "sharding/graph.h"
#include "sharding/steps.h"
#include "worker/device_weights.h"
#include "worker/executor.h"
#include "sharding/kv_cache.h"
#include "worker/nccl_comm.h"

namespace tpx {

class CudaExecutor : public Executor {
public:
    // `tuning` is passed to every launcher (cuda::Launch) and chooses the executor's own
    // settings: the GEMM tuner, the residual epilogue, the MoE form, profiling.
    // The KV cache is `kv`'s layers (bf16).
    CudaExecutor(const Graph& graph, int rank, NcclComm* nccl, DeviceWeights weights, const KvCacheLayout& kv, cudaStream_t stream,
                 double timeout_s, const KernelConfig& tuning);
    ~CudaExecutor() override;

    std::vector<float> forward(const TokenBatch& batch) override;
    std::vector<int32_t> forward_argmax(const TokenBatch& batch) override;
    void forward_follower(const TokenBatch& batch, bool logits) override;
    const float* forward_view(const TokenBatch& batch) override;
    std::vector<int32_t> forward_draw(const TokenBatch& batch, const std::vector<cpu::DrawParams>& draws, const std::vector<int64_t>& host_rows,
                                      const float** logits) override;
    bool draws_in_forward() const override { return tuning_.device_draws && !hidden_out_; }
    int64_t vocab() const override { return vocab_; }

    // A pipeline stage (worker/cuda_pipeline.h). A graph cut to a stage after the first starts
    // at stage_input: its rows are read from stage_input(tokens), a fixed device block the
    // previous stage's send lands in (enqueued before enqueue_stage); a stage before the last
    // leaves its output rows [tokens, hidden] in stage_output(), also fixed, so a captured
    // decode graph keeps both addresses. The last stage's logits come back with finish_logits
    // or finish_argmax after enqueue_stage.
    __nv_bfloat16* stage_input(int64_t tokens);
    const __nv_bfloat16* stage_output() const { return stage_out_; }
    // `greedy`: the last stage ends the forward in each row's argmax (finish_argmax), else in
    // fp32 logits (finish_logits).
    int64_t enqueue_stage(const TokenBatch& batch, bool greedy) { return enqueue(batch, greedy ? StepEnd::kArgmax : StepEnd::kLogits); }
    std::vector<float> finish_logits(int64_t rows);
    std::vector<int32_t> finish_argmax(int64_t rows);
    void sync();  // the stream, under the collective watchdog
    cudaStream_t stream() const { return stream_; }
    int64_t kv_cache_bytes() const override { return kv_bytes_; }
    void reload_weights(Checkpoint& ckpt, int rank) override;
    std::string refit_limit() const override {
        return weights_.quant.empty() ? "" : "the GPU backend refits bf16 weights only, and this server holds quantized ones";
    }
    void clear_kv_cache() override;

    // Decode steps (one token per sequence, all logits wanted) replay a captured CUDA graph.
    void enable_graphs(bool on) { graphs_enabled_ = on; }
    int graphs_captured() const { return (int)graphs_.size(); }
    std::string profile() const override;
    std::string tuner_summary() const override;
    double last_device_ms() const override { return last_device_ms_; }
    void reset_profile() override { profile_.clear(); }
    int graph_replays() const { return replays_; }
    // Kernel-to-kernel edges of the last captured graph that let the second kernel start while
    // the first drains (programmatic dependent launch).
    int programmatic_edges() const { return programmatic_edges_; }
    // All-reduces of a batch-1 decode step that the GEMVs around them do (cuda::ExchangeIn).
    int fused_all_reduces() const { return fused_all_reduces_; }

private:
    // What a forward ends in: the rows' fp32 logits (finish_logits), or an id a row (finish_argmax):
    // its argmax, or its draw by the params forward_draw staged (cuda::draw_rows), with the fp32
    // logits beside the ids for kDrawLogits.
    enum class StepEnd { kLogits, kArgmax, kDraw, kDrawLogits };
    // finish_logits into `host` (rows x vocab floats).
    void copy_logits(int64_t rows, float* host);
    // forward_view's pinned block grown to `rows` (nullptr past kPinnedLogitRows); before a step
    // is enqueued: pinned allocations wait for the device.
    float* pinned_logits(int64_t rows);
    void ensure_inputs(int64_t tokens, int64_t rows);
    // Stages the batch and enqueues the forward (a graph replay for decode steps), ending as `end`
    // says; returns rows.
    int64_t enqueue(const TokenBatch& batch, StepEnd end);
    // The step program over one forward's activations: a captured step takes them from `arena`,
    // the eager step before it records the block they need in `arena_peak`.
    void run_nodes(int64_t tokens, int64_t rows, bool select_rows, StepEnd end, char* arena = nullptr, size_t* arena_peak = nullptr);
    struct Forward;
    void run_node(Forward& f, const Node* n, int64_t rows);
    cuda::GemvNorm norm_params(Forward& f, const Node* norm);
    bool defer_norm(Forward& f, const Node* norm, int64_t rows);
    void run_add_rmsnorm(Forward& f, const Node* n, int64_t rows);
    void run_attention(Forward& f, const Node* n, int64_t rows);
    cuda::AttentionArgs attention_args(const Node* attention, int64_t rows);
    bool rope_in_attention(Forward& f, const Node* rope, const Node* attention, int64_t rows);
    bool fp8_output(Forward& f, const Node* n, int64_t rows, __nv_bfloat16* y, cuda::ActFp8& y8, const std::function<bool()>& applies);
    bool takes_w8a8(const Node* linear, int64_t rows) const;
    bool can_push(Forward& f, const Node* linear);
    void run_linear(Forward& f, const Node* n, int64_t rows);
    void run_fused_gemv(Forward& f, const Node* n, int64_t rows);
    __nv_bfloat16* fused_output(Forward& f, const Node* n, int64_t rows, const DecodeFusion& fu, cuda::GemvEpilogue& epi, cuda::GemvRopeKv& rk);
    // weight, input: the bf16 weight and x to use instead of the parameter's and the input's
    // buffer (a quantized weight dequantized; an input held in e4m3, dequantized).
    void run_gemm(Forward& f, const Node* n, int64_t rows, const __nv_bfloat16* weight = nullptr, const __nv_bfloat16* input = nullptr);
    // Quantized linears (cuda_forward.cpp): the packed weight of linear n, or nullptr; its run.
    const cuda::QuantWeightView* quant_weight(const Node* linear) const;
    void run_quant_linear(Forward& f, const Node* n, int64_t rows, const cuda::QuantWeightView& w);
    void run_split(Forward& f, const Node* n, int64_t rows);
    void run_moe(Forward& f, const Node* n, int64_t rows);
    void run_moe_dense(Forward& f, const cpu::MoeShape& s, const __nv_bfloat16* x, const cuda::MoeExperts& w, bool fused,
                       __nv_bfloat16* y);
    void run_all_gather(Forward& f, const Node* n, int64_t rows);

    const Graph& graph_;
    int rank_;
    NcclComm* nccl_;
    DeviceWeights weights_;
    int64_t slots_, max_seq_, vocab_ = 0, kv_bytes_ = 0;
    KvCacheLayout kv_layout_;  // the layers kv_ holds, for clear_kv_cache
    cudaStream_t stream_;
    KernelConfig tuning_;   // the job's [backend.tuning]; every launch below is made under it
    cuda::Launch launch_;   // stream_ and tuning_
    double timeout_s_;
    cublasHandle_t cublas_ = nullptr;
    void* cublas_workspace_ = nullptr;
    std::unique_ptr<cuda::GemmTuner> tuner_;  // GEMMs' (9 rows or more) algorithms; none with gemm_tune = false
    StepProgram program_;  // liveness, split views and fusions, decided once (sharding/steps.h)
    std::set<const Node*> w8a8_;  // linears whose prefill may run as FP8 GEMMs (quant_prefill = "w8a8")
    std::map<int64_t, std::pair<__nv_bfloat16*, __nv_bfloat16*>> kv_;  // layer -> (k, v)
    std::map<const Node*, float*> inv_freq_;                            // per rope node
    // The current batch's prompt segments (host), for attention's choice of kernel or GEMMs.
    std::vector<cuda::AttentionSegment> segments_;
    bool lone_tokens_ = false;  // this forward's tokens each alone in its sequence (AttentionArgs::decode)
    // Fixed-address inputs and output, so that captured graphs stay valid.
    int64_t input_capacity_ = 0, output_capacity_ = 0;
    // One device block (and its pinned host twin, so that a step's inputs go over in one
    // asynchronous copy): ids | positions | slots (int32, capacity each) | logit rows (int64).
    char* inputs_dev_ = nullptr;
    char* inputs_host_ = nullptr;
    int32_t *ids_ = nullptr, *positions_ = nullptr, *slots_dev_ = nullptr;
    int64_t* rows_ = nullptr;
    int32_t* argmax_host_ = nullptr;
    // Pipeline stages: the graph's stage_input (null on a first stage), whether its output is
    // the boundary's hidden rows (a stage before the last), and their blocks (input_capacity_ rows).
    const Value* stage_input_ = nullptr;
    bool hidden_out_ = false;
    __nv_bfloat16* stage_in_ = nullptr;
    __nv_bfloat16* stage_out_ = nullptr;
    float* logits_ = nullptr;
    // forward_view's pinned rows (up to kPinnedLogitRows; more go through view_, a vector).
    static constexpr int64_t kPinnedLogitRows = 256;
    float* logits_host_ = nullptr;
    int64_t logits_host_rows_ = 0;
    int32_t* argmax_ = nullptr;       // the rows' ids: argmax or draw
    void* argmax_scratch_ = nullptr;  // cuda::argmax_scratch_bytes(output_capacity_)
    // forward_draw's params a row (output_capacity_), staged in pinned memory, read by the graph.
    cpu::DrawParams* draw_host_ = nullptr;
    cpu::DrawParams* draw_dev_ = nullptr;
    float* moe_weights_ = nullptr;
    int64_t moe_capacity_ = 0;
    // MoE layers with at most this many tokens run sparse (backend.tuning.moe; docs/GPU.md).
    int64_t moe_sparse_max_tokens_ = cuda::kMoeSparseMaxTokens;
    int64_t moe_grouped_min_tokens_ = cuda::kMoeGroupedMinTokens;  // outside a graph, from this many: by expert
    bool graphs_enabled_ = false;
    // backend.tuning.profile: events around every node (no graphs then); ms and calls per op kind.
    bool profiling_ = false;
    std::vector<std::pair<std::string, std::pair<cudaEvent_t, cudaEvent_t>>> pending_;
    std::map<std::string, std::pair<double, int>> profile_;
    std::map<std::pair<int64_t, StepEnd>, cudaGraphExec_t> graphs_;  // by decode batch size and what it ends in
    StepEnd last_end_ = StepEnd::kLogits;  // the last enqueue's: which of finish_argmax and finish_logits may follow
    std::map<int64_t, size_t> arena_bytes_;      // by decode batch size: measured by its first (eager) step
    std::map<int64_t, char*> arenas_;            // by decode batch size: the captured graph's activations
    int replays_ = 0;
    int programmatic_edges_ = 0;                 // in the last captured graph
    int fused_all_reduces_ = 0;
    cudaEvent_t step_begin_ = nullptr, step_end_ = nullptr;  // around forward_argmax's device work
    double last_device_ms_ = -1;
};

}  // namespace tpx
