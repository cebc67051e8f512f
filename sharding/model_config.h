// A model's config.json, read into the fields tpx uses. Both dialects are read: transformers 4
// (rope_theta, rope_scaling, torch_dtype) and transformers 5 (rope_parameters, dtype,
// head_dim: null). Unknown architectures and missing keys are errors naming them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpx {

struct RopeConfig {
    std::string type = "default";   // default | llama3
    double theta = 10000.0;
    // llama3 scaling (rope_type = "llama3")
    double factor = 1.0;
    double low_freq_factor = 1.0;
    double high_freq_factor = 4.0;
    int64_t original_max_position_embeddings = 8192;
    // Precision of the inverse frequencies: "float32", or the checkpoint's dtype as HF has it
    // after model.to(dtype) (the job's model.rope_precision chooses; see docs/NUMERICS.md).
    std::string freq_dtype = "float32";
};

// The most decoder layers a config.json may name (the largest published models have a few
// hundred): past it the graph built on meta would take memory without bound.
constexpr int64_t kMaxLayers = 10000;

struct ModelConfig {
    std::string file;          // where it was read from, for messages
    std::string architecture;  // LlamaForCausalLM | MistralForCausalLM | Qwen2ForCausalLM | MixtralForCausalLM
    int64_t vocab_size = 0;
    int64_t hidden_size = 0;
    int64_t intermediate_size = 0;
    int64_t num_layers = 0;
    int64_t num_heads = 0;
    int64_t num_kv_heads = 0;
    int64_t head_dim = 0;                 // hidden_size / num_heads when absent or null
    int64_t max_position_embeddings = 0;
    double rms_norm_eps = 1e-6;
    RopeConfig rope;
    bool tie_word_embeddings = false;
    bool qkv_bias = false;                // Qwen2 always; Llama/Mistral when attention_bias
    bool o_bias = false;                  // attention_bias also puts a bias on o_proj
    int64_t sliding_window = 0;           // 0 = full attention
    int64_t num_experts = 0;              // Mixtral's num_local_experts; 0 = dense MLP
    int64_t experts_per_token = 0;        // num_experts_per_tok
    // The checkpoint holds each layer's experts as transformers 5's stacked tensors
    // (mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I], mlp.gate) rather
    // than one tensor per expert (block_sparse_moe.experts.N.w1/w2/w3): set from its headers.
    bool stacked_experts = false;
    std::string dtype = "bfloat16";       // dtype / torch_dtype
    std::vector<int64_t> eos_token_ids;   // from config.json; generation_config.json may override

    bool is_moe() const { return num_experts > 0; }
};

const std::vector<std::string>& supported_architectures();

// Parses config.json text; `file` names it in errors (CheckpointError-like Error, exit code 2).
ModelConfig parse_model_config(const std::string& json_text, const std::string& file);

// eos ids from generation_config.json text (empty when it has none).
std::vector<int64_t> parse_generation_eos(const std::string& json_text, const std::string& file);

}  // namespace tpx
