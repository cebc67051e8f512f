// Stages of a pipeline: the balanced split of the decoder layers, and each stage's graph.
#include "sharding/pipeline.h"

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "common/error.h"
#include "sharding/analysis.h"

namespace tpx {

int64_t node_layer(const Node& n, int64_t num_layers) {
    static const std::string kLayers = "layers.";
    if (n.name.compare(0, kLayers.size(), kLayers) == 0) return std::atoll(n.name.c_str() + kLayers.size());
    if (n.name.compare(0, 12, "embed_tokens") == 0) return -1;
    return num_layers;
}

bool stage_runs(const PipelineStage& s, int64_t layer, int64_t num_layers) {
    if (layer < 0) return s.first;
    if (layer >= num_layers) return s.last;
    return layer >= s.first_layer && layer < s.end_layer;
}

bool stage_holds(const PipelineStage& s, const Node& param, int64_t num_layers) {
    for (const Node* user : param.out()->users)
        if (stage_runs(s, node_layer(*user, num_layers), num_layers)) return true;
    return false;
}

std::vector<int64_t> layer_weight_bytes(const Graph& graph, int64_t num_layers) {
    std::vector<int64_t> bytes(num_layers + 2, 0);
    for (Node* n : graph.nodes()) {
        if (!n->param || n->out()->users.empty()) continue;
        int64_t layer = num_layers;
        for (const Node* user : n->out()->users) layer = std::min(layer, node_layer(*user, num_layers));
        bytes[layer + 1] += shape_numel(n->out()->shape) * dtype_bytes(n->out()->dtype);
    }
    return bytes;
}

namespace {

// Contiguous runs of the decoder layers, at least one each, minimising the largest stage's
// bytes (the embedding counted on stage 0, the head on the last): dynamic programming over the
// end of each stage, O(pp x L^2).
std::vector<int64_t> balanced_ends(const std::vector<int64_t>& bytes, int pp) {
    const int64_t L = (int64_t)bytes.size() - 2;
    std::vector<int64_t> prefix(L + 1, 0);  // prefix[j] = bytes of layers [0, j)
    for (int64_t l = 0; l < L; ++l) prefix[l + 1] = prefix[l] + bytes[l + 1];
    auto cost = [&](int s, int64_t a, int64_t b) {
        return prefix[b] - prefix[a] + (s == 0 ? bytes[0] : 0) + (s == pp - 1 ? bytes[L + 1] : 0);
    };
    // best[s][j]: the largest stage of stages 0..s when stage s ends at layer j; from[s][j] its start.
    std::vector<std::vector<int64_t>> best(pp, std::vector<int64_t>(L + 1, INT64_MAX)), from(pp, std::vector<int64_t>(L + 1, 0));
    for (int64_t j = 1; j <= L; ++j) best[0][j] = cost(0, 0, j);
    for (int s = 1; s < pp; ++s)
        for (int64_t j = s + 1; j <= L; ++j)
            for (int64_t i = s; i < j; ++i) {
                if (best[s - 1][i] == INT64_MAX) continue;
                int64_t worst = std::max(best[s - 1][i], cost(s, i, j));
                if (worst < best[s][j]) best[s][j] = worst, from[s][j] = i;
            }
    std::vector<int64_t> ends(pp);
    int64_t j = L;
    for (int s = pp - 1; s >= 0; --s) {
        ends[s] = j;
        j = s > 0 ? from[s][j] : 0;
    }
    return ends;
}

}  // namespace

std::vector<PipelineStage> split_stages(const std::vector<int64_t>& bytes, int pp, const std::vector<int64_t>& layers,
                                        const std::string& what) {
    const int64_t L = (int64_t)bytes.size() - 2;
    if (pp > L)
        throw JobError(what + ": parallel.pp = " + std::to_string(pp) + " stages need at least one decoder layer each, but the model has " +
                       std::to_string(L));
    std::vector<int64_t> ends;
    if (!layers.empty()) {
        int64_t sum = 0;
        for (int64_t n : layers) ends.push_back(sum += n);
        if (sum != L)
            throw JobError(what + ": parallel.pp_layers adds up to " + std::to_string(sum) + " layers but the model has " + std::to_string(L));
    } else {
        ends = balanced_ends(bytes, pp);
    }
    std::vector<PipelineStage> stages(pp);
    for (int s = 0; s < pp; ++s) {
        PipelineStage& st = stages[s];
        st.stage = s;
        st.first = s == 0;
        st.last = s == pp - 1;
        st.first_layer = s == 0 ? 0 : ends[s - 1];
        st.end_layer = ends[s];
        for (int64_t l = st.first_layer; l < st.end_layer; ++l) st.weight_bytes += bytes[l + 1];
        if (st.first) st.weight_bytes += bytes[0];
        if (st.last) st.weight_bytes += bytes[L + 1];
    }
    return stages;
}

void cut_stage(Graph& graph, const PipelineStage& s, int64_t num_layers) {
    if (s.first && s.last) return;
    auto runs = [&](const Node* n) { return stage_runs(s, node_layer(*n, num_layers), num_layers); };
    auto plain = [](const Node* n) { return n && n->kind != Op::kParam && n->kind != Op::kInput; };
    // The values that cross into the stage and out of it: produced before it and read in it, or
    // produced in it and read after it. Exactly one each, the residual stream.
    std::vector<Value*> in, out;
    for (Node* n : graph.nodes()) {
        if (!plain(n)) continue;
        const int64_t layer = node_layer(*n, num_layers);
        for (Value* v : n->outputs)
            for (const Node* user : v->users) {
                const int64_t at = node_layer(*user, num_layers);
                const bool before = layer < s.first_layer && !runs(n), after = at >= s.end_layer && !runs(user);
                if (before && runs(user) && std::find(in.begin(), in.end(), v) == in.end()) in.push_back(v);
                if (runs(n) && after && std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
            }
    }
    auto names = [](const std::vector<Value*>& vs) {
        std::string t;
        for (const Value* v : vs) t += (t.empty() ? "" : ", ") + v->producer->name;
        return t.empty() ? std::string("none") : t;
    };
    const std::string where = "pipeline stage " + std::to_string(s.stage) + " (layers " + std::to_string(s.first_layer) + ".." +
                              std::to_string(s.end_layer - 1) + ")";
    if (!s.first && in.size() != 1) throw Error(where + ": expected one value entering the stage, found " + names(in));
    if (!s.last && out.size() != 1) throw Error(where + ": expected one value leaving the stage, found " + names(out));
    if (!s.last) graph.set_outputs({out[0]});
    if (!s.first) {
        Node* input = graph.add("input", kStageInput, {}, {in[0]->shape});
        input->out()->dtype = in[0]->dtype;
        graph.replace_all_uses_with(in[0], input->out());
    }
    graph.cleanup();
}

}  // namespace tpx
