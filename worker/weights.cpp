// Reading each parameter's pieces straight into its final buffer, converted to fp32.
#include "worker/weights.h"

#include <algorithm>

#include "common/error.h"

namespace tpx {

HostWeights load_host_weights(const Graph& graph, int rank, Checkpoint& ckpt) {
    HostWeights w;
    std::vector<ReadRequest> requests;
    std::vector<void*> targets;
    for (Node* n : graph.nodes()) {
        if (!n->param) continue;
        const std::vector<Piece>& pieces = n->param->by_rank.at(rank);
        int64_t numel = shape_numel(n->out()->shape);
        std::vector<float>& buf = w.buffers[n->name];
        buf.resize(numel);
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
        w.bytes += numel * (int64_t)sizeof(float);
    }
    HostSink sink(std::move(targets));
    ckpt.read(requests, sink);  // every piece in one batch: no barrier between parameters
    return w;
}

}  // namespace tpx
