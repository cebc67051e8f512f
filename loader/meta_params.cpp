// params.json and Meta's tensor names (loader/meta_params.h): the keys Meta's reference code
// writes, with its defaults where Llama 2 and 3 leave one out.
#include "loader/meta_params.h"

#include <cstdint>
#include <map>

#include <nlohmann/json.hpp>

#include "common/json_object.h"
#include "loader/checkpoint_error.h"

namespace tpx {

using json = nlohmann::json;

MetaParams parse_meta_params(const std::string& file, const std::string& text) {
    auto fail = [&](const std::string& why) { throw CheckpointError(file + ": " + why); };
    const json j = parse_json_object(text, file, [&](const std::string&, const std::string& why) { fail(why); });
    MetaParams p;
    p.file = file;
    auto integer = [&](const char* key, int64_t fallback, bool required) {
        auto it = j.find(key);
        if (it == j.end() || it->is_null()) {
            if (required) fail(std::string("missing key \"") + key + "\"");
            return fallback;
        }
        if (!it->is_number_integer()) fail(std::string("\"") + key + "\" is " + it->dump() + ", not an integer");
        if (!fits_int64(*it)) fail(std::string("\"") + key + "\" = " + it->dump() + " is out of range");
        return it->get<int64_t>();
    };
    auto number = [&](const char* key, double fallback) {
        auto it = j.find(key);
        if (it == j.end() || it->is_null()) return fallback;
        if (!it->is_number()) fail(std::string("\"") + key + "\" is " + it->dump() + ", not a number");
        return it->get<double>();
    };
    p.dim = integer("dim", 0, true);
    p.n_layers = integer("n_layers", 0, true);
    p.n_heads = integer("n_heads", 0, true);
    p.n_kv_heads = integer("n_kv_heads", p.n_heads, false);
    p.vocab_size = integer("vocab_size", -1, false);  // Llama 2 writes -1: the tokenizer's size
    p.max_seq_len = integer("max_seq_len", 4096, false);
    p.norm_eps = number("norm_eps", p.norm_eps);
    p.rope_theta = number("rope_theta", p.rope_theta);
    p.rope_scaling_factor = number("rope_scaling_factor", p.rope_scaling_factor);
    p.multiple_of = integer("multiple_of", 0, false);
    p.ffn_dim_multiplier = number("ffn_dim_multiplier", 0);
    if (j.contains("multiple_of") && !j["multiple_of"].is_null() && p.multiple_of <= 0)
        fail("\"multiple_of\" = " + std::to_string(p.multiple_of) + " must be positive");
    if (p.ffn_dim_multiplier < 0 || (j.contains("ffn_dim_multiplier") && !j["ffn_dim_multiplier"].is_null() && p.ffn_dim_multiplier == 0))
        fail("\"ffn_dim_multiplier\" = " + j["ffn_dim_multiplier"].dump() + " must be positive, or null");
    if (auto it = j.find("use_scaled_rope"); it != j.end() && !it->is_null()) {
        if (!it->is_boolean()) fail("\"use_scaled_rope\" is " + it->dump() + ", not true or false");
        p.use_scaled_rope = it->get<bool>();
    }
    for (auto [key, v] : {std::pair<const char*, int64_t>{"dim", p.dim}, {"n_layers", p.n_layers}, {"n_heads", p.n_heads},
                          {"n_kv_heads", p.n_kv_heads}, {"max_seq_len", p.max_seq_len}})
        if (v <= 0) fail(std::string("\"") + key + "\" = " + std::to_string(v) + " must be positive");
    if (p.vocab_size <= 0 && p.vocab_size != -1)
        fail("\"vocab_size\" = " + std::to_string(p.vocab_size) + " must be positive, or -1 (the embedding's rows, as Llama 2 writes)");
    if (p.dim % p.n_heads != 0) fail("\"dim\" = " + std::to_string(p.dim) + " is not a multiple of \"n_heads\" = " + std::to_string(p.n_heads));
    if (p.n_heads % p.n_kv_heads != 0)
        fail("\"n_heads\" = " + std::to_string(p.n_heads) + " is not a multiple of \"n_kv_heads\" = " + std::to_string(p.n_kv_heads));
    if ((p.dim / p.n_heads) % 2 != 0) fail("head dim " + std::to_string(p.dim / p.n_heads) + " (dim / n_heads) is odd: RoPE needs pairs");
    return p;
}

int64_t meta_ffn_width(const MetaParams& p) {
    if (p.multiple_of <= 0) return -1;
    int64_t hidden = (int64_t)(2.0 * (double)(4 * p.dim) / 3.0);  // Python's int() of the float, as Meta's code
    if (p.ffn_dim_multiplier > 0) hidden = (int64_t)(p.ffn_dim_multiplier * (double)hidden);
    return p.multiple_of * ((hidden + p.multiple_of - 1) / p.multiple_of);
}

bool map_meta_name(const std::string& meta, const MetaParams& p, MetaNameRule& r) {
    static const std::map<std::string, MetaNameRule> top = {{"tok_embeddings.weight", {"model.embed_tokens.weight", 2}},
                                                        {"norm.weight", {"model.norm.weight", -1}},
                                                        {"output.weight", {"lm_head.weight", 0}}};
    static const std::map<std::string, MetaNameRule> layer = {
        {"attention.wq.weight", {"self_attn.q_proj.weight", 0, true}}, {"attention.wk.weight", {"self_attn.k_proj.weight", 0, true}},
        {"attention.wv.weight", {"self_attn.v_proj.weight", 0}},       {"attention.wo.weight", {"self_attn.o_proj.weight", 1}},
        {"feed_forward.w1.weight", {"mlp.gate_proj.weight", 0}},       {"feed_forward.w2.weight", {"mlp.down_proj.weight", 1}},
        {"feed_forward.w3.weight", {"mlp.up_proj.weight", 0}},         {"attention_norm.weight", {"input_layernorm.weight", -1}},
        {"ffn_norm.weight", {"post_attention_layernorm.weight", -1}}};
    if (auto it = top.find(meta); it != top.end()) return r = it->second, true;
    if (meta.rfind("layers.", 0) != 0) return false;
    const size_t dot = meta.find('.', 7);
    if (dot == std::string::npos || dot == 7 || meta.find_first_not_of("0123456789", 7) != dot) return false;
    auto it = layer.find(meta.substr(dot + 1));
    if (it == layer.end()) return false;
    r = it->second;
    r.hf = "model.layers." + meta.substr(7, dot - 7) + "." + r.hf;
    if (r.permute) r.heads = meta.find(".wq.") != std::string::npos ? p.n_heads : p.n_kv_heads;
    return true;
}

}  // namespace tpx
