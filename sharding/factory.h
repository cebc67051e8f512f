// The factory: builds the model graph from config.json on "meta" (shapes only, no data) for
// Llama, Mistral, Qwen2 and Mixtral, with the sharding hints AutoDeploy's sharding IR
// attaches (tp_mode, layer_type, min_local_shape = head_dim). Parameters name their checkpoint
// tensors; nothing is read here.
#pragma once

#include <string>

#include "sharding/graph.h"
#include "sharding/model_config.h"

namespace tpx {

class Checkpoint;

// `weight_dtype` is what the ranks will hold ("bfloat16", "float32", ...).
Graph build_model(const ModelConfig& config, const std::string& weight_dtype);

// Every tensor the graph's parameters name exists in `ckpt` with the shape the config implies;
// throws CheckpointError naming the tensor and both shapes otherwise.
void check_against_checkpoint(const Graph& graph, const Checkpoint& ckpt);

}  // namespace tpx
