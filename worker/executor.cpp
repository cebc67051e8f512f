// The CPU executor: one switch over op kinds, each a call into kernels/cpu. Buffers are
// freed after their last use so that a long prefill does not hold every activation.
#include "worker/executor.h"

#include <algorithm>
#include <cstring>

#include "common/check.h"
#include "common/error.h"
#include "kernels/cpu/ops.h"
#include "sharding/pipeline.h"
#include "sharding/steps.h"
#include "worker/weights.h"

namespace tpx {

void check_batch(const TokenBatch& batch, int64_t slots, int64_t max_seq) {
    for (size_t i = 0; i < batch.ids.size(); ++i)
        if (batch.slots[i] < 0 || batch.slots[i] >= slots || batch.positions[i] < 0 || batch.positions[i] >= max_seq)
            throw Error("token " + std::to_string(i) + " at slot " + std::to_string(batch.slots[i]) + ", position " +
                        std::to_string(batch.positions[i]) + " is outside the KV cache (" + std::to_string(slots) + " slots of " +
                        std::to_string(max_seq) + ")");
}

cpu::RopeParams rope_params(const Node& n) {
    cpu::RopeParams p{n.attr_int("heads"), n.attr_int("kv_heads"), n.attr_int("head_dim"), n.attr_double("theta")};
    p.llama3 = n.attr_str("rope_type") == "llama3";
    p.factor = n.attr_double("factor");
    p.low_freq_factor = n.attr_double("low_freq_factor");
    p.high_freq_factor = n.attr_double("high_freq_factor");
    p.original_max_position_embeddings = n.attr_int("original_max_position_embeddings");
    const std::string& fd = n.attr_str("freq_dtype");
    p.freq_dtype = fd == "bfloat16" ? cpu::RopeFreqDtype::kBF16 : fd == "float16" ? cpu::RopeFreqDtype::kF16 : cpu::RopeFreqDtype::kF32;
    return p;
}

std::vector<int32_t> Executor::forward_argmax(const TokenBatch& batch) {
    std::vector<float> logits = forward(batch);
    int64_t v = vocab();
    std::vector<int32_t> ids(logits.size() / v);
    for (size_t r = 0; r < ids.size(); ++r) ids[r] = (int32_t)cpu::argmax(&logits[r * v], v);
    return ids;
}

std::vector<int32_t> Executor::forward_draw(const TokenBatch& batch, const std::vector<cpu::DrawParams>& draws,
                                            const std::vector<int64_t>&, const float** logits) {
    *logits = forward_view(batch);
    const int64_t v = vocab(), R = batch.rows();
    TPX_CHECK((int64_t)draws.size() == R, "forward_draw: " + std::to_string(draws.size()) + " draws for " + std::to_string(R) + " rows");
    std::vector<int32_t> ids((size_t)R);
    for (int64_t r = 0; r < R; ++r) ids[r] = (int32_t)cpu::draw_token(*logits + r * v, v, draws[r]);
    return ids;
}

CpuExecutor::CpuExecutor(const Graph& graph, Communicator& comm, std::map<std::string, std::vector<float>> weights,
                         const KvCacheLayout& kv)
    : graph_(graph), comm_(comm), weights_(std::move(weights)), slots_(kv.slots), max_seq_(kv.max_seq) {
    std::vector<Node*> nodes = graph_.nodes();
    last_use_ = last_uses(graph_, nodes);
    for (const KvLayer& l : kv.layers) {
        k_cache_[l.layer].assign(kv.elems(l), 0.0f);
        v_cache_[l.layer].assign(kv.elems(l), 0.0f);
    }
    for (Value* out : graph_.outputs()) vocab_ = out->shape.back();
}

int64_t CpuExecutor::kv_cache_bytes() const {
    int64_t n = 0;
    for (auto& [layer, c] : k_cache_) n += (int64_t)c.size() * 2 * (int64_t)sizeof(float);
    return n;
}

void CpuExecutor::reload_weights(Checkpoint& ckpt, int rank) {
    fused_w13_.clear();  // built from the old w1 and w3 on first use
    read_host_weights(graph_, rank, ckpt, weights_);
}

void CpuExecutor::clear_kv_cache() {
    for (auto& [layer, c] : k_cache_) std::fill(c.begin(), c.end(), 0.0f);
    for (auto& [layer, c] : v_cache_) std::fill(c.begin(), c.end(), 0.0f);
}

namespace {

// One forward's activations (fp32, host), with their rows (fewer after the logit-row selection).
struct HostBuffers {
    const std::map<std::string, std::vector<float>>& weights;
    std::map<const Value*, std::vector<float>> buf;
    std::map<const Value*, int64_t> rows;

    float* data(const Value* v) {
        if (v->producer && v->producer->kind == Op::kParam) return const_cast<float*>(weights.at(v->producer->name).data());
        return buf.at(v).data();
    }
    float* make(const Value* v, int64_t r) {
        rows[v] = r;
        buf[v].assign(r * v->shape.back(), 0.0f);
        return buf[v].data();
    }
};

// [rank][row][local] -> [row][rank * local], trimmed to the valid vocabulary (out_width).
void rank_major_to_rows(const float* gathered, int64_t r, int64_t local, int64_t world, int64_t out_width, float* y) {
    for (int64_t t = 0; t < r; ++t)
        for (int64_t q = 0; q < world; ++q) {
            int64_t start = q * local, n_copy = std::min(local, out_width - start);
            if (n_copy > 0) std::memcpy(y + t * out_width + start, &gathered[(q * r + t) * local], n_copy * sizeof(float));
        }
}

// linear; lm_head takes only the rows whose logits are wanted through the vocabulary GEMM.
void run_linear(HostBuffers& hb, const Node* n, int64_t r, const std::vector<int64_t>& logit_rows) {
    const float* x = hb.data(n->inputs[0]);
    std::vector<float> selected;
    if (n->name == "lm_head" && !logit_rows.empty()) {
        int64_t k = n->inputs[0]->shape.back();
        selected.resize(logit_rows.size() * k);
        for (size_t j = 0; j < logit_rows.size(); ++j) std::memcpy(&selected[j * k], x + logit_rows[j] * k, k * sizeof(float));
        x = selected.data();
        r = (int64_t)logit_rows.size();
    }
    const float* bias = n->inputs.size() == 3 ? hb.data(n->inputs[2]) : nullptr;
    const Value* w = n->inputs[1];
    cpu::linear({r, w->shape[1], w->shape[0]}, x, hb.data(w), bias, hb.make(n->out(), r));
}

void split_columns(HostBuffers& hb, const Node* n, int64_t r) {
    const auto& sizes = std::get<std::vector<int64_t>>(n->attrs.at("sizes"));
    int64_t total = n->inputs[0]->shape.back(), offset = 0;
    const float* x = hb.data(n->inputs[0]);
    for (size_t k = 0; k < sizes.size(); ++k) {
        float* y = hb.make(n->out(k), r);
        for (int64_t t = 0; t < r; ++t) std::memcpy(y + t * sizes[k], x + t * total + offset, sizes[k] * sizeof(float));
        offset += sizes[k];
    }
}

// q and k rotated into the node's own outputs (its inputs may still be read by others).
void rotate_qk(HostBuffers& hb, const Node* n, int64_t r, const int32_t* positions) {
    const Value *q_in = n->inputs[0], *k_in = n->inputs[1];
    float* q = hb.make(n->out(0), r);
    float* k = hb.make(n->out(1), r);
    std::memcpy(q, hb.data(q_in), r * q_in->shape.back() * sizeof(float));
    std::memcpy(k, hb.data(k_in), r * k_in->shape.back() * sizeof(float));
    cpu::rope(rope_params(*n), r, positions, q, k);
}

void all_gather_rows(HostBuffers& hb, Communicator& comm, const Node* n, int64_t r) {
    int64_t local = n->inputs[0]->shape.back(), world = n->attr_int("world"), out_width = n->out()->shape.back();
    std::vector<float> gathered(world * r * local);
    comm.all_gather(hb.data(n->inputs[0]), r * local, gathered.data());
    rank_major_to_rows(gathered.data(), r, local, world, out_width, hb.make(n->out(), r));
}

}  // namespace

// w1 and w3 separate (fuse_gate_up disabled): interleaved once per expert, as the fused w13.
const float* CpuExecutor::interleaved_w13(const Node* n, const float* w1, const float* w3) {
    auto& fused = fused_w13_[n];
    if (fused.empty()) {
        const Value* w2 = n->inputs.back();
        int64_t local = w2->shape[0], block = w2->shape[1] * w2->shape[2];
        for (int64_t e = 0; e < local; ++e) {
            fused.insert(fused.end(), w1 + e * block, w1 + (e + 1) * block);
            fused.insert(fused.end(), w3 + e * block, w3 + (e + 1) * block);
        }
    }
    return fused.data();
}

std::vector<float> CpuExecutor::forward_stage(const TokenBatch& batch, const float* hidden) {
    const int64_t T = (int64_t)batch.ids.size();
    check_batch(batch, slots_, max_seq_);
    HostBuffers hb{weights_, {}, {}};
    std::map<const Value*, std::vector<float>>& buf = hb.buf;
    std::map<const Value*, int64_t>& rows = hb.rows;
    auto width = [](const Value* v) { return v->shape.back(); };
    auto data = [&](const Value* v) { return hb.data(v); };
    auto make = [&](const Value* v, int64_t r) { return hb.make(v, r); };
    std::vector<Node*> nodes = graph_.nodes();
    for (size_t i = 0; i < nodes.size(); ++i) {
        const Node* n = nodes[i];
        auto in = [&](size_t k) { return n->inputs[k]; };
        int64_t r = n->inputs.empty() ? T : (rows.count(in(0)) ? rows[in(0)] : T);
        switch (n->kind) {
        case Op::kInput:
            if (n->name == kStageInput) {
                TPX_CHECK(hidden != nullptr, "the stage's graph starts at " + n->name + " but no hidden state was given");
                std::memcpy(make(n->out(), T), hidden, T * width(n->out()) * sizeof(float));
            }
            continue;
        case Op::kParam:
            continue;
        case Op::kEmbedding: {
            int64_t per = n->attr_int("vocab_per_rank");
            cpu::embedding({T, in(1)->shape[0], in(1)->shape[1], (int64_t)comm_.rank() * per}, batch.ids.data(), data(in(1)),
                           make(n->out(), T));
            break;
        }
        case Op::kRmsnorm:
            cpu::rmsnorm(r, width(in(0)), (float)n->attr_double("eps"), data(in(0)), data(in(1)), make(n->out(), r));
            break;
        case Op::kAdd: {
            float* y = make(n->out(), r);
            const float *a = data(in(0)), *b = data(in(1));
            for (int64_t k = 0; k < r * width(n->out()); ++k) y[k] = a[k] + b[k];
            break;
        }
        case Op::kAddRmsnorm:
        case Op::kAllreduceAddRmsnorm: {
            int64_t w = width(in(0));
            std::vector<float> x(data(in(0)), data(in(0)) + r * w);
            if (n->kind == Op::kAllreduceAddRmsnorm) comm_.all_reduce_sum(x.data(), x.size());
            float* sum = make(n->out(1), r);
            std::memcpy(sum, data(in(1)), r * w * sizeof(float));
            cpu::add_rmsnorm(r, w, (float)n->attr_double("eps"), x.data(), sum, data(in(2)), make(n->out(0), r));
            break;
        }
        case Op::kLinear:
            run_linear(hb, n, r, batch.logit_rows);
            break;
        case Op::kSplit:
            split_columns(hb, n, r);
            break;
        case Op::kRope:
            rotate_qk(hb, n, r, batch.positions.data());
            break;
        case Op::kAttention: {
            int64_t layer = n->attr_int("layer");
            cpu::AttentionShape s{r, n->attr_int("heads"), n->attr_int("kv_heads"), n->attr_int("head_dim"), max_seq_,
                                  n->attr_int("sliding_window")};
            cpu::attention(s, batch.slots.data(), batch.positions.data(), data(in(0)), data(in(1)), data(in(2)),
                           k_cache_.at(layer).data(), v_cache_.at(layer).data(), make(n->out(), r));
            break;
        }
        case Op::kSiluMul:
            if (n->inputs.size() == 1) cpu::silu_mul_fused(r, width(n->out()), data(in(0)), make(n->out(), r));
            else cpu::silu_mul(r, width(n->out()), data(in(0)), data(in(1)), make(n->out(), r));
            break;
        case Op::kMoe: {
            const Value* w2 = n->inputs.back();
            int64_t local = w2->shape[0], hidden = w2->shape[1], inter = w2->shape[2];
            const float* w13 = n->inputs.size() == 4 ? data(in(2)) : interleaved_w13(n, data(in(2)), data(in(3)));
            int64_t first = (comm_.rank() / n->attr_int("group_size")) * n->attr_int("experts_per_group");
            cpu::MoeShape s{r, hidden, n->attr_int("experts"), n->attr_int("top_k"), first, local, inter};
            cpu::moe(s, data(in(0)), data(in(1)), w13, data(w2), make(n->out(), r));
            break;
        }
        case Op::kAllReduce: {
            float* y = make(n->out(), r);
            std::memcpy(y, data(in(0)), r * width(in(0)) * sizeof(float));
            comm_.all_reduce_sum(y, r * width(in(0)));
            break;
        }
        case Op::kAllGather:
            all_gather_rows(hb, comm_, n, r);
            break;
        case Op::kUnknown:
            throw Error("the CPU backend has no op '" + n->op + "' (node " + n->name + ")");
        }
        for (Value* v : n->inputs)
            if (last_use_[v] == i && buf.count(v)) buf.erase(v);
    }
    const Value* out = graph_.outputs().at(0);
    return std::move(buf.at(out));
}

}  // namespace tpx
