// The CUDA executor's life: its device buffers (KV cache, RoPE frequencies, fixed-address
// inputs and outputs), the step program decided at construction, and decode steps captured as
// CUDA graphs once per batch size and replayed. One forward's walk is cuda_forward.cpp's.
#include "worker/cuda_executor.h"

#include <algorithm>
#include <exception>
#include <initializer_list>
#include <set>

#include "common/check.h"
#include "common/cuda_check.h"
#include "common/log.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/quant_prefill.h"
#include "sharding/pipeline.h"

namespace tpx {

using bf16 = __nv_bfloat16;

CudaExecutor::CudaExecutor(const Graph& graph, int rank, NcclComm* nccl, DeviceWeights weights, const KvCacheLayout& kv,
                           cudaStream_t stream, double timeout_s, const KernelConfig& tuning)
    : graph_(graph), rank_(rank), nccl_(nccl), weights_(std::move(weights)), slots_(kv.slots), max_seq_(kv.max_seq), kv_layout_(kv), stream_(stream),
      tuning_(tuning), launch_(stream, tuning_), timeout_s_(timeout_s) {
    CUBLAS_CHECK(cublasCreate(&cublas_));
    // A fixed workspace, so that cuBLAS allocates nothing while a graph is captured.
    const size_t workspace = 32u << 20;
    CUDA_CHECK(cudaMalloc(&cublas_workspace_, workspace));
    CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, workspace));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    if (tuning.gemm_tune) tuner_ = std::make_unique<cuda::GemmTuner>(cublas_);  // cublasGemmEx timed too
    // Keep freed activations in the pool instead of returning them to the driver each step.
    cudaMemPool_t pool;
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));

    // The linears whose prefill may run as FP8 GEMMs (quant_prefill = "w8a8"; their row count and
    // the tuner decide each forward, run_quant_linear); with w8a8_fused, the step program has the
    // kernels before them write their input in e4m3.
    for (const Node* n : graph_.nodes()) {
        const cuda::QuantWeightView* q = quant_weight(n);
        cuda::QuantPrefillArgs p;
        if (q) p.w = *q, p.tokens = 128;  // (any multiple of 4: the layout alone decides)
        if (q && tuner_ && tuning.quant_prefill == "w8a8" && n->inputs.size() == 2 && n->name != "lm_head" && cuda::quant_prefill_fp8_applies(p))
            w8a8_.insert(n);
    }
    program_ = plan_steps(graph_, {tuning.residual_epilogue, nccl_ && nccl_->oneshot(), tuning.w8a8_fused ? w8a8_ : std::set<const Node*>{},
                                   tuning.gemv_mma, tuning.batch_gemm});
    for (const KvLayer& l : kv.layers) {
        const size_t bytes = (size_t)kv.elems(l) * sizeof(bf16);
        bf16 *k = nullptr, *v = nullptr;
        CUDA_CHECK(cudaMalloc(&k, bytes));
        CUDA_CHECK(cudaMalloc(&v, bytes));
        CUDA_CHECK(cudaMemset(k, 0, bytes));
        CUDA_CHECK(cudaMemset(v, 0, bytes));
        kv_[l.layer] = {k, v};
        kv_bytes_ += 2 * (int64_t)bytes;
    }
    for (const Node* n : program_.nodes) {
        if (n->kind == Op::kRope) {
            std::vector<float> inv = cpu::rope_inv_freq(rope_params(*n));
            float* d = nullptr;
            CUDA_CHECK(cudaMalloc(&d, inv.size() * sizeof(float)));
            CUDA_CHECK(cudaMemcpy(d, inv.data(), inv.size() * sizeof(float), cudaMemcpyHostToDevice));
            inv_freq_[n] = d;
        }
    }
    for (Value* out : graph_.outputs()) vocab_ = out->shape.back();
    for (const Node* n : program_.nodes)
        if (n->kind == Op::kInput && n->name == kStageInput) stage_input_ = n->out();
    hidden_out_ = graph_.find("lm_head") == nullptr;  // a stage before the last: vocab_ is the hidden size
    // moe: "auto": sparse up to kMoeSparseMaxTokens tokens, by expert from kMoeGroupedMinTokens
    // outside a graph, dense otherwise; "sparse" or "dense" for every batch; "grouped": by expert
    // for every batch outside a graph, dense inside one.
    if (tuning.moe == "sparse") moe_sparse_max_tokens_ = INT64_MAX;
    else if (tuning.moe == "dense") moe_sparse_max_tokens_ = -1, moe_grouped_min_tokens_ = INT64_MAX;
    else if (tuning.moe == "grouped") moe_sparse_max_tokens_ = -1, moe_grouped_min_tokens_ = 0;
    else if (tuning.moe != "auto") throw Error("backend.tuning.moe = '" + tuning.moe + "': expected auto, sparse, grouped or dense", kExitBadInput);
    profiling_ = tuning.profile;
}

// Between steps (the last forward synchronized its stream): every kernel that read the old
// weights has finished, and the graphs replay over the same buffers afterwards.
void CudaExecutor::reload_weights(Checkpoint& ckpt, int rank) {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    tpx::reload_weights(graph_, rank, ckpt, weights_, stream_);
}

void CudaExecutor::clear_kv_cache() {
    for (const KvLayer& l : kv_layout_.layers) {
        const size_t bytes = (size_t)kv_layout_.elems(l) * sizeof(bf16);
        auto [k, v] = kv_.at(l.layer);
        CUDA_CHECK(cudaMemsetAsync(k, 0, bytes, stream_));
        CUDA_CHECK(cudaMemsetAsync(v, 0, bytes, stream_));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
}

std::string CudaExecutor::profile() const {
    if (!profiling_) return {};
    std::vector<std::pair<double, std::string>> rows;
    double total = 0;
    for (auto& [k, v] : profile_) rows.push_back({v.first, k}), total += v.first;
    std::sort(rows.rbegin(), rows.rend());
    std::string s = "profile (ms summed over the timed calls, by op):\n";
    char line[160];
    for (auto& [ms, k] : rows) {
        std::snprintf(line, sizeof(line), "  %-28s %10.3f ms %6.1f%%  %d calls\n", k.c_str(), ms, 100 * ms / std::max(total, 1e-9),
                      profile_.at(k).second);
        s += line;
    }
    return s + tuner_summary();
}

std::string CudaExecutor::tuner_summary() const { return tuner_ ? tuner_->summary() : ""; }

CudaExecutor::~CudaExecutor() {
    if (std::uncaught_exceptions()) {  // the device may be stuck: free nothing (the tuner's cudaFree would wait)
        (void)tuner_.release();
        return;
    }
    cudaStreamSynchronize(stream_);
    for (auto& [n, g] : graphs_) cudaGraphExecDestroy(g);
    for (auto& [n, p] : arenas_) cudaFree(p);
    for (cudaEvent_t e : {step_begin_, step_end_})
        if (e) cudaEventDestroy(e);
    for (auto& [l, kv] : kv_) cudaFree(kv.first), cudaFree(kv.second);
    for (auto& [n, p] : inv_freq_) cudaFree(p);
    for (void* p : {(void*)inputs_dev_, (void*)logits_, (void*)argmax_, argmax_scratch_, (void*)draw_dev_, (void*)moe_weights_, cublas_workspace_,
                    (void*)stage_in_, (void*)stage_out_})
        cudaFree(p);
    cudaFreeHost(inputs_host_);
    cudaFreeHost(argmax_host_);
    cudaFreeHost(draw_host_);
    cudaFreeHost(logits_host_);
    if (cublas_) cublasDestroy(cublas_);
}

void CudaExecutor::ensure_inputs(int64_t tokens, int64_t rows) {
    if (std::max(tokens, rows) > input_capacity_) {
        cudaFree(inputs_dev_);
        cudaFreeHost(inputs_host_);
        input_capacity_ = (std::max<int64_t>(std::max(tokens, rows), 64) + 7) / 8 * 8;
        size_t bytes = input_capacity_ * (3 * sizeof(int32_t) + sizeof(int64_t));
        CUDA_CHECK(cudaMalloc(&inputs_dev_, bytes));
        CUDA_CHECK(cudaHostAlloc(&inputs_host_, bytes, cudaHostAllocDefault));
        ids_ = reinterpret_cast<int32_t*>(inputs_dev_);
        positions_ = ids_ + input_capacity_;
        slots_dev_ = positions_ + input_capacity_;
        rows_ = reinterpret_cast<int64_t*>(slots_dev_ + input_capacity_);
        cudaFree(stage_in_);
        cudaFree(stage_out_);
        stage_in_ = stage_out_ = nullptr;
        if (stage_input_) CUDA_CHECK(cudaMalloc(&stage_in_, input_capacity_ * stage_input_->shape.back() * sizeof(bf16)));
        if (hidden_out_) CUDA_CHECK(cudaMalloc(&stage_out_, input_capacity_ * vocab_ * sizeof(bf16)));
        for (auto& [n, g] : graphs_) cudaGraphExecDestroy(g);  // they point at the old buffers
        graphs_.clear();
    }
    if (rows > output_capacity_) {
        cudaFree(logits_);
        cudaFree(argmax_);
        cudaFree(argmax_scratch_);
        cudaFree(draw_dev_);
        cudaFreeHost(argmax_host_);
        cudaFreeHost(draw_host_);
        output_capacity_ = std::max<int64_t>(rows, 64);
        CUDA_CHECK(cudaMalloc(&logits_, output_capacity_ * vocab_ * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&argmax_, output_capacity_ * sizeof(int32_t)));
        CUDA_CHECK(cudaMalloc(&argmax_scratch_, cuda::argmax_scratch_bytes(output_capacity_)));
        CUDA_CHECK(cudaHostAlloc(&argmax_host_, output_capacity_ * sizeof(int32_t), cudaHostAllocDefault));
        CUDA_CHECK(cudaMalloc(&draw_dev_, output_capacity_ * sizeof(cpu::DrawParams)));
        CUDA_CHECK(cudaHostAlloc(&draw_host_, output_capacity_ * sizeof(cpu::DrawParams), cudaHostAllocDefault));
        for (auto& [n, g] : graphs_) cudaGraphExecDestroy(g);
        graphs_.clear();
    }
    if (tokens * 256 > moe_capacity_) {  // routing weights: tokens x local experts (at most 256)
        cudaFree(moe_weights_);
        moe_capacity_ = std::max<int64_t>(tokens, 64) * 256;
        CUDA_CHECK(cudaMalloc(&moe_weights_, moe_capacity_ * sizeof(float)));
        for (auto& [n, g] : graphs_) cudaGraphExecDestroy(g);
        graphs_.clear();
    }
}

bf16* CudaExecutor::stage_input(int64_t tokens) {
    TPX_CHECK(stage_input_ != nullptr, "stage_input on a graph that does not start at " + std::string(kStageInput));
    ensure_inputs(tokens, tokens);
    return stage_in_;
}

void CudaExecutor::sync() { sync_with_watchdog(stream_, nccl_, timeout_s_); }

std::vector<float> CudaExecutor::forward(const TokenBatch& batch) { return finish_logits(enqueue(batch, StepEnd::kLogits)); }

// The forward rank 0 runs, to its end, without the logits' copy to the host (at batch 64 of a
// 128k vocabulary, 33 MB a step that a follower never reads).
void CudaExecutor::forward_follower(const TokenBatch& batch, bool logits) {
    if (!logits) {
        (void)forward_argmax(batch);
        return;
    }
    enqueue(batch, StepEnd::kLogits);  // (rank 0 may end in draws instead: the same collectives)
    sync_with_watchdog(stream_, nccl_, timeout_s_);
}

std::vector<float> CudaExecutor::finish_logits(int64_t R) {
    std::vector<float> host(R * vocab_);
    copy_logits(R, host.data());
    return host;
}

void CudaExecutor::copy_logits(int64_t R, float* host) {
    TPX_CHECK(!hidden_out_, "logits asked of a pipeline stage before the last");
    TPX_CHECK(last_end_ == StepEnd::kLogits, "logits asked of a forward enqueued to end in ids");
    // The wait first: a copy to the host blocks it until the stream reaches the copy, which with
    // a stopped peer would be never.
    sync_with_watchdog(stream_, nccl_, timeout_s_);
    CUDA_CHECK(cudaMemcpy(host, logits_, R * vocab_ * sizeof(float), cudaMemcpyDeviceToHost));
}

float* CudaExecutor::pinned_logits(int64_t R) {
    if (R > kPinnedLogitRows) return nullptr;
    // Grown before the step is enqueued: allocating or freeing pinned memory waits for the device,
    // which outside the watchdog's sync would wait for a stopped peer for ever. Powers of two
    // from 64 rows, so that a batch filling up reallocates at most three times.
    if (R > logits_host_rows_) {
        int64_t rows = 64;
        while (rows < R) rows *= 2;
        cudaFreeHost(logits_host_);
        logits_host_ = nullptr, logits_host_rows_ = 0;
        float* host = nullptr;
        CUDA_CHECK(cudaHostAlloc(&host, rows * vocab_ * sizeof(float), cudaHostAllocDefault));
        logits_host_ = host, logits_host_rows_ = rows;
    }
    return logits_host_;
}

const float* CudaExecutor::forward_view(const TokenBatch& batch) {
    float* host = pinned_logits(batch.rows());
    if (!host) {
        view_ = finish_logits(enqueue(batch, StepEnd::kLogits));
        return view_.data();
    }
    copy_logits(enqueue(batch, StepEnd::kLogits), host);
    return host;
}

namespace {

// Edges of `g` along which the second kernel may start before the first ends.
int count_programmatic_edges(cudaGraph_t g) {
    size_t n = 0;
    CUDA_CHECK(cudaGraphGetEdges(g, nullptr, nullptr, nullptr, &n));
    std::vector<cudaGraphNode_t> from(n), to(n);
    std::vector<cudaGraphEdgeData> data(n);
    CUDA_CHECK(cudaGraphGetEdges(g, from.data(), to.data(), data.data(), &n));
    return (int)std::count_if(data.begin(), data.end(), [](const cudaGraphEdgeData& e) { return e.type == cudaGraphDependencyTypeProgrammatic; });
}

}  // namespace

std::vector<int32_t> CudaExecutor::forward_argmax(const TokenBatch& batch) { return finish_argmax(enqueue(batch, StepEnd::kArgmax)); }

std::vector<int32_t> CudaExecutor::forward_draw(const TokenBatch& batch, const std::vector<cpu::DrawParams>& draws,
                                                const std::vector<int64_t>& host_rows, const float** logits) {
    const int64_t R = batch.rows();
    TPX_CHECK((int64_t)draws.size() == R, "forward_draw: " + std::to_string(draws.size()) + " draws for " + std::to_string(R) + " rows");
    float* host = nullptr;
    if (!host_rows.empty()) {
        host = pinned_logits(R);
        if (!host) view_.resize((size_t)(R * vocab_)), host = view_.data();
    }
    ensure_inputs((int64_t)batch.ids.size(), R);
    // (The previous step has been waited for: the pinned params are free to refill.)
    std::copy(draws.begin(), draws.end(), draw_host_);
    CUDA_CHECK(cudaMemcpyAsync(draw_dev_, draw_host_, R * sizeof(cpu::DrawParams), cudaMemcpyHostToDevice, stream_));
    std::vector<int32_t> ids = finish_argmax(enqueue(batch, host_rows.empty() ? StepEnd::kDraw : StepEnd::kDrawLogits));
    // The host rows alone (finish_argmax has waited for the step), runs of consecutive rows a copy.
    for (size_t i = 0; i < host_rows.size();) {
        size_t j = i + 1;
        while (j < host_rows.size() && host_rows[j] == host_rows[j - 1] + 1) ++j;
        const int64_t first = host_rows[i], n = (int64_t)(j - i);
        TPX_CHECK(first >= 0 && first + n <= R, "forward_draw: host row " + std::to_string(first) + " of " + std::to_string(R));
        CUDA_CHECK(cudaMemcpy(host + first * vocab_, logits_ + first * vocab_, n * vocab_ * sizeof(float), cudaMemcpyDeviceToHost));
        i = j;
    }
    *logits = host;
    return ids;
}

std::vector<int32_t> CudaExecutor::finish_argmax(int64_t R) {
    TPX_CHECK(!hidden_out_, "logits asked of a pipeline stage before the last");
    TPX_CHECK(last_end_ != StepEnd::kLogits, "ids asked of a forward enqueued to end in fp32 logits");
    CUDA_CHECK(cudaMemcpyAsync(argmax_host_, argmax_, R * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaEventRecord(step_end_, stream_));
    sync_with_watchdog(stream_, nccl_, timeout_s_);
    float device_ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&device_ms, step_begin_, step_end_));
    last_device_ms_ = device_ms;
    std::vector<int32_t> ids(argmax_host_, argmax_host_ + R);
    for (auto& [key, ev] : pending_) {
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, ev.first, ev.second));
        profile_[key].first += ms;
        profile_[key].second += 1;
        cudaEventDestroy(ev.first);
        cudaEventDestroy(ev.second);
    }
    pending_.clear();
    return ids;
}

int64_t CudaExecutor::enqueue(const TokenBatch& batch, StepEnd asked) {
    // A stage before the last hands on its rows whatever follows: one graph a batch size.
    const StepEnd end = hidden_out_ ? StepEnd::kLogits : asked;
    last_end_ = asked;
    const int64_t T = (int64_t)batch.ids.size();
    const int64_t R = batch.rows();
    check_batch(batch, slots_, max_seq_);
    ensure_inputs(T, R);
    if (!step_begin_) {  // before any capture: every decode graph records the step's start
        CUDA_CHECK(cudaEventCreate(&step_begin_));
        CUDA_CHECK(cudaEventCreate(&step_end_));
    }
    // The previous step has been waited for (forward and forward_argmax end in a sync), so the
    // pinned block is free to refill.
    int32_t* host = reinterpret_cast<int32_t*>(inputs_host_);
    std::copy(batch.ids.begin(), batch.ids.end(), host);
    std::copy(batch.positions.begin(), batch.positions.end(), host + input_capacity_);
    std::copy(batch.slots.begin(), batch.slots.end(), host + 2 * input_capacity_);
    std::copy(batch.logit_rows.begin(), batch.logit_rows.end(), reinterpret_cast<int64_t*>(host + 3 * input_capacity_));
    segments_.clear();
    for (int64_t t = 0; t < T; ++t) {
        if (t > 0 && batch.slots[t] == batch.slots[t - 1] && batch.positions[t] == batch.positions[t - 1] + 1) {
            ++segments_.back().count;
        } else {
            segments_.push_back({t, 1, batch.slots[t], batch.positions[t]});
        }
    }
    bool select = !batch.logit_rows.empty();
    size_t used = select ? 3 * input_capacity_ * sizeof(int32_t) + R * sizeof(int64_t) : (2 * input_capacity_ + T) * sizeof(int32_t);
    CUDA_CHECK(cudaMemcpyAsync(inputs_dev_, inputs_host_, used, cudaMemcpyHostToDevice, stream_));
    // Every token alone in its sequence (segments of one token, each its own slot).
    std::set<int64_t> slots;
    for (const cuda::AttentionSegment& seg : segments_) slots.insert(seg.slot);
    lone_tokens_ = segments_.size() == (size_t)T && slots.size() == (size_t)T;
    // A decode step: one token per sequence, every logit row wanted in order. (A prompt whose
    // every row's logits are wanted, as --dump-logits asks, is a prefill: not captured.)
    bool decode = select && R == T && lone_tokens_;
    for (int64_t i = 0; decode && i < R; ++i) decode = batch.logit_rows[i] == i;
    if (graphs_enabled_ && decode && !profiling_) {
        auto it = graphs_.find({T, end});
        if (it == graphs_.end() && !arena_bytes_.count(T)) {
            // The first step of this batch size runs eagerly and measures the block that its
            // activations need; the next one is captured with them in that block.
            size_t peak = 0;
            CUDA_CHECK(cudaEventRecord(step_begin_, stream_));
            run_nodes(T, R, false, end, nullptr, &peak);
            arena_bytes_[T] = peak;
            return R;
        }
        if (it == graphs_.end()) {
            char*& arena = arenas_[T];
            if (!arena) CUDA_CHECK(cudaMalloc((void**)&arena, arena_bytes_.at(T)));
            cudaGraph_t g;
            CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
            CUDA_CHECK(cudaEventRecordWithFlags(step_begin_, stream_, cudaEventRecordExternal));  // each replay: the step's start
            run_nodes(T, R, false, end, arena);
            CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
            programmatic_edges_ = count_programmatic_edges(g);
            cudaGraphExec_t exec;
            CUDA_CHECK(cudaGraphInstantiateWithFlags(&exec, g, cudaGraphInstantiateFlagAutoFreeOnLaunch));
            CUDA_CHECK(cudaGraphDestroy(g));
            it = graphs_.emplace(std::make_pair(T, end), exec).first;
        }
        CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
        ++replays_;
    } else {
        CUDA_CHECK(cudaEventRecord(step_begin_, stream_));
        run_nodes(T, R, select && !decode, end);
    }
    return R;
}

}  // namespace tpx
