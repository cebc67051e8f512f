// The CUDA executor. Activations are stream-ordered allocations (cudaMallocAsync) freed after
// their last use; inside a graph capture they become the graph's own memory nodes, so a
// captured decode step allocates nothing when replayed.
#include "worker/cuda_executor.h"

#include <algorithm>
#include <exception>
#include <initializer_list>

#include "common/cuda_check.h"
#include "common/log.h"
#include "kernels/cuda/ops.h"
#include "worker/step_arena.h"

namespace tpx {

using bf16 = __nv_bfloat16;

CudaExecutor::CudaExecutor(const Graph& graph, int rank, NcclComm* nccl, DeviceWeights weights, int64_t slots, int64_t max_seq,
                           cudaStream_t stream, double timeout_s, const KernelConfig& tuning)
    : graph_(graph), rank_(rank), nccl_(nccl), weights_(std::move(weights)), slots_(slots), max_seq_(max_seq), stream_(stream),
      timeout_s_(timeout_s) {
    CUBLAS_CHECK(cublasCreate(&cublas_));
    // A fixed workspace, so that cuBLAS allocates nothing while a graph is captured.
    const size_t workspace = 32u << 20;
    CUDA_CHECK(cudaMalloc(&cublas_workspace_, workspace));
    CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, workspace));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    cuda::set_kernel_config(tuning);
    if (tuning.gemm_tune) tuner_ = std::make_unique<cuda::GemmTuner>();
    // Keep freed activations in the pool instead of returning them to the driver each step.
    cudaMemPool_t pool;
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));

    std::vector<Node*> nodes = graph_.nodes();
    for (size_t i = 0; i < nodes.size(); ++i) {
        Node* n = nodes[i];
        for (Value* v : n->inputs) last_use_[v] = i;
        if (n->kind == Op::kSplit) {
            bool views = true;
            for (size_t k = 0; k < n->outputs.size(); ++k)
                for (const Node* u : n->outputs[k]->users)
                    for (size_t j = 0; j < u->inputs.size(); ++j)
                        if (u->inputs[j] == n->outputs[k])
                            views = views && ((u->kind == Op::kRope && j < 2) || (u->kind == Op::kAttention && (j == 1 || j == 2)));
            if (views) split_views_.insert(n);
        }
        if (n->kind == Op::kAttention) {
            int64_t width = n->attr_int("kv_heads") * n->attr_int("head_dim");
            size_t bytes = (size_t)(slots * max_seq * width) * sizeof(bf16);
            bf16 *k = nullptr, *v = nullptr;
            CUDA_CHECK(cudaMalloc(&k, bytes));
            CUDA_CHECK(cudaMalloc(&v, bytes));
            CUDA_CHECK(cudaMemset(k, 0, bytes));
            CUDA_CHECK(cudaMemset(v, 0, bytes));
            kv_[n->attr_int("layer")] = {k, v};
            kv_bytes_ += 2 * (int64_t)bytes;
        } else if (n->kind == Op::kRope) {
            std::vector<float> inv = cpu::rope_inv_freq(rope_params(*n));
            float* d = nullptr;
            CUDA_CHECK(cudaMalloc(&d, inv.size() * sizeof(float)));
            CUDA_CHECK(cudaMemcpy(d, inv.data(), inv.size() * sizeof(float), cudaMemcpyHostToDevice));
            inv_freq_[n] = d;
        }
    }
    for (Value* out : graph_.outputs()) {
        last_use_[out] = nodes.size();
        vocab_ = out->shape.back();
    }
    find_decode_fusions(nodes);
    // A split's input lives as long as its views.
    for (const Node* n : split_views_)
        for (const Value* o : n->outputs) last_use_[n->inputs[0]] = std::max(last_use_[n->inputs[0]], last_use_[o]);
    if (tuning.residual_epilogue)
        for (const Node* n : nodes) {
            if (n->kind != Op::kLinear || n->inputs.size() != 2 || n->out()->users.size() != 1) continue;
            const Node* u = n->out()->users[0];
            if (u->kind == Op::kAddRmsnorm && u->inputs[0] == n->out() && u->inputs[1] != n->out() &&
                u->inputs[1]->shape.back() == n->out()->shape.back() &&
                std::find(graph_.outputs().begin(), graph_.outputs().end(), n->out()) == graph_.outputs().end())
                residual_epilogue_[n] = u;
        }
    // moe: "auto": sparse up to kMoeSparseMaxTokens tokens, by expert from kMoeGroupedMinTokens
    // outside a graph, dense otherwise; "sparse" or "dense" for every batch; "grouped": by expert
    // for every batch outside a graph, dense inside one.
    if (tuning.moe == "sparse") moe_sparse_max_tokens_ = INT64_MAX;
    else if (tuning.moe == "dense") moe_sparse_max_tokens_ = -1, moe_grouped_min_tokens_ = INT64_MAX;
    else if (tuning.moe == "grouped") moe_sparse_max_tokens_ = -1, moe_grouped_min_tokens_ = 0;
    else if (tuning.moe != "auto") throw Error("backend.tuning.moe = '" + tuning.moe + "': expected auto, sparse, grouped or dense", kExitBadInput);
    profiling_ = tuning.profile;
}

void CudaExecutor::find_decode_fusions(const std::vector<Node*>& nodes) {
    std::map<const Node*, size_t> index;
    for (size_t i = 0; i < nodes.size(); ++i) index[nodes[i]] = i;
    std::set<const Value*> outputs(graph_.outputs().begin(), graph_.outputs().end());
    // The one node that reads v, and only as its input k; nullptr otherwise.
    auto sole_reader = [&](const Value* v, std::initializer_list<size_t> slots) -> const Node* {
        if (outputs.count(v) || v->users.size() != 1) return nullptr;
        const Node* u = v->users[0];
        for (size_t j = 0; j < u->inputs.size(); ++j)
            if (u->inputs[j] == v && std::find(slots.begin(), slots.end(), j) == slots.end()) return nullptr;
        return u;
    };
    for (const Node* n : nodes) {
        if (n->kind != Op::kLinear || n->inputs.size() < 2) continue;
        DecodeFusion f;
        const Node* p = n->inputs[0]->producer;
        if (p && (p->kind == Op::kRmsnorm || p->kind == Op::kAddRmsnorm || p->kind == Op::kAllreduceAddRmsnorm) && p->outputs[0] == n->inputs[0] &&
            sole_reader(p->outputs[0], {0}) == n && p->inputs[0]->shape.back() == n->inputs[1]->shape[1])
            f.norm = p;
        const Node* u = sole_reader(n->out(), {0});
        if (u && u->kind == Op::kSiluMul && u->inputs.size() == 1) f.swiglu = u;
        if (u && u->kind == Op::kSplit && u->outputs.size() == 3) {
            const Node* rope = sole_reader(u->outputs[0], {0});
            const Node* attn = sole_reader(u->outputs[2], {2});
            if (rope && rope->kind == Op::kRope && sole_reader(u->outputs[1], {1}) == rope && attn && attn->kind == Op::kAttention &&
                sole_reader(rope->outputs[0], {0}) == attn && sole_reader(rope->outputs[1], {1}) == attn &&
                rope->attr_int("heads") == attn->attr_int("heads") && rope->attr_int("kv_heads") == attn->attr_int("kv_heads") &&
                rope->attr_int("head_dim") == attn->attr_int("head_dim") &&
                u->outputs[0]->shape.back() == attn->attr_int("heads") * attn->attr_int("head_dim") &&
                u->outputs[1]->shape.back() == attn->attr_int("kv_heads") * attn->attr_int("head_dim") &&
                u->outputs[2]->shape.back() == attn->attr_int("kv_heads") * attn->attr_int("head_dim"))
                f.split = u, f.rope = rope, f.attention = attn;
        }
        // The norm only goes in with an epilogue: tpx-kbench (docs/PERF.md) has qkv + norm + RoPE +
        // cache write 15.6 us against 22.3 unfused and gate_up + norm + SwiGLU 59.4 against 61.4,
        // but lm_head + norm 239.6 against 237.5 (the grid capped for the prologue is slower for
        // 128256 rows).
        if (!f.swiglu && !f.split) continue;
        fusions_[n] = f;
        if (f.norm) {
            norm_of_[f.norm] = n;
            // The norm's inputs are read by the fused GEMV, later: they live until it.
            for (const Value* v : f.norm->inputs) last_use_[v] = std::max(last_use_[v], index[n]);
        }
    }
    // The linear (no epilogue of its own) whose output only a fused all-reduce + norm reads: its
    // GEMV can push its part straight to the ranks (cuda::ExchangeIn), the norm's GEMV sums it.
    if (!nccl_ || !nccl_->oneshot()) return;
    for (const auto& [norm, lin] : norm_of_) {
        if (norm->kind != Op::kAllreduceAddRmsnorm) continue;
        const Node* p = norm->inputs[0]->producer;
        if (p && p->kind == Op::kLinear && p->inputs.size() >= 2 && !fusions_.count(p) && sole_reader(p->out(), {0}) == norm)
            exchange_of_[p] = norm;
    }
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
    if (tuner_) s += tuner_->summary();
    return s;
}

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
    for (void* p : {(void*)inputs_dev_, (void*)logits_, (void*)argmax_, (void*)moe_weights_, cublas_workspace_}) cudaFree(p);
    cudaFreeHost(inputs_host_);
    cudaFreeHost(argmax_host_);
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
        for (auto& [n, g] : graphs_) cudaGraphExecDestroy(g);  // they point at the old buffers
        graphs_.clear();
    }
    if (rows > output_capacity_) {
        cudaFree(logits_);
        cudaFree(argmax_);
        cudaFreeHost(argmax_host_);
        output_capacity_ = std::max<int64_t>(rows, 64);
        CUDA_CHECK(cudaMalloc(&logits_, output_capacity_ * vocab_ * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&argmax_, output_capacity_ * sizeof(int32_t)));
        CUDA_CHECK(cudaHostAlloc(&argmax_host_, output_capacity_ * sizeof(int32_t), cudaHostAllocDefault));
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

std::vector<float> CudaExecutor::forward(const TokenBatch& batch) {
    int64_t R = enqueue(batch);
    std::vector<float> host(R * vocab_);
    // The wait first: a copy to pageable memory blocks the host until the stream reaches it,
    // which with a stopped peer would be never.
    sync_with_watchdog(stream_, nccl_, timeout_s_);
    CUDA_CHECK(cudaMemcpy(host.data(), logits_, host.size() * sizeof(float), cudaMemcpyDeviceToHost));
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

std::vector<int32_t> CudaExecutor::forward_argmax(const TokenBatch& batch) {
    int64_t R = enqueue(batch);
    cuda::argmax_rows(R, vocab_, logits_, argmax_, stream_);
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

int64_t CudaExecutor::enqueue(const TokenBatch& batch) {
    const int64_t T = (int64_t)batch.ids.size();
    const int64_t R = batch.logit_rows.empty() ? T : (int64_t)batch.logit_rows.size();
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
    // A decode step: one token per sequence, every logit row wanted in order. (A prompt whose
    // every row's logits are wanted, as --dump-logits asks, is a prefill: not captured.)
    bool decode = select && R == T && segments_.size() == (size_t)T;
    for (int64_t i = 0; decode && i < R; ++i) decode = batch.logit_rows[i] == i;
    if (graphs_enabled_ && decode && !profiling_) {
        auto it = graphs_.find(T);
        if (it == graphs_.end() && !arena_bytes_.count(T)) {
            // The first step of this batch size runs eagerly and measures the block that its
            // activations need; the next one is captured with them in that block.
            size_t peak = 0;
            CUDA_CHECK(cudaEventRecord(step_begin_, stream_));
            run_nodes(T, R, false, nullptr, &peak);
            arena_bytes_[T] = peak;
            return R;
        }
        if (it == graphs_.end()) {
            char*& arena = arenas_[T];
            if (!arena) CUDA_CHECK(cudaMalloc((void**)&arena, arena_bytes_.at(T)));
            cudaGraph_t g;
            CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
            CUDA_CHECK(cudaEventRecordWithFlags(step_begin_, stream_, cudaEventRecordExternal));  // each replay: the step's start
            run_nodes(T, R, false, arena);
            CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
            programmatic_edges_ = count_programmatic_edges(g);
            cudaGraphExec_t exec;
            CUDA_CHECK(cudaGraphInstantiateWithFlags(&exec, g, cudaGraphInstantiateFlagAutoFreeOnLaunch));
            CUDA_CHECK(cudaGraphDestroy(g));
            it = graphs_.emplace(T, exec).first;
        }
        CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
        ++replays_;
    } else {
        CUDA_CHECK(cudaEventRecord(step_begin_, stream_));
        run_nodes(T, R, select && !decode);
    }
    return R;
}

void CudaExecutor::run_nodes(int64_t T, int64_t R, bool select_rows, char* arena, size_t* arena_peak) {
    std::map<const Value*, bf16*> buf;
    std::map<const Value*, int64_t> rows;
    std::map<const Value*, int64_t> stride;         // row stride of column views (split outputs); others are packed
    std::map<const Value*, const Value*> view_of;   // a view's base value
    auto width = [](const Value* v) { return v->shape.back(); };
    auto data = [&](const Value* v) -> bf16* {
        if (v->producer && v->producer->kind == Op::kParam) return weights_.params.at(v->producer->name);
        return buf.at(v);
    };
    // Activations: stream-ordered allocations, or with `arena` offsets in that block (a captured
    // step: kernel nodes only). `arena_peak` (an eager step) records the block the same
    // sequence of allocations needs.
    StepArena plan;
    std::map<const void*, size_t> offset_of;
    auto alloc = [&](int64_t n) {
        const size_t bytes = std::max<int64_t>(1, n) * sizeof(bf16);
        bf16* p = nullptr;
        if (arena) {
            p = reinterpret_cast<bf16*>(arena + plan.take(bytes));
            offset_of[p] = (size_t)(reinterpret_cast<char*>(p) - arena);
        } else {
            CUDA_CHECK(cudaMallocAsync((void**)&p, bytes, stream_));
            if (arena_peak) offset_of[p] = plan.take(bytes);
        }
        return p;
    };
    auto make = [&](const Value* v, int64_t r) {
        rows[v] = r;
        return buf[v] = alloc(r * width(v));
    };
    auto release = [&](bf16* p) {
        auto it = offset_of.find(p);
        if (it != offset_of.end()) plan.give(it->second), offset_of.erase(it);
        if (!arena) CUDA_CHECK(cudaFreeAsync(p, stream_));
    };
    // Batch-1 decode: the GEMVs take in their neighbours (find_decode_fusions).
    const bool fuse = T == 1 && !select_rows;
    std::map<const Node*, cuda::GemvNorm> pending_norm;  // linear -> the norm its GEMV computes first
    std::map<const Node*, bf16*> pending_release;        // linear -> the all-reduced input that norm reads
    std::set<const Node*> skip, kv_written;
    std::set<const Node*> residual_added;  // add_rmsnorm nodes whose add the GEMM before did
    // Fused all-reduces (exchange_of_): norm -> its exchange's place in this forward. One open
    // at a time (pushed, its sum not yet launched), as cuda::ExchangeIn's parity needs.
    std::map<const Node*, uint32_t> pushed;
    uint32_t exchanges = 0;
    bool exchange_open = false;
    // The GemvNorm that the GEMV of norm_of_.at(n) computes, but for x and residual_out.
    auto norm_params = [&](const Node* n) {
        const bool plain = n->kind == Op::kRmsnorm;
        cuda::GemvNorm nm;
        nm.residual = plain ? nullptr : data(n->inputs[1]);
        nm.weight = data(n->inputs[plain ? 1 : 2]);
        nm.eps = (float)n->attr_double("eps");
        return nm;
    };
    std::vector<Node*> nodes = graph_.nodes();
    auto release_inputs = [&](size_t i, const Node* n) {
        for (Value* v : n->inputs) {
            if (view_of.count(v)) {  // the view's base may end here too
                const Value* base = view_of[v];
                if (last_use_[base] == i && buf.count(base)) {
                    release(buf[base]);
                    buf.erase(base);
                }
            }
            if (last_use_[v] == i && buf.count(v)) {
                if (!stride.count(v)) release(buf[v]);
                buf.erase(v);
            }
        }
    };
    for (size_t i = 0; i < nodes.size(); ++i) {
        const Node* n = nodes[i];
        auto in = [&](size_t k) { return n->inputs[k]; };
        int64_t r = n->inputs.empty() ? T : (rows.count(in(0)) ? rows[in(0)] : T);
        if (n->kind == Op::kInput || n->kind == Op::kParam) continue;
        if (skip.count(n)) {  // done by a fused GEMV
            release_inputs(i, n);
            continue;
        }
        // A norm whose linear's GEMV will compute it: only the new residual is allocated here.
        if (fuse && norm_of_.count(n)) {
            const Node* lin = norm_of_.at(n);
            const bool plain = n->kind == Op::kRmsnorm;
            cuda::GemvNorm nm = norm_params(n);
            if (pushed.count(n)) nm.sum = nccl_->exchange_in(pushed.at(n));
            else nm.x = data(in(0));
            // (residual_out, not yet allocated, is a stream-ordered allocation: aligned)
            if (cuda::gemv_fused_applies(width(in(0)), &nm, data(lin->inputs[1]))) {
                if (!plain) nm.residual_out = make(n->out(1), r);
                if (n->kind == Op::kAllreduceAddRmsnorm && nccl_ && !nm.sum.ll) {
                    bf16* reduced = alloc(width(in(0)));
                    nccl_->all_reduce(nm.x, reduced, width(in(0)));
                    nm.x = pending_release[lin] = reduced;
                }
                pending_norm[lin] = nm;
                release_inputs(i, n);
                continue;
            }
            TPX_CHECK(!pushed.count(n), "node " + n->name + ": its input was pushed for a fused all-reduce that its GEMV cannot sum");
        }
        if (profiling_) {
            cudaEvent_t a, b;
            CUDA_CHECK(cudaEventCreate(&a));
            CUDA_CHECK(cudaEventCreate(&b));
            std::string key = n->kind == Op::kLinear ? "linear " + n->name.substr(n->name.rfind('.') + 1) : n->op;
            pending_.push_back({key, {a, b}});
            CUDA_CHECK(cudaEventRecord(a, stream_));
        }
        switch (n->kind) {
        case Op::kEmbedding: {
            int64_t per = n->attr_int("vocab_per_rank");
            cuda::embedding({T, in(1)->shape[0], in(1)->shape[1], (int64_t)rank_ * per}, ids_, data(in(1)), make(n->out(), T), stream_);
            break;
        }
        case Op::kRmsnorm:
            cuda::rmsnorm(r, width(in(0)), (float)n->attr_double("eps"), data(in(0)), data(in(1)), make(n->out(), r), stream_);
            break;
        case Op::kAdd:
            cuda::add(r * width(in(0)), data(in(0)), data(in(1)), make(n->out(), r), stream_);
            break;
        case Op::kAddRmsnorm:
        case Op::kAllreduceAddRmsnorm: {
            if (residual_added.count(n)) {  // the GEMM before it added the residual
                const int64_t rr = rows.at(n->out(1));
                cuda::rmsnorm(rr, width(in(0)), (float)n->attr_double("eps"), data(n->out(1)), data(in(2)), make(n->out(0), rr), stream_);
                break;
            }
            int64_t w = width(in(0));
            const bf16* x = data(in(0));
            bf16* reduced = nullptr;
            if (n->kind == Op::kAllreduceAddRmsnorm && nccl_) {
                reduced = alloc(r * w);
                nccl_->all_reduce(x, reduced, r * w);
                x = reduced;
            }
            bf16* sum = make(n->out(1), r);
            cuda::add_rmsnorm(r, w, (float)n->attr_double("eps"), x, data(in(1)), sum, data(in(2)), make(n->out(0), r), stream_);
            if (reduced) release(reduced);
            break;
        }
        case Op::kLinear:
            if (fuse && exchange_of_.count(n) && !exchange_open &&
                nccl_->push_applies(in(1)->shape[1], in(1)->shape[0], data(in(0)), data(in(1))) && [&] {
                    const Node* norm = exchange_of_.at(n);  // the sum will be fused too
                    cuda::GemvNorm nm = norm_params(norm);
                    nm.sum = nccl_->exchange_in(0);
                    return cuda::gemv_fused_applies(width(n->out()), &nm, data(norm_of_.at(norm)->inputs[1]));
                }()) {
                // Its all-reduce is summed by the next GEMV's norm (cuda::ExchangeIn): no output here.
                nccl_->gemv_push(in(1)->shape[1], in(1)->shape[0], data(in(0)), data(in(1)), n->inputs.size() == 3 ? data(in(2)) : nullptr,
                                 exchanges);
                pushed[exchange_of_.at(n)] = exchanges++;
                exchange_open = true;
            } else if (fuse && fusions_.count(n) &&
                       (pending_norm.count(n) || cuda::gemv_fused_applies(width(in(0)), nullptr, data(in(1))))) {
                const DecodeFusion& f = fusions_.at(n);
                const cuda::GemvNorm* nm = pending_norm.count(n) ? &pending_norm.at(n) : nullptr;
                const bf16* x = nm ? nullptr : data(in(0));
                const bf16* bias = n->inputs.size() == 3 ? data(in(2)) : nullptr;
                cuda::GemvEpilogue epi = cuda::GemvEpilogue::kNone;
                cuda::GemvRopeKv rk;
                bf16* y = nullptr;
                if (f.swiglu) {
                    epi = cuda::GemvEpilogue::kSwiglu;
                    y = make(f.swiglu->out(), 1);
                    skip.insert(f.swiglu);
                } else if (f.split) {
                    epi = cuda::GemvEpilogue::kRopeKv;
                    auto& kv = kv_.at(f.attention->attr_int("layer"));
                    rk.heads = f.attention->attr_int("heads");
                    rk.kv_heads = f.attention->attr_int("kv_heads");
                    rk.head_dim = f.attention->attr_int("head_dim");
                    rk.max_seq = max_seq_;
                    rk.slot = slots_dev_;
                    rk.pos = positions_;
                    rk.inv_freq = inv_freq_.at(f.rope);
                    rk.k_cache = kv.first;
                    rk.v_cache = kv.second;
                    y = make(f.rope->out(0), 1);
                    skip.insert(f.split);
                    skip.insert(f.rope);
                    kv_written.insert(f.attention);
                } else {
                    y = make(n->out(), 1);
                }
                cuda::gemv_fused(in(1)->shape[1], in(1)->shape[0], x, data(in(1)), bias, y, nm, epi, f.split ? &rk : nullptr, stream_);
                if (nm && nm->sum.ll) exchange_open = false;
                if (pending_release.count(n)) release(pending_release.at(n));
            } else {
                const bf16* x = data(in(0));
                bf16* selected = nullptr;
                if (n->name == "lm_head" && select_rows) {
                    selected = alloc(R * width(in(0)));
                    cuda::gather_rows(R, width(in(0)), rows_, x, selected, stream_);
                    x = selected;
                    r = R;
                }
                const bf16* bias = n->inputs.size() == 3 ? data(in(2)) : nullptr;
                const cpu::LinearShape ls{r, in(1)->shape[1], in(1)->shape[0]};
                bool added = false;
                if (tuner_ && !selected && residual_epilogue_.count(n) && r >= cuda::kGemmTuneMinTokens) {
                    // y + residual straight into the norm's new residual; the norm then reads only that.
                    const Node* nm = residual_epilogue_.at(n);
                    bf16* sum = make(nm->out(1), r);
                    added = tuner_->matmul(ls, x, data(in(1)), sum, stream_, data(nm->inputs[1]));
                    if (added) residual_added.insert(nm);
                    else release(sum), buf.erase(nm->out(1));
                }
                if (!added) cuda::linear(cublas_, ls, x, data(in(1)), bias, make(n->out(), r), stream_, true, tuner_.get());
                if (selected) release(selected);
            }
            break;
        case Op::kSplit: {
            const auto& sizes = std::get<std::vector<int64_t>>(n->attrs.at("sizes"));
            int64_t total = width(in(0)), offset = 0;
            for (size_t k = 0; k < sizes.size(); ++k) {
                if (split_views_.count(n)) {
                    rows[n->out(k)] = r;
                    buf[n->out(k)] = data(in(0)) + offset;
                    stride[n->out(k)] = total;
                    view_of[n->out(k)] = in(0);
                    offset += sizes[k];
                    continue;
                }
                bf16* y = make(n->out(k), r);
                CUDA_CHECK(cudaMemcpy2DAsync(y, sizes[k] * sizeof(bf16), data(in(0)) + offset, total * sizeof(bf16),
                                             sizes[k] * sizeof(bf16), r, cudaMemcpyDeviceToDevice, stream_));
                offset += sizes[k];
            }
            break;
        }
        case Op::kRope: {
            cpu::RopeParams p = rope_params(*n);
            bf16* q = make(n->out(0), r);
            bf16* k = make(n->out(1), r);
            int64_t in_stride = stride.count(in(0)) ? stride[in(0)] : 0;
            TPX_CHECK(in_stride == (stride.count(in(1)) ? stride[in(1)] : 0), "rope: q and k views of different strides");
            cuda::rope(p, r, positions_, inv_freq_.at(n), data(in(0)), data(in(1)), q, k, stream_, in_stride);
            break;
        }
        case Op::kAttention: {
            auto& kv = kv_.at(n->attr_int("layer"));
            cpu::AttentionShape s{r, n->attr_int("heads"), n->attr_int("kv_heads"), n->attr_int("head_dim"), max_seq_,
                                  n->attr_int("sliding_window")};
            const bool written = kv_written.count(n) > 0;  // by the QKV GEMV
            cuda::attention(s, slots_dev_, positions_, data(in(0)), written ? nullptr : data(in(1)), written ? nullptr : data(in(2)),
                            kv.first, kv.second, make(n->out(), r), stream_, stride.count(in(1)) ? stride[in(1)] : 0,
                            stride.count(in(2)) ? stride[in(2)] : 0, cublas_, &segments_);
            break;
        }
        case Op::kSiluMul:
            if (n->inputs.size() == 1) cuda::silu_mul_fused(r, width(n->out()), data(in(0)), make(n->out(), r), stream_);
            else cuda::silu_mul(r, width(n->out()), data(in(0)), data(in(1)), make(n->out(), r), stream_);
            break;
        case Op::kMoe: {
            // Up to moe_sparse_max_tokens_ tokens, sparse (kernels/cuda/moe.cu); from
            // moe_grouped_min_tokens_ outside a graph, by expert over each one's tokens
            // (moe_grouped, a host round trip); else dense over the local experts: every token
            // through every local expert by cuBLAS, weighted by its routing weight (0 where not chosen).
            const Value* w2 = n->inputs.back();
            int64_t local = w2->shape[0], hidden = w2->shape[1], inter = w2->shape[2];
            int64_t first = ((int64_t)rank_ / n->attr_int("group_size")) * n->attr_int("experts_per_group");
            cpu::MoeShape s{r, hidden, n->attr_int("experts"), n->attr_int("top_k"), first, local, inter};
            cuda::moe_routing(s, data(in(1)), moe_weights_, stream_);
            bf16* y = make(n->out(), r);
            const bool fused = n->inputs.size() == 4;
            const bf16* w_gate = data(in(2));
            const bf16* w_up = fused ? w_gate + inter * hidden : data(in(3));
            const cuda::MoeExperts experts{w_gate, w_up, (fused ? 2 : 1) * inter * hidden, data(w2)};
            if (r <= moe_sparse_max_tokens_ && cuda::moe_sparse_supported(s, data(in(0)), experts)) {
                // Few tokens: each chosen expert's weights read once, the others not at all.
                bf16* act = alloc(local * r * inter);
                bf16* part = alloc(local * r * hidden);
                cuda::moe_sparse(s, moe_weights_, data(in(0)), experts, act, part, y, stream_);
                release(act);
                release(part);
            } else if (r >= moe_grouped_min_tokens_ && !arena && !arena_peak) {
                // A step that no graph replays (prefill; decode without graphs): expert by expert,
                // each over its own tokens. (A graph's steps, and the eager step that sizes their
                // block, keep the dense form: the same allocations, no host round trip.)
                cuda::moe_grouped(cublas_, s, moe_weights_, data(in(0)), experts, y, stream_,
                                  [&] { sync_with_watchdog(stream_, nccl_, timeout_s_); });
            } else {
                CUDA_CHECK(cudaMemsetAsync(y, 0, r * hidden * sizeof(bf16), stream_));
                bf16* gu = alloc(r * 2 * inter);
                bf16* act = alloc(r * inter);
                bf16* part = alloc(r * hidden);
                for (int64_t e = 0; e < local; ++e) {
                    if (fused) {
                        cuda::linear(cublas_, {r, hidden, 2 * inter}, data(in(0)), w_gate + e * 2 * inter * hidden, nullptr, gu, stream_);
                        cuda::silu_mul_fused(r, inter, gu, act, stream_);
                    } else {
                        cuda::linear(cublas_, {r, hidden, inter}, data(in(0)), w_gate + e * inter * hidden, nullptr, gu, stream_);
                        cuda::linear(cublas_, {r, hidden, inter}, data(in(0)), w_up + e * inter * hidden, nullptr, gu + r * inter, stream_);
                        cuda::silu_mul(r, inter, gu, gu + r * inter, act, stream_);
                    }
                    cuda::linear(cublas_, {r, inter, hidden}, act, data(w2) + e * hidden * inter, nullptr, part, stream_);
                    cuda::scale_add(r, hidden, moe_weights_ + e, local, part, y, stream_);
                }
                release(gu);
                release(act);
                release(part);
            }
            break;
        }
        case Op::kAllReduce: {
            bf16* y = make(n->out(), r);
            if (nccl_) nccl_->all_reduce(data(in(0)), y, r * width(in(0)));
            else CUDA_CHECK(cudaMemcpyAsync(y, data(in(0)), r * width(in(0)) * sizeof(bf16), cudaMemcpyDeviceToDevice, stream_));
            break;
        }
        case Op::kAllGather: {
            int64_t local = width(in(0)), world = n->attr_int("world"), out_width = width(n->out());
            bf16* gathered = alloc(world * r * local);
            if (nccl_) nccl_->all_gather(data(in(0)), r * local, gathered);
            else CUDA_CHECK(cudaMemcpyAsync(gathered, data(in(0)), r * local * sizeof(bf16), cudaMemcpyDeviceToDevice, stream_));
            bf16* y = make(n->out(), r);
            // [rank][row][local] -> [row][rank * local], trimmed to the valid vocabulary.
            for (int64_t q = 0; q < world; ++q) {
                int64_t n_copy = std::min(local, out_width - q * local);
                if (n_copy > 0)
                    CUDA_CHECK(cudaMemcpy2DAsync(y + q * local, out_width * sizeof(bf16), gathered + q * r * local, local * sizeof(bf16),
                                                 n_copy * sizeof(bf16), r, cudaMemcpyDeviceToDevice, stream_));
            }
            release(gathered);
            break;
        }
        case Op::kInput:
        case Op::kParam:
            break;
        case Op::kUnknown:
            throw Error("the CUDA backend has no op '" + n->op + "' (node " + n->name + ")");
        }
        if (profiling_) CUDA_CHECK(cudaEventRecord(pending_.back().second.second, stream_));
        release_inputs(i, n);
    }
    TPX_CHECK(!exchange_open, "a fused all-reduce was pushed and never summed");
    if (exchanges) nccl_->exchange_advance(exchanges);
    if (exchanges) fused_all_reduces_ = (int)exchanges;
    const Value* out = graph_.outputs().at(0);
    cuda::bf16_to_f32(R * vocab_, buf.at(out), logits_, stream_);
    // Everything allocated here is freed here (outputs nobody reads included): a captured
    // graph must not leave allocations live between replays.
    for (auto& [v, p] : buf)
        if (!stride.count(v)) release(p);
    if (arena_peak) *arena_peak = plan.peak();
}

}  // namespace tpx
