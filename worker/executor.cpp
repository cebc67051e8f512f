// The CPU executor: one switch over op kinds, each a call into kernels/cpu. Buffers are
// freed after their last use so that a long prefill does not hold every activation.
#include "worker/executor.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "kernels/cpu/ops.h"

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

CpuExecutor::CpuExecutor(const Graph& graph, Communicator& comm, std::map<std::string, std::vector<float>> weights,
                         int64_t slots, int64_t max_seq)
    : graph_(graph), comm_(comm), weights_(std::move(weights)), slots_(slots), max_seq_(max_seq) {
    std::vector<Node*> nodes = graph_.nodes();
    for (size_t i = 0; i < nodes.size(); ++i) {
        for (Value* v : nodes[i]->inputs) last_use_[v] = i;
        if (nodes[i]->kind == Op::kAttention) {
            int64_t width = nodes[i]->attr_int("kv_heads") * nodes[i]->attr_int("head_dim");
            int64_t layer = nodes[i]->attr_int("layer");
            k_cache_[layer].assign(slots * max_seq * width, 0.0f);
            v_cache_[layer].assign(slots * max_seq * width, 0.0f);
        }
    }
    for (Value* out : graph_.outputs()) {
        last_use_[out] = nodes.size();
        vocab_ = out->shape.back();
    }
}

int64_t CpuExecutor::kv_cache_bytes() const {
    int64_t n = 0;
    for (auto& [layer, c] : k_cache_) n += (int64_t)c.size() * 2 * (int64_t)sizeof(float);
    return n;
}

std::vector<float> CpuExecutor::forward(const TokenBatch& batch) {
    const int64_t T = (int64_t)batch.ids.size();
    check_batch(batch, slots_, max_seq_);
    std::map<const Value*, std::vector<float>> buf;
    std::map<const Value*, int64_t> rows;  // tokens per activation (fewer after the logit-row selection)
    auto width = [](const Value* v) { return v->shape.back(); };
    auto data = [&](const Value* v) -> float* {
        if (v->producer && v->producer->kind == Op::kParam) return weights_.at(v->producer->name).data();
        return buf.at(v).data();
    };
    auto make = [&](const Value* v, int64_t r) -> float* {
        rows[v] = r;
        buf[v].assign(r * width(v), 0.0f);
        return buf[v].data();
    };
    std::vector<Node*> nodes = graph_.nodes();
    for (size_t i = 0; i < nodes.size(); ++i) {
        const Node* n = nodes[i];
        auto in = [&](size_t k) { return n->inputs[k]; };
        int64_t r = n->inputs.empty() ? T : (rows.count(in(0)) ? rows[in(0)] : T);
        switch (n->kind) {
        case Op::kInput:
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
        case Op::kLinear: {
            const float* x = data(in(0));
            std::vector<float> selected;
            if (n->name == "lm_head" && !batch.logit_rows.empty()) {
                // Only the rows whose logits are wanted go through the vocabulary GEMM.
                int64_t k = width(in(0));
                selected.resize(batch.logit_rows.size() * k);
                for (size_t j = 0; j < batch.logit_rows.size(); ++j)
                    std::memcpy(&selected[j * k], x + batch.logit_rows[j] * k, k * sizeof(float));
                x = selected.data();
                r = (int64_t)batch.logit_rows.size();
            }
            const float* bias = n->inputs.size() == 3 ? data(in(2)) : nullptr;
            cpu::linear({r, in(1)->shape[1], in(1)->shape[0]}, x, data(in(1)), bias, make(n->out(), r));
            break;
        }
        case Op::kSplit: {
            const auto& sizes = std::get<std::vector<int64_t>>(n->attrs.at("sizes"));
            int64_t total = width(in(0)), offset = 0;
            const float* x = data(in(0));
            for (size_t k = 0; k < sizes.size(); ++k) {
                float* y = make(n->out(k), r);
                for (int64_t t = 0; t < r; ++t) std::memcpy(y + t * sizes[k], x + t * total + offset, sizes[k] * sizeof(float));
                offset += sizes[k];
            }
            break;
        }
        case Op::kRope: {
            cpu::RopeParams p = rope_params(*n);
            float* q = make(n->out(0), r);
            float* k = make(n->out(1), r);
            std::memcpy(q, data(in(0)), r * width(in(0)) * sizeof(float));
            std::memcpy(k, data(in(1)), r * width(in(1)) * sizeof(float));
            cpu::rope(p, r, batch.positions.data(), q, k);
            break;
        }
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
            const float* w13 = nullptr;
            if (n->inputs.size() == 4) {
                w13 = data(in(2));
            } else {  // w1 and w3 separate (fuse_gate_up disabled): interleave once per expert
                auto& fused = fused_w13_[n];
                if (fused.empty()) {
                    int64_t block = inter * hidden;
                    for (int64_t e = 0; e < local; ++e) {
                        fused.insert(fused.end(), data(in(2)) + e * block, data(in(2)) + (e + 1) * block);
                        fused.insert(fused.end(), data(in(3)) + e * block, data(in(3)) + (e + 1) * block);
                    }
                }
                w13 = fused.data();
            }
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
        case Op::kAllGather: {
            int64_t local = width(in(0)), world = n->attr_int("world"), out_width = width(n->out());
            std::vector<float> gathered(world * r * local);
            comm_.all_gather(data(in(0)), r * local, gathered.data());
            float* y = make(n->out(), r);
            // [rank][row][local] -> [row][rank * local], trimmed to the valid vocabulary.
            for (int64_t t = 0; t < r; ++t)
                for (int64_t q = 0; q < world; ++q) {
                    int64_t start = q * local, n_copy = std::min(local, out_width - start);
                    if (n_copy > 0) std::memcpy(y + t * out_width + start, &gathered[(q * r + t) * local], n_copy * sizeof(float));
                }
            break;
        }
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
