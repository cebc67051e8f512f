// The KV cache's layout, decided once from the rank's graph: for every attention node, its
// layer and the width of one K (or V) row, local kv_heads x head_dim, for `slots` sequences of
// `max_seq` tokens. The plan's memory figures and both executors' allocations (each allocates
// exactly these layers, zeroed, in its own memory) come from it; nothing else sizes the cache.
#pragma once

#include <cstdint>
#include <vector>

#include "sharding/graph.h"

namespace tpx {

struct KvLayer {
    int64_t layer = 0;  // the attention node's "layer"
    int64_t width = 0;  // elements of one token's K (or V): kv_heads x head_dim on this rank
};

struct KvCacheLayout {
    int64_t slots = 0;    // sequences (run.max_batch)
    int64_t max_seq = 0;  // tokens a sequence (run.max_seq_len)
    std::vector<KvLayer> layers;

    // Elements of one layer's K (or V): [slots, max_seq, width].
    int64_t elems(const KvLayer& l) const { return slots * max_seq * l.width; }
    // K and V of every layer at `elem_bytes` an element.
    int64_t bytes(int64_t elem_bytes) const;
    // The layers in [first, end) (a pipeline stage's, as its cut graph gives them).
    KvCacheLayout of_layers(int64_t first, int64_t end) const;
};

KvCacheLayout kv_cache_layout(const Graph& graph, int64_t slots, int64_t max_seq);

}  // namespace tpx
