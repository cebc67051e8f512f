// What a Meta folder's params.json says, and Meta's tensor names as HF's (with how Meta splits
// each over its consolidated.NN.pth files). Pure functions of the text and the names; a bad
// params.json is a CheckpointError naming the file and the key.
#pragma once

#include <cstdint>
#include <string>

namespace tpx {

// What params.json says; -1 where it leaves a value to the tensors.
struct MetaParams {
    std::string file;
    int64_t dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = -1, max_seq_len = 4096;
    double norm_eps = 1e-5, rope_theta = 10000.0, rope_scaling_factor = 8.0;
    bool use_scaled_rope = false;
    // The FFN width's rule (Meta's FeedForward): 0 where params.json leaves them out (null).
    int64_t multiple_of = 0;
    double ffn_dim_multiplier = 0;
};

// The FFN width Meta's FeedForward gives `p` (int(2 * 4 dim / 3), times ffn_dim_multiplier where
// given, rounded up to multiple_of); -1 where params.json has no multiple_of (the width is w1's).
int64_t meta_ffn_width(const MetaParams& p);

// Parses params.json (`file`, for messages): the required keys present, every value of its type,
// dim / n_heads an even head dim, n_heads a multiple of n_kv_heads.
MetaParams parse_meta_params(const std::string& file, const std::string& text);

// Meta's name -> HF's, and how Meta splits the tensor over its files.
struct MetaNameRule {
    std::string hf;
    int split = -1;        // -1 replicated (1-D); 2 = tok_embeddings, told apart by the shapes
    bool permute = false;  // q/k: interleaved-pair rows
    int64_t heads = 0;     // (filled from params for permuted tensors)
};

// Fills `r` for Meta's tensor `meta` (layers.N.attention.wq.weight -> model.layers.N.self_attn.
// q_proj.weight, ...); false for a name that is not one of Meta's Llama tensors.
bool map_meta_name(const std::string& meta, const MetaParams& p, MetaNameRule& r);

}  // namespace tpx
