// Sharding: pieces per rank for every parameter, local attributes (heads, experts) for the
// ops, collectives after the split layers, then shapes propagated for the local graph.
#include "sharding/tp_sharding.h"

#include <set>

#include "common/error.h"

namespace tpx {
namespace {

[[noreturn]] void split_error(const Segment& s, const std::string& param, const std::string& what) {
    throw Error("cannot shard " + param + " (tensor '" + s.tensor + "' " + shape_text(s.shape) + "): " + what, kExitBadInput);
}

// Rows or columns [start, start + length) of the segment: of its tensor, or of its rows of a
// stacked tensor's entry (dim 0 counts from the segment's offset there).
Piece slice_piece(const Segment& s, int dim, int64_t start, int64_t length) {
    Shape shape = s.shape;
    shape[dim] = length;
    if (s.index >= 0 && dim == 0) start += s.offset;
    return Piece{s.tensor, Slice::range(dim, start, length, s.index), 0, shape_numel(shape)};
}

// The whole segment: the tensor, or its rows of the entry.
Piece whole_piece(const Segment& s) {
    if (s.index < 0) return Piece{s.tensor, Slice::whole(), 0, shape_numel(s.shape)};
    return slice_piece(s, 0, 0, s.shape.at(0));
}

// An even split of dim `dim` into `parts`, part `index`, in multiples of s.granule.
Piece even_part(const Segment& s, const std::string& param, int dim, int64_t parts, int64_t index, const char* what) {
    int64_t extent = s.shape.at(dim);
    if (extent % parts != 0 || (extent / parts) % s.granule != 0)
        split_error(s, param, "dim " + std::to_string(dim) + " = " + std::to_string(extent) + " cannot be split " + what + " into " +
                                  std::to_string(parts) + " parts" + (s.granule > 1 ? " of whole heads (head_dim " + std::to_string(s.granule) + ")" : ""));
    int64_t len = extent / parts;
    return slice_piece(s, dim, index * len, len);
}

Node* insert_after(Graph& g, Node* n, const std::string& op, std::map<std::string, Attr> attrs = {}) {
    Value* v = n->out();
    Node* c = g.add(op, n->name + "." + op, {v}, {v->shape}, std::move(attrs));
    // Every use of the local result (graph outputs too) now reads the collective's result;
    // the collective itself keeps reading the local one.
    g.replace_all_uses_with(v, c->out());
    g.set_input(c, 0, v);
    return c;
}

int64_t local_kv_heads(int64_t kv, int tp) { return kv % tp == 0 ? kv / tp : 1; }

}  // namespace

std::vector<Piece> pieces_for_rank(const Segment& s, int rank, int tp, int ep, const std::string& param) {
    switch (s.rule) {
        case SplitRule::kReplicate:
            return {whole_piece(s)};
        case SplitRule::kColwise:
            return {even_part(s, param, 0, tp, rank, "column-wise")};
        case SplitRule::kRowwise:
            return {even_part(s, param, 1, tp, rank, "row-wise")};
        case SplitRule::kColwiseKv: {
            int64_t heads = s.shape[0] / s.granule;
            if (heads % tp == 0) return {even_part(s, param, 0, tp, rank, "column-wise")};
            if (tp % heads == 0) return {slice_piece(s, 0, (rank / (tp / heads)) * s.granule, s.granule)};
            split_error(s, param, "num_key_value_heads=" + std::to_string(heads) + " cannot be split over tp=" + std::to_string(tp) +
                                      " without replication, and tp is not a multiple of it for replication");
        }
        case SplitRule::kVocab: {
            int64_t vocab = s.shape[0], padded = (vocab + tp - 1) / tp * tp, per = padded / tp;
            int64_t start = rank * per, have = std::max<int64_t>(0, std::min(per, vocab - start));
            int64_t row = shape_numel(s.shape) / vocab;
            std::vector<Piece> out;
            if (have > 0) out.push_back(slice_piece(s, 0, start, have));
            if (have < per) out.push_back(Piece{"", Slice::whole(), (per - have) * row, (per - have) * row});
            return out;
        }
        case SplitRule::kExpertColwise:
        case SplitRule::kExpertRowwise: {
            int64_t group_size = tp / ep;
            return {even_part(s, param, s.rule == SplitRule::kExpertColwise ? 0 : 1, group_size, rank % group_size,
                              "within an expert-parallel group")};
        }
    }
    return {};
}

namespace {

// A parameter's pieces on every rank (by_rank) and its local shape; every rank's local
// parameter has the same size (SPMD).
void shard_param(Node& node, int tp, int ep) {
    Node* n = &node;
    ParamSpec& spec = *n->param;
    Shape full = n->out()->shape;
    spec.by_rank.assign(tp, {});
    int64_t experts_local = 0;
    for (int r = 0; r < tp; ++r) {
        int64_t group = r / (tp / ep);
        int64_t elements = 0;
        std::set<int64_t> kept_experts;
        for (const Segment& s : spec.segments) {
            if (s.expert >= 0) {
                int64_t total = spec.stack.at(0);
                if (total % ep != 0)
                    throw Error("cannot shard " + n->name + ": " + std::to_string(total) + " experts cannot be split over ep = " +
                                    std::to_string(ep) + " groups", kExitBadInput);
                int64_t per = total / ep;
                if (s.expert < group * per || s.expert >= (group + 1) * per) continue;
                kept_experts.insert(s.expert);
            }
            for (Piece& p : pieces_for_rank(s, r, tp, ep, n->name)) {
                elements += p.elements;
                spec.by_rank[r].push_back(std::move(p));
            }
        }
        if (r == 0) experts_local = (int64_t)kept_experts.size();
        // SPMD: every rank's local parameter has the same size.
        int64_t first = 0;
        for (const Piece& p : spec.by_rank[0]) first += p.elements;
        if (elements != first)
            throw Error("sharding " + n->name + ": rank " + std::to_string(r) + " would hold " + std::to_string(elements) +
                        " elements but rank 0 holds " + std::to_string(first));
    }
    // Local shape: trailing dims from the first segment's piece, dim 0 from the total.
    int64_t total = 0;
    for (const Piece& p : spec.by_rank[0]) total += p.elements;
    Shape local = full;
    if (!spec.stack.empty()) {
        local[0] = experts_local;
        Shape seg = spec.segments[0].shape;
        const Piece& p0 = spec.by_rank[0][0];
        if (p0.slice.length >= 0) seg[p0.slice.dim] = p0.slice.length;
        local[2] = seg[1];
        local[1] = experts_local ? total / experts_local / local[2] : 0;
    } else if (full.size() >= 2) {
        int64_t trailing = 1;
        Shape seg = spec.segments[0].shape;
        const Piece& p0 = spec.by_rank[0][0];
        if (p0.slice.length >= 0 && !p0.tensor.empty()) seg[p0.slice.dim] = p0.slice.length;
        for (size_t d = 1; d < seg.size(); ++d) trailing *= seg[d];
        for (size_t d = 1; d < full.size(); ++d) local[d] = seg[d];
        local[0] = total / trailing;
    } else {
        local[0] = total;
    }
    n->out()->shape = local;
}

}  // namespace

ShardingReport shard_graph(Graph& g, int tp, int ep) {
    if (tp < 1 || ep < 1 || tp % ep != 0)
        throw Error("sharding: ep = " + std::to_string(ep) + " must divide tp = " + std::to_string(tp), kExitBadInput);
    ShardingReport report;
    // Parameters: pieces per rank and the local shape.
    for (Node* n : g.nodes()) {
        if (!n->param) continue;
        shard_param(*n, tp, ep);
        ++report.params;
    }
    // Ops: local attributes and collectives.
    for (Node* n : g.nodes()) {
        const std::string mode = n->hints.count("tp_mode") ? n->hints.at("tp_mode") : "";
        if (n->op == "rope" || n->op == "attention") {
            n->attrs["heads"] = n->attr_int("heads") / tp;
            n->attrs["kv_heads"] = local_kv_heads(n->attr_int("kv_heads"), tp);
        } else if (n->op == "split" && n->has_attr("segment_counts")) {
            // Sizes of the q, k, v parts of the fused linear's local output.
            Node* w = n->inputs[0]->producer->inputs[1]->producer;
            const auto& counts = std::get<std::vector<int64_t>>(n->attrs.at("segment_counts"));
            int64_t cols = w->out()->shape[1];
            std::vector<int64_t> sizes;
            size_t piece = 0;
            for (int64_t c : counts) {
                int64_t elements = 0;
                for (int64_t k = 0; k < c; ++k) elements += w->param->by_rank[0][piece++].elements;
                sizes.push_back(elements / cols);
            }
            n->attrs["sizes"] = sizes;
        } else if (n->op == "embedding" && mode == "vocab") {
            int64_t vocab = n->attr_int("vocab");
            n->attrs["vocab_per_rank"] = (vocab + tp - 1) / tp;
            if (tp > 1) insert_after(g, n, "all_reduce"), ++report.collectives;
        } else if (n->op == "linear" && mode == "rowwise") {
            if (n->inputs.size() == 3 && tp > 1) throw Error("sharding " + n->name + ": a row-wise linear with a bias is not supported", kExitBadInput);
            if (tp > 1) insert_after(g, n, "all_reduce"), ++report.collectives;
        } else if (n->op == "linear" && mode == "vocab") {
            int64_t vocab = n->inputs[1]->producer->param->segments[0].shape[0];
            if (tp > 1 || (vocab + tp - 1) / tp * tp != vocab)
                insert_after(g, n, "all_gather", {{"world", (int64_t)tp}, {"valid", vocab}}), ++report.collectives;
        } else if (n->op == "moe") {
            n->attrs["experts_per_group"] = n->attr_int("experts") / ep;
            n->attrs["group_size"] = (int64_t)(tp / ep);
            if (tp > 1) insert_after(g, n, "all_reduce"), ++report.collectives;
        }
    }
    g.cleanup();
    g.propagate_shapes();
    return report;
}

int strip_sharding_hints(Graph& g) {
    int n = 0;
    for (Node* node : g.nodes())
        if (!node->hints.empty()) {
            node->hints.clear();
            ++n;
        }
    return n;
}

}  // namespace tpx
