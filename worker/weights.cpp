// Reading each parameter's pieces straight into its final buffer, converted to fp32.
#include "worker/weights.h"

#include <algorithm>

#include "common/error.h"

namespace tpx {

HostWeights load_host_weights(const Graph& graph, int rank, Checkpoint& ckpt) {
    HostWeights w;
    for (Node* n : graph.nodes()) {
        if (!n->param) continue;
        const std::vector<Piece>& pieces = n->param->by_rank.at(rank);
        int64_t numel = 1;
        for (int64_t d : n->out()->shape) numel *= d;
        std::vector<float> buf(numel);
        int64_t at = 0;
        for (const Piece& p : pieces) {
            if (at + p.elements > numel)
                throw Error("plan for " + n->name + " on rank " + std::to_string(rank) + " has more elements than its shape " +
                            shape_text(n->out()->shape));
            if (p.tensor.empty()) std::fill(buf.begin() + at, buf.begin() + at + p.elements, 0.0f);
            else ckpt.read(p.tensor, p.slice, DType::kF32, buf.data() + at);
            at += p.elements;
        }
        if (at != numel)
            throw Error("plan for " + n->name + " on rank " + std::to_string(rank) + " fills " + std::to_string(at) + " of " +
                        std::to_string(numel) + " elements");
        w.bytes += numel * (int64_t)sizeof(float);
        w.buffers[n->name] = std::move(buf);
    }
    return w;
}

}  // namespace tpx
