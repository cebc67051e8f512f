// The factory: builds the model graph from config.json on "meta" (shapes only, no data) for
// Llama, Mistral, Qwen2 and Mixtral, with the sharding hints AutoDeploy's sharding IR
// attaches (tp_mode, layer_type, min_local_shape = head_dim). Parameters name their checkpoint
// tensors; nothing is read here.
#pragma once

#include <string>
#include <vector>

#include "sharding/graph.h"
#include "sharding/model_config.h"

namespace tpx {

class Checkpoint;

// `weight_dtype` is what the ranks will hold ("bfloat16", "float32", ...).
Graph build_model(const ModelConfig& config, const std::string& weight_dtype);

// config.json's num_hidden_layers past the layers the checkpoint's tensor names hold: refused
// (CheckpointError naming the first layer missing) before a graph is built layer by layer (10^12
// layers would take memory without bound).
void check_layer_count(const ModelConfig& config, const Checkpoint& ckpt);

// Every tensor the graph's parameters name exists in `ckpt` with the shape the config implies;
// throws CheckpointError naming the tensor and both shapes otherwise.
void check_against_checkpoint(const Graph& graph, const Checkpoint& ckpt);

// The checkpoint's tensors that no parameter of `graph` names, in the checkpoint's (name)
// order, less those HF itself does not read: rotary_emb.inv_freq buffers (recomputed from
// config.json) and lm_head.weight when the config ties the head to embed_tokens.
std::vector<std::string> unused_tensors(const Graph& graph, const Checkpoint& ckpt, const ModelConfig& config);

// Why they may be unused, from their names: "config.json says num_hidden_layers = 1, the
// checkpoint holds 2" when some belong to a layer beyond the config's, "" otherwise.
std::string explain_unused(const std::vector<std::string>& unused, const ModelConfig& config);

}  // namespace tpx
