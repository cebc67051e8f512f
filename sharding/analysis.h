// Analyzers on the pattern framework: FLOPs, weight bytes and collectives of one forward, per
// token, for one rank's (local, sharded) graph.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "sharding/graph.h"

namespace tpx {

struct CollectiveCost {
    int64_t count = 0;           // calls per forward
    int64_t bytes_per_token = 0; // payload per token, summed over the calls
};

struct GraphCosts {
    int64_t weight_bytes = 0;              // local parameters
    double flops_per_token = 0;            // GEMMs and MoE experts (MoE: uniform routing assumed)
    // The part of flops_per_token that runs only for the rows whose logits are asked for (the
    // LM head: a prefill computes it for the prompt's last token, not for every token).
    double head_flops_per_token = 0;
    double attention_flops_per_token_per_position = 0;  // QK^T and PV, per cached position
    std::map<std::string, CollectiveCost> collectives;  // by op: all_reduce, all_gather, ...
    int matches = 0;
};

// `act_bytes`: bytes per activation element (2 for bf16, 4 for f32).
GraphCosts analyze_costs(const Graph& g, int act_bytes);

int64_t dtype_bytes(const std::string& dtype);  // "bfloat16" -> 2, "float32" -> 4, ...

}  // namespace tpx
