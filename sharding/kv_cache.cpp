// The KV cache's layout from the rank's graph (kv_cache.h).
#include "sharding/kv_cache.h"

namespace tpx {

int64_t KvCacheLayout::bytes(int64_t elem_bytes) const {
    int64_t n = 0;
    for (const KvLayer& l : layers) n += 2 * elems(l) * elem_bytes;
    return n;
}

KvCacheLayout KvCacheLayout::of_layers(int64_t first, int64_t end) const {
    KvCacheLayout kv{slots, max_seq, {}};
    for (const KvLayer& l : layers)
        if (l.layer >= first && l.layer < end) kv.layers.push_back(l);
    return kv;
}

KvCacheLayout kv_cache_layout(const Graph& graph, int64_t slots, int64_t max_seq) {
    KvCacheLayout kv;
    kv.slots = slots;
    kv.max_seq = max_seq;
    for (const Node* n : graph.nodes())
        if (n->kind == Op::kAttention) kv.layers.push_back({n->attr_int("layer"), n->attr_int("kv_heads") * n->attr_int("head_dim")});
    return kv;
}

}  // namespace tpx
