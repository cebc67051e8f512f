// A rank's weights: for every parameter of the plan, its pieces read from the checkpoint and
// laid end to end into one fp32 buffer (the CPU backend's layout). Only the rank's own slices
// are read; the checkpoint's byte accounting says how much.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "loader/checkpoint.h"
#include "sharding/graph.h"

namespace tpx {

struct HostWeights {
    std::map<std::string, std::vector<float>> buffers;  // parameter name -> local values
    int64_t bytes = 0;
};

HostWeights load_host_weights(const Graph& graph, int rank, Checkpoint& ckpt);

// Refit: reads the same pieces into `buffers` as they are (every parameter already there at its
// planned size, checked: nothing is resized, so no pointer into them moves).
void read_host_weights(const Graph& graph, int rank, Checkpoint& ckpt, std::map<std::string, std::vector<float>>& buffers);

}  // namespace tpx
