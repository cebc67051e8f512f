// Reading each parameter's pieces straight into its final buffer, converted to fp32. The load
// and the refit read the same pieces; only the refit finds its buffers already there.
#include "worker/weights.h"

#include <algorithm>

#include "common/error.h"

namespace tpx {
namespace {

// The reads that fill `buffers` from the plan's pieces of `rank`; pieces the plan leaves
// empty (padding) are zeroed. `allocate`: make each buffer; else each must be there, its size.
int64_t plan_host_reads(const Graph& graph, int rank, std::map<std::string, std::vector<float>>& buffers, bool allocate,
                        std::vector<ReadRequest>& requests, std::vector<void*>& targets) {
    int64_t bytes = 0;
    for (Node* n : graph.nodes()) {
        if (!n->param) continue;
        const std::vector<Piece>& pieces = n->param->by_rank.at(rank);
        int64_t numel = shape_numel(n->out()->shape);
        if (!allocate) {
            auto it = buffers.find(n->name);
            if (it == buffers.end() || (int64_t)it->second.size() != numel)
                throw Error("refit: rank " + std::to_string(rank) + " holds no buffer of " + std::to_string(numel) + " elements for " + n->name);
        }
        std::vector<float>& buf = buffers[n->name];
        if (allocate) buf.resize(numel);
        int64_t at = 0;
        for (const Piece& p : pieces) {
            if (at + p.elements > numel)
                throw Error("plan for " + n->name + " on rank " + std::to_string(rank) + " has more elements than its shape " +
                            shape_text(n->out()->shape));
            if (p.tensor.empty()) {
                std::fill(buf.begin() + at, buf.begin() + at + p.elements, 0.0f);
            } else {
                requests.push_back({p.tensor, p.slice, DType::kF32, targets.size()});
                targets.push_back(buf.data() + at);
            }
            at += p.elements;
        }
        if (at != numel)
            throw Error("plan for " + n->name + " on rank " + std::to_string(rank) + " fills " + std::to_string(at) + " of " +
                        std::to_string(numel) + " elements");
        bytes += numel * (int64_t)sizeof(float);
    }
    return bytes;
}

}  // namespace

HostWeights load_host_weights(const Graph& graph, int rank, Checkpoint& ckpt) {
    HostWeights w;
    std::vector<ReadRequest> requests;
    std::vector<void*> targets;
    w.bytes = plan_host_reads(graph, rank, w.buffers, /*allocate=*/true, requests, targets);
    HostSink sink(std::move(targets));
    ckpt.read(requests, sink);  // every piece in one batch: no barrier between parameters
    return w;
}

void read_host_weights(const Graph& graph, int rank, Checkpoint& ckpt, std::map<std::string, std::vector<float>>& buffers) {
    std::vector<ReadRequest> requests;
    std::vector<void*> targets;
    plan_host_reads(graph, rank, buffers, /*allocate=*/false, requests, targets);
    HostSink sink(std::move(targets));
    ckpt.read(requests, sink);
}

}  // namespace tpx
