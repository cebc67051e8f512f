// Graph construction for the supported decoder architectures. One function per block keeps
// the tensor names next to the ops that use them.
#include "sharding/factory.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <set>

#include "common/error.h"
#include "loader/checkpoint.h"

namespace tpx {
namespace {

struct Builder {
    const ModelConfig& c;
    std::string dtype;
    Graph g;

    // A parameter made of one checkpoint tensor.
    Value* param(const std::string& name, const std::string& tensor, const Shape& shape, SplitRule rule, int64_t granule = 1) {
        auto spec = std::make_shared<ParamSpec>();
        spec->segments.push_back(Segment{tensor, shape, rule, granule, -1, -1, 0, {}});
        return g.add_param(name, shape, spec, dtype)->out();
    }

    // A stacked [E, rows, cols] parameter made of one tensor per expert.
    Value* experts(const std::string& name, const std::string& prefix, const std::string& suffix, const Shape& per_expert, SplitRule rule) {
        auto spec = std::make_shared<ParamSpec>();
        for (int64_t e = 0; e < c.num_experts; ++e)
            spec->segments.push_back(Segment{prefix + std::to_string(e) + suffix, per_expert, rule, 1, e, -1, 0, {}});
        spec->stack = {c.num_experts};
        Shape shape = {c.num_experts, per_expert[0], per_expert[1]};
        return g.add_param(name, shape, spec, dtype)->out();
    }

    Node* linear(const std::string& name, Value* x, Value* w, Value* b, const std::string& tp_mode, const std::string& layer_type) {
        std::vector<Value*> ins = {x, w};
        if (b) ins.push_back(b);
        Node* n = g.add("linear", name, ins, {{kTokens, w->shape[0]}});
        n->hints = {{"tp_mode", tp_mode}, {"layer_type", layer_type}};
        if (layer_type == "attention") n->hints["min_local_shape"] = std::to_string(c.head_dim);
        return n;
    }

    Value* rmsnorm(const std::string& name, Value* x, const std::string& tensor) {
        Value* w = param(name + ".weight", tensor, {c.hidden_size}, SplitRule::kReplicate);
        return g.add("rmsnorm", name, {x, w}, {x->shape}, {{"eps", c.rms_norm_eps}})->out();
    }

    Value* attention(int layer, Value* x, Value* positions) {
        std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
        std::string n = "layers." + std::to_string(layer) + ".attn.";
        int64_t hd = c.head_dim, q_out = c.num_heads * hd, kv_out = c.num_kv_heads * hd;
        auto bias = [&](const char* proj, int64_t out, SplitRule rule) -> Value* {
            if (!c.qkv_bias) return nullptr;
            return param(n + proj + ".bias", p + proj + ".bias", {out}, rule, hd);
        };
        Value* q = linear(n + "q_proj", x, param(n + "q_proj.weight", p + "q_proj.weight", {q_out, c.hidden_size}, SplitRule::kColwise, hd),
                          bias("q_proj", q_out, SplitRule::kColwise), "colwise", "attention")->out();
        Value* k = linear(n + "k_proj", x, param(n + "k_proj.weight", p + "k_proj.weight", {kv_out, c.hidden_size}, SplitRule::kColwiseKv, hd),
                          bias("k_proj", kv_out, SplitRule::kColwiseKv), "colwise_kv", "attention")->out();
        Value* v = linear(n + "v_proj", x, param(n + "v_proj.weight", p + "v_proj.weight", {kv_out, c.hidden_size}, SplitRule::kColwiseKv, hd),
                          bias("v_proj", kv_out, SplitRule::kColwiseKv), "colwise_kv", "attention")->out();
        std::map<std::string, Attr> heads = {{"heads", c.num_heads}, {"kv_heads", c.num_kv_heads}, {"head_dim", hd}};
        auto rope_attrs = heads;
        rope_attrs.insert({{"theta", c.rope.theta}, {"rope_type", c.rope.type}, {"factor", c.rope.factor},
                           {"low_freq_factor", c.rope.low_freq_factor}, {"high_freq_factor", c.rope.high_freq_factor},
                           {"original_max_position_embeddings", c.rope.original_max_position_embeddings},
                           {"freq_dtype", c.rope.freq_dtype}});
        Node* rope = g.add("rope", n + "rope", {q, k, positions}, {q->shape, k->shape}, rope_attrs);
        auto attn_attrs = heads;
        attn_attrs.insert({{"layer", (int64_t)layer}, {"sliding_window", c.sliding_window}});
        Value* a = g.add("attention", n + "sdpa", {rope->out(0), rope->out(1), v}, {q->shape}, attn_attrs)->out();
        if (c.o_bias) throw Error(c.file + ": attention_bias with a bias on o_proj is not supported yet", kExitBadInput);
        return linear(n + "o_proj", a, param(n + "o_proj.weight", p + "o_proj.weight", {c.hidden_size, q_out}, SplitRule::kRowwise), nullptr,
                      "rowwise", "attention")->out();
    }

    Value* mlp(int layer, Value* x) {
        std::string p = "model.layers." + std::to_string(layer) + ".mlp.";
        std::string n = "layers." + std::to_string(layer) + ".mlp.";
        int64_t H = c.hidden_size, I = c.intermediate_size;
        Value* gate = linear(n + "gate_proj", x, param(n + "gate_proj.weight", p + "gate_proj.weight", {I, H}, SplitRule::kColwise), nullptr, "colwise", "mlp")->out();
        Value* up = linear(n + "up_proj", x, param(n + "up_proj.weight", p + "up_proj.weight", {I, H}, SplitRule::kColwise), nullptr, "colwise", "mlp")->out();
        Value* act = g.add("silu_mul", n + "act", {gate, up}, {gate->shape})->out();
        return linear(n + "down_proj", act, param(n + "down_proj.weight", p + "down_proj.weight", {H, I}, SplitRule::kRowwise), nullptr, "rowwise", "mlp")->out();
    }

    // A stacked [E, rows, cols] parameter made of rows [offset, offset + rows) of every entry of
    // one stacked checkpoint tensor of shape `whole` (transformers 5's experts.gate_up_proj).
    Value* stacked(const std::string& name, const std::string& tensor, const Shape& whole, int64_t offset, const Shape& per_expert,
                   SplitRule rule) {
        auto spec = std::make_shared<ParamSpec>();
        for (int64_t e = 0; e < c.num_experts; ++e) spec->segments.push_back(Segment{tensor, per_expert, rule, 1, e, e, offset, whole});
        spec->stack = {c.num_experts};
        return g.add_param(name, {c.num_experts, per_expert[0], per_expert[1]}, spec, dtype)->out();
    }

    Value* moe(int layer, Value* x) {
        const std::string L = "model.layers." + std::to_string(layer);
        std::string p = L + (c.stacked_experts ? ".mlp." : ".block_sparse_moe.");
        std::string n = "layers." + std::to_string(layer) + ".moe.";
        int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
        Node* router = linear(n + "router", x, param(n + "gate.weight", p + "gate.weight", {c.num_experts, H}, SplitRule::kReplicate), nullptr,
                              "replicate", "moe");
        Value *w1, *w3, *w2;
        if (c.stacked_experts) {  // gate rows first in gate_up_proj, as transformers 5 splits it
            w1 = stacked(n + "w1", p + "experts.gate_up_proj", {E, 2 * I, H}, 0, {I, H}, SplitRule::kExpertColwise);
            w3 = stacked(n + "w3", p + "experts.gate_up_proj", {E, 2 * I, H}, I, {I, H}, SplitRule::kExpertColwise);
            w2 = stacked(n + "w2", p + "experts.down_proj", {E, H, I}, 0, {H, I}, SplitRule::kExpertRowwise);
        } else {
            w1 = experts(n + "w1", p + "experts.", ".w1.weight", {I, H}, SplitRule::kExpertColwise);
            w3 = experts(n + "w3", p + "experts.", ".w3.weight", {I, H}, SplitRule::kExpertColwise);
            w2 = experts(n + "w2", p + "experts.", ".w2.weight", {H, I}, SplitRule::kExpertRowwise);
        }
        Node* m = g.add("moe", n + "experts", {x, router->out(), w1, w3, w2}, {x->shape},
                        {{"experts", c.num_experts}, {"top_k", c.experts_per_token}, {"layer", (int64_t)layer}});
        m->hints = {{"tp_mode", "moe"}, {"layer_type", "moe"}};
        return m->out();
    }
};

}  // namespace

Graph build_model(const ModelConfig& c, const std::string& weight_dtype) {
    Builder b{c, weight_dtype, Graph()};
    Graph& g = b.g;
    Value* ids = g.add("input", "input_ids", {}, {{kTokens}})->out();
    ids->dtype = "int32";
    Value* positions = g.add("input", "positions", {}, {{kTokens}})->out();
    positions->dtype = "int32";

    Value* table = b.param("embed_tokens.weight", "model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, SplitRule::kVocab);
    Node* embed = g.add("embedding", "embed_tokens", {ids, table}, {{kTokens, c.hidden_size}}, {{"vocab", c.vocab_size}});
    embed->hints = {{"tp_mode", "vocab"}, {"layer_type", "embedding"}};
    Value* x = embed->out();
    for (int i = 0; i < c.num_layers; ++i) {
        std::string p = "model.layers." + std::to_string(i) + ".";
        std::string n = "layers." + std::to_string(i) + ".";
        Value* h = b.rmsnorm(n + "input_layernorm", x, p + "input_layernorm.weight");
        x = g.add("add", n + "attn_residual", {x, b.attention(i, h, positions)}, {x->shape})->out();
        h = b.rmsnorm(n + "post_attention_layernorm", x, p + "post_attention_layernorm.weight");
        x = g.add("add", n + "mlp_residual", {x, c.is_moe() ? b.moe(i, h) : b.mlp(i, h)}, {x->shape})->out();
    }
    Value* h = b.rmsnorm("norm", x, "model.norm.weight");
    std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    Value* w = b.param("lm_head.weight", head, {c.vocab_size, c.hidden_size}, SplitRule::kVocab);
    Node* lm = b.linear("lm_head", h, w, nullptr, "vocab", "lm_head");
    g.mark_output(lm->out());
    return std::move(b.g);
}

void check_against_checkpoint(const Graph& graph, const Checkpoint& ckpt) {
    for (Node* n : graph.nodes()) {
        if (!n->param) continue;
        for (const Segment& s : n->param->segments) {
            const TensorInfo* t = ckpt.find(s.tensor);
            if (!t) {
                // A quantized linear's parts (GPTQ's qweight, FP8's scales) without config.json's
                // quantization_config: the weight's own name is absent, and that is why.
                const std::string stem = s.tensor.size() > 7 && s.tensor.compare(s.tensor.size() - 7, 7, ".weight") == 0
                                             ? s.tensor.substr(0, s.tensor.size() - 7) : "";
                const std::string why = !stem.empty() && ckpt.find(stem + ".qweight")
                                            ? ", but " + stem + ".qweight is: a GPTQ checkpoint whose config.json has no quantization_config"
                                            : "";
                throw CheckpointError(ckpt.path() + ": tensor '" + s.tensor + "', which config.json implies (" + n->name +
                                      "), is not in the checkpoint" + why);
            }
            // Read as the weights' float dtype on the ranks: an integer tensor would be refused
            // there, after the plan (quantized linears are not read through these segments).
            if (!can_convert(t->dtype, DType::kF32) && t->dtype != DType::kF8E4M3 && t->dtype != DType::kF8E5M2)
                throw CheckpointError(t->file + ": tensor '" + s.tensor + "' is " + dtype_name(t->dtype) +
                                      ", where config.json implies a float weight (" + n->name + ")");
            const Shape& want = s.index >= 0 ? s.tensor_shape : s.shape;
            if (t->shape != want)
                throw CheckpointError(ckpt.path() + ": tensor '" + s.tensor + "' has shape " + shape_string(t->shape) +
                                      " but config.json implies " + shape_string(want));
        }
    }
}

std::vector<std::string> unused_tensors(const Graph& graph, const Checkpoint& ckpt, const ModelConfig& config) {
    std::set<std::string> used;
    for (Node* n : graph.nodes())
        if (n->param)
            for (const Segment& s : n->param->segments) used.insert(s.tensor);
    auto ends_with = [](const std::string& s, const std::string& tail) {
        return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
    };
    std::vector<std::string> unused;
    for (const TensorInfo& t : ckpt.tensors()) {
        if (used.count(t.name) || ends_with(t.name, ".rotary_emb.inv_freq")) continue;
        if (config.tie_word_embeddings && t.name == "lm_head.weight") continue;
        unused.push_back(t.name);
    }
    return unused;
}

namespace {

// The decoder layer a tensor name belongs to ("model.layers.N." as HF names it, "layers.N." as
// Meta does), or -1.
int64_t layer_of(const std::string& name) {
    for (const char* prefix : {"model.layers.", "layers."}) {
        const size_t n = std::strlen(prefix);
        if (name.compare(0, n, prefix) != 0) continue;
        size_t end = n;
        while (end < name.size() && end - n < 9 && std::isdigit((unsigned char)name[end])) ++end;
        if (end > n && end < name.size() && name[end] == '.') return std::atoll(name.c_str() + n);
    }
    return -1;
}

}  // namespace

void check_layer_count(const ModelConfig& config, const Checkpoint& ckpt) {
    int64_t held = 0;
    for (const TensorInfo& t : ckpt.tensors()) held = std::max(held, layer_of(t.name) + 1);
    if (held > 0 && config.num_layers > held)
        throw CheckpointError(ckpt.path() + ": config.json says num_hidden_layers = " + std::to_string(config.num_layers) +
                              ", but the checkpoint holds layers 0 to " + std::to_string(held - 1) + " only (no tensor of layer " +
                              std::to_string(held) + ")");
}

std::string explain_unused(const std::vector<std::string>& unused, const ModelConfig& config) {
    // (Fewer experts in config.json than in the checkpoint fails earlier: the router's shape.)
    int64_t last_layer = -1;
    for (const std::string& name : unused) last_layer = std::max(last_layer, layer_of(name));
    if (last_layer < config.num_layers) return "";
    return "config.json says num_hidden_layers = " + std::to_string(config.num_layers) + ", the checkpoint holds " +
           std::to_string(last_layer + 1);
}

}  // namespace tpx
