// Tensor- and expert-parallel sharding of the graph (detect_sharding): every parameter gets,
// per rank, the pieces of checkpoint tensors it holds, and collectives are inserted where the
// split layers need them. The rules (AutoDeploy's column/row split, TensorRT-LLM's Llama
// loaders):
//   q, k, v, gate, up: column-wise (dim 0), whole heads per rank; KV heads replicated when
//     kv_heads < tp and tp % kv_heads == 0, an error otherwise;
//   o, down: row-wise (dim 1), then all_reduce;
//   embedding: vocab-parallel (rows, vocab padded to a multiple of tp), then all_reduce;
//   lm_head: split by vocab (rows, padded likewise), then all_gather of the logits;
//   MoE: the tp ranks form ep groups of tp/ep ranks; group g holds experts
//     [g E/ep, (g+1) E/ep), each split tp/ep ways inside the group (w1/w3 column-wise, w2
//     row-wise); the router is replicated; one all_reduce after the MoE block.
// A split that does not divide is an Error (exit 2) naming the tensor and the sizes.
#pragma once

#include "sharding/graph.h"

namespace tpx {

struct ShardingReport {
    int params = 0;       // parameters given per-rank pieces
    int collectives = 0;  // collectives inserted
};

ShardingReport shard_graph(Graph& g, int tp, int ep);

// The pieces rank `rank` holds of one segment (empty when it holds none of it).
std::vector<Piece> pieces_for_rank(const Segment& s, int rank, int tp, int ep, const std::string& param);

// Removes the sharding hints once sharding is done (strip_sharding_hints).
int strip_sharding_hints(Graph& g);

}  // namespace tpx
