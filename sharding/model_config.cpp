// config.json parsing with nlohmann::json. Every key read is checked for its type, so a
// config with "num_attention_heads": "8" is an error naming the key, not a crash.
#include "sharding/model_config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json_object.h"

namespace tpx {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& file, const std::string& message) {
    throw Error(file + ": " + message, kExitBadInput);
}

const json* find(const json& j, const char* key) {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t get_int(const json& j, const std::string& file, const char* key, bool required, int64_t fallback = 0) {
    const json* v = find(j, key);
    if (!v) {
        if (required) fail(file, std::string("missing key \"") + key + "\"");
        return fallback;
    }
    if (!v->is_number_integer()) fail(file, std::string("\"") + key + "\" is " + v->dump() + ", not an integer");
    if (!fits_int64(*v))
        fail(file, std::string("\"") + key + "\" = " + v->dump() + " is out of range");
    return v->get<int64_t>();
}

double get_double(const json& j, const std::string& file, const char* key, double fallback) {
    const json* v = find(j, key);
    if (!v) return fallback;
    if (!v->is_number()) fail(file, std::string("\"") + key + "\" is " + v->dump() + ", not a number");
    return v->get<double>();
}

bool get_bool(const json& j, const std::string& file, const char* key, bool fallback) {
    const json* v = find(j, key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(file, std::string("\"") + key + "\" is " + v->dump() + ", not true or false");
    return v->get<bool>();
}

std::vector<int64_t> get_ids(const json* v, const std::string& file, const char* key) {
    std::vector<int64_t> ids;
    if (!v) return ids;
    if (v->is_number_integer()) ids.push_back(v->get<int64_t>());
    else if (v->is_array()) {
        for (const json& x : *v) {
            if (!x.is_number_integer()) fail(file, std::string("\"") + key + "\" holds " + x.dump() + ", not a token id");
            ids.push_back(x.get<int64_t>());
        }
    } else {
        fail(file, std::string("\"") + key + "\" is " + v->dump() + ", not a token id or a list of them");
    }
    return ids;
}

// A value that the model's arithmetic divides by or sizes with: > 0 (>= 0 where zero is
// allowed) and finite, or an error naming the key.
void require_positive(const std::string& file, const char* key, double v, bool zero_allowed = false) {
    if (!std::isfinite(v) || v < 0 || (v == 0 && !zero_allowed)) {
        std::ostringstream text;
        text << "\"" << key << "\" = " << v << (zero_allowed ? " must be zero or positive" : " must be positive");
        fail(file, text.str());
    }
}

// rope_parameters (transformers 5) or rope_theta + rope_scaling (transformers 4).
RopeConfig parse_rope(const json& j, const std::string& file) {
    RopeConfig r;
    const json* params = find(j, "rope_parameters");
    const json* scaling = find(j, "rope_scaling");
    if (params) {
        if (!params->is_object()) fail(file, "\"rope_parameters\" is " + params->dump() + ", not an object");
        r.theta = get_double(*params, file, "rope_theta", get_double(j, file, "rope_theta", r.theta));
    } else {
        r.theta = get_double(j, file, "rope_theta", r.theta);
        params = scaling;
        if (params && !params->is_object()) fail(file, "\"rope_scaling\" is " + params->dump() + ", not an object");
    }
    require_positive(file, "rope_theta", r.theta);
    if (!params) return r;
    const json* type = find(*params, "rope_type");
    if (!type) type = find(*params, "type");
    if (type) {
        if (!type->is_string()) fail(file, "\"rope_type\" is " + type->dump() + ", not a string");
        r.type = type->get<std::string>();
    }
    if (r.type != "default" && r.type != "llama3")
        fail(file, "rope_type \"" + r.type + "\" is not supported (supported: default, llama3)");
    if (r.type == "llama3") {
        r.factor = get_double(*params, file, "factor", 8.0);
        r.low_freq_factor = get_double(*params, file, "low_freq_factor", 1.0);
        r.high_freq_factor = get_double(*params, file, "high_freq_factor", 4.0);
        r.original_max_position_embeddings = get_int(*params, file, "original_max_position_embeddings", false, 8192);
        require_positive(file, "factor", r.factor);
        require_positive(file, "low_freq_factor", r.low_freq_factor);
        require_positive(file, "original_max_position_embeddings", (double)r.original_max_position_embeddings);
        // HF's llama3 rule divides by high_freq_factor - low_freq_factor.
        if (!(r.high_freq_factor > r.low_freq_factor)) {
            std::ostringstream text;
            text << "\"high_freq_factor\" = " << r.high_freq_factor << " must be greater than \"low_freq_factor\" = " << r.low_freq_factor;
            fail(file, text.str());
        }
    }
    return r;
}

}  // namespace

const std::vector<std::string>& supported_architectures() {
    static const std::vector<std::string> a = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "MixtralForCausalLM"};
    return a;
}

ModelConfig parse_model_config(const std::string& text, const std::string& file) {
    const json j = parse_json_object(text, file, fail);
    ModelConfig c;
    c.file = file;
    const json* archs = find(j, "architectures");
    if (!archs || !archs->is_array() || archs->empty() || !(*archs)[0].is_string())
        fail(file, "missing \"architectures\" (a list naming the model class)");
    c.architecture = (*archs)[0].get<std::string>();
    const auto& supported = supported_architectures();
    if (std::find(supported.begin(), supported.end(), c.architecture) == supported.end()) {
        std::string list;
        for (const auto& s : supported) list += (list.empty() ? "" : ", ") + s;
        fail(file, "architecture \"" + c.architecture + "\" is not supported (supported: " + list + ")");
    }
    c.vocab_size = get_int(j, file, "vocab_size", true);
    c.hidden_size = get_int(j, file, "hidden_size", true);
    c.intermediate_size = get_int(j, file, "intermediate_size", true);
    c.num_layers = get_int(j, file, "num_hidden_layers", true);
    c.num_heads = get_int(j, file, "num_attention_heads", true);
    c.num_kv_heads = get_int(j, file, "num_key_value_heads", false, c.num_heads);
    for (auto [key, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size},
                          {"intermediate_size", c.intermediate_size}, {"num_hidden_layers", c.num_layers},
                          {"num_attention_heads", c.num_heads}, {"num_key_value_heads", c.num_kv_heads}})
        if (v <= 0) fail(file, std::string("\"") + key + "\" = " + std::to_string(v) + " must be positive");
    if (c.num_layers > kMaxLayers)
        fail(file, "\"num_hidden_layers\" = " + std::to_string(c.num_layers) + " is past the " + std::to_string(kMaxLayers) + " layers tpx builds");
    if (c.hidden_size % c.num_heads != 0 && !find(j, "head_dim"))
        fail(file, "hidden_size " + std::to_string(c.hidden_size) + " is not a multiple of num_attention_heads " +
                       std::to_string(c.num_heads) + " and head_dim is not given");
    c.head_dim = get_int(j, file, "head_dim", false, c.hidden_size / c.num_heads);
    require_positive(file, "head_dim", (double)c.head_dim);
    if (c.num_heads % c.num_kv_heads != 0)
        fail(file, "num_attention_heads " + std::to_string(c.num_heads) + " is not a multiple of num_key_value_heads " +
                       std::to_string(c.num_kv_heads));
    c.max_position_embeddings = get_int(j, file, "max_position_embeddings", false, 4096);
    require_positive(file, "max_position_embeddings", (double)c.max_position_embeddings);
    c.rms_norm_eps = get_double(j, file, "rms_norm_eps", 1e-6);
    require_positive(file, "rms_norm_eps", c.rms_norm_eps, /*zero_allowed=*/true);
    c.rope = parse_rope(j, file);
    c.tie_word_embeddings = get_bool(j, file, "tie_word_embeddings", false);
    bool attention_bias = get_bool(j, file, "attention_bias", false);
    c.qkv_bias = c.architecture == "Qwen2ForCausalLM" || attention_bias;
    c.o_bias = c.architecture != "Qwen2ForCausalLM" && attention_bias;
    if (get_bool(j, file, "mlp_bias", false)) fail(file, "\"mlp_bias\": true is not supported");
    const json* act = find(j, "hidden_act");
    if (act && (!act->is_string() || act->get<std::string>() != "silu"))
        fail(file, "hidden_act " + act->dump() + " is not supported (supported: \"silu\")");
    // Qwen2 declares a window but uses it only with use_sliding_window.
    bool window_used = c.architecture != "Qwen2ForCausalLM" || get_bool(j, file, "use_sliding_window", false);
    if (window_used) c.sliding_window = get_int(j, file, "sliding_window", false, 0);
    require_positive(file, "sliding_window", (double)c.sliding_window, /*zero_allowed=*/true);
    if (c.architecture == "MixtralForCausalLM") {
        c.num_experts = get_int(j, file, "num_local_experts", true);
        c.experts_per_token = get_int(j, file, "num_experts_per_tok", true);
        if (c.experts_per_token < 1 || c.experts_per_token > c.num_experts)
            fail(file, "num_experts_per_tok " + std::to_string(c.experts_per_token) + " must be in [1, num_local_experts = " +
                           std::to_string(c.num_experts) + "]");
    }
    const char* dtype_key = find(j, "dtype") ? "dtype" : "torch_dtype";
    if (const json* dtype = find(j, dtype_key)) {  // (find takes null for absent)
        static const char* const kFloats[] = {"bfloat16", "float16", "float32", "float64"};
        const std::string name = dtype->is_string() ? dtype->get<std::string>() : "";
        if (std::find(std::begin(kFloats), std::end(kFloats), name) == std::end(kFloats))
            fail(file, std::string("\"") + dtype_key + "\" holds " + dtype->dump() +
                           ": the dtype of the unquantized weights is one of bfloat16, float16, float32, float64");
        c.dtype = name;
    }
    c.eos_token_ids = get_ids(find(j, "eos_token_id"), file, "eos_token_id");
    return c;
}

std::vector<int64_t> parse_generation_eos(const std::string& text, const std::string& file) {
    if (text.empty()) return {};
    json j;
    try {
        j = parse_json_bounded(text);
    } catch (const json::exception& e) {
        fail(file, "not valid JSON: " + strip_json_tag(e));
    }
    return get_ids(find(j, "eos_token_id"), file, "eos_token_id");
}

}  // namespace tpx
