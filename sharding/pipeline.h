// Pipeline parallelism in the plan: which contiguous decoder layers each stage runs (balanced by
// weight bytes, or as [parallel] pp_layers says), and each stage's own graph cut from the whole
// one. Invariants: stage 0 holds the embedding, the last stage the final norm and the LM head;
// every stage runs at least one decoder layer; a cut graph starts at the input `stage_input`
// (the hidden state the previous stage sends, which is also the residual stream: the layer
// boundary is the residual add's output, before any norm) and, but on the last stage, ends at
// the value the next stage receives. Ranks are laid out rank = stage x tp + tp_rank.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sharding/graph.h"

namespace tpx {

// The input node a stage after the first starts from.
inline constexpr const char* kStageInput = "stage_input";

struct PipelineStage {
    int stage = 0;
    bool first = true, last = true;
    int64_t first_layer = 0, end_layer = 0;  // decoder layers [first_layer, end_layer)
    int64_t weight_bytes = 0;                // per rank of the stage
    int64_t send_bytes_per_token = 0;        // per rank, to the next stage's rank of the same tp_rank (0 on the last)
};

// The decoder layer a (non-param, non-input) node belongs to, from its name: "layers.N...." is
// N, the embedding (and its all-reduce) -1, the final norm and the LM head num_layers.
int64_t node_layer(const Node& n, int64_t num_layers);

// Whether `stage` runs a node of layer `layer` (embedding -1 on the first, head on the last).
bool stage_runs(const PipelineStage& stage, int64_t layer, int64_t num_layers);

// Whether the ranks of `stage` hold `param` (a param node): one of its readers runs there.
bool stage_holds(const PipelineStage& stage, const Node& param, int64_t num_layers);

// Local (per rank) parameter bytes by position: [0] the embedding, [1 + l] decoder layer l,
// [num_layers + 1] the final norm and the LM head.
std::vector<int64_t> layer_weight_bytes(const Graph& graph, int64_t num_layers);

// The stages' decoder layers: `layers` (one count per stage, summing to num_layers) when given,
// else contiguous runs that minimise the largest stage's bytes (`bytes` from layer_weight_bytes).
// Throws Error (exit 2) naming `what` (the job key) when it cannot be done.
std::vector<PipelineStage> split_stages(const std::vector<int64_t>& bytes, int pp, const std::vector<int64_t>& layers,
                                        const std::string& what);

// Cuts `graph` (the whole model, sharded, before post-load fusion) to `stage`: the nodes it
// runs, starting at kStageInput unless first, ending at the boundary value unless last.
void cut_stage(Graph& graph, const PipelineStage& stage, int64_t num_layers);

}  // namespace tpx
