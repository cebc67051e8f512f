// The step program's pass (see steps.h). Every decision reads only the graph: a node's op, its
// readers and shapes; the same graph gives the same program on every rank.
#include "sharding/steps.h"

#include <algorithm>
#include <initializer_list>
#include <sstream>

#include "common/kernel_config.h"

namespace tpx {
namespace {

// Splits whose every output is read only as rope's q or k or attention's k or v: their outputs
// can be column views of the input (row stride = the input's width), no copies.
bool split_is_view(const Node* n) {
    bool views = true;
    for (size_t k = 0; k < n->outputs.size(); ++k)
        for (const Node* u : n->outputs[k]->users)
            for (size_t j = 0; j < u->inputs.size(); ++j)
                if (u->inputs[j] == n->outputs[k])
                    views = views && ((u->kind == Op::kRope && j < 2) || (u->kind == Op::kAttention && (j == 1 || j == 2)));
    return views;
}

class DecodeFusionFinder {
public:
    DecodeFusionFinder(const Graph& graph, StepProgram& p) : p_(p), outputs_(graph.outputs().begin(), graph.outputs().end()) {
        for (size_t i = 0; i < p.nodes.size(); ++i) index_[p.nodes[i]] = i;
    }

    // The one node that reads v, and only as its input k; nullptr otherwise.
    const Node* sole_reader(const Value* v, std::initializer_list<size_t> slots) const {
        if (outputs_.count(v) || v->users.size() != 1) return nullptr;
        const Node* u = v->users[0];
        for (size_t j = 0; j < u->inputs.size(); ++j)
            if (u->inputs[j] == v && std::find(slots.begin(), slots.end(), j) == slots.end()) return nullptr;
        return u;
    }

    // The norm whose out(0) only linear n reads, as x, with the linear's K as its width.
    const Node* norm_before(const Node* n) const {
        const Node* p = n->inputs[0]->producer;
        const bool norm = p && (p->kind == Op::kRmsnorm || p->kind == Op::kAddRmsnorm || p->kind == Op::kAllreduceAddRmsnorm);
        return norm && p->outputs[0] == n->inputs[0] && sole_reader(p->outputs[0], {0}) == n &&
                       p->inputs[0]->shape.back() == n->inputs[1]->shape[1]
                   ? p
                   : nullptr;
    }

    // u = the fused QKV split: its q and k only `rope` reads, its v and rope's outputs only
    // `attention`, with the same heads on both and widths that match them.
    void split_rope_attention(const Node* u, DecodeFusion& f) const {
        if (u->outputs.size() != 3) return;
        const Node* rope = sole_reader(u->outputs[0], {0});
        const Node* attn = sole_reader(u->outputs[2], {2});
        if (!rope || rope->kind != Op::kRope || sole_reader(u->outputs[1], {1}) != rope || !attn || attn->kind != Op::kAttention)
            return;
        if (sole_reader(rope->outputs[0], {0}) != attn || sole_reader(rope->outputs[1], {1}) != attn) return;
        const int64_t heads = attn->attr_int("heads"), kv_heads = attn->attr_int("kv_heads"), head_dim = attn->attr_int("head_dim");
        if (rope->attr_int("heads") != heads || rope->attr_int("kv_heads") != kv_heads || rope->attr_int("head_dim") != head_dim) return;
        if (u->outputs[0]->shape.back() != heads * head_dim || u->outputs[1]->shape.back() != kv_heads * head_dim ||
            u->outputs[2]->shape.back() != kv_heads * head_dim)
            return;
        f.split = u, f.rope = rope, f.attention = attn;
    }

    void find(bool exchange) {
        for (const Node* n : p_.nodes) {
            if (n->kind != Op::kLinear || n->inputs.size() < 2) continue;
            DecodeFusion f;
            f.norm = norm_before(n);
            const Node* u = sole_reader(n->out(), {0});
            if (u && u->kind == Op::kSiluMul && u->inputs.size() == 1) f.swiglu = u;
            if (u && u->kind == Op::kSplit) split_rope_attention(u, f);
            // The norm only goes in with an epilogue (lm_head + norm measured slower: docs/PERF.md).
            if (!f.swiglu && !f.split) continue;
            p_.fusions[n] = f;
            if (f.rope) p_.rope_kv_of[f.rope] = f.attention;
            if (f.norm) {
                p_.norm_of[f.norm] = n;
                // The norm's inputs are read by the fused GEMV, later: they live until it.
                for (const Value* v : f.norm->inputs) p_.last_use[v] = std::max(p_.last_use[v], index_.at(n));
            }
        }
        if (!exchange) return;
        // The linear (no epilogue of its own) whose output only a fused all-reduce + norm reads:
        // its GEMV can push its part straight to the ranks, the norm's GEMV sums it.
        for (const auto& [norm, lin] : p_.norm_of) {
            if (norm->kind != Op::kAllreduceAddRmsnorm) continue;
            const Node* p = norm->inputs[0]->producer;
            if (p && p->kind == Op::kLinear && p->inputs.size() >= 2 && !p_.fusions.count(p) && sole_reader(p->out(), {0}) == norm)
                p_.exchange_of[p] = norm;
        }
    }

private:
    StepProgram& p_;
    std::set<const Value*> outputs_;
    std::map<const Node*, size_t> index_;
};

}  // namespace

std::map<const Value*, size_t> last_uses(const Graph& graph, const std::vector<Node*>& nodes) {
    std::map<const Value*, size_t> last;
    for (size_t i = 0; i < nodes.size(); ++i)
        for (const Value* v : nodes[i]->inputs) last[v] = i;
    for (const Value* out : graph.outputs()) last[out] = nodes.size();
    return last;
}

StepProgram plan_steps(const Graph& graph, const StepOptions& options) {
    StepProgram p;
    p.gemv_mma = options.gemv_mma;
    p.batch_gemm = options.batch_gemm;
    p.nodes = graph.nodes();
    p.last_use = last_uses(graph, p.nodes);
    for (const Node* n : p.nodes)
        if (n->kind == Op::kSplit && split_is_view(n)) p.split_views.insert(n);
    DecodeFusionFinder(graph, p).find(options.exchange);
    // A split's input lives as long as its views.
    for (const Node* n : p.split_views)
        for (const Value* o : n->outputs) p.last_use[n->inputs[0]] = std::max(p.last_use[n->inputs[0]], p.last_use[o]);
    if (options.residual_epilogue)
        for (const Node* n : p.nodes) {
            if (n->kind != Op::kLinear || n->inputs.size() != 2 || n->out()->users.size() != 1) continue;
            const Node* u = n->out()->users[0];
            if (u->kind == Op::kAddRmsnorm && u->inputs[0] == n->out() && u->inputs[1] != n->out() &&
                u->inputs[1]->shape.back() == n->out()->shape.back() &&
                std::find(graph.outputs().begin(), graph.outputs().end(), n->out()) == graph.outputs().end())
                p.residual_epilogue[n] = u;
        }
    for (const Node* lin : options.w8a8) {
        const Value* x = lin->inputs[0];
        const Node* n = x->producer;
        const bool writer = n && (n->kind == Op::kRmsnorm || n->kind == Op::kAddRmsnorm || n->kind == Op::kAllreduceAddRmsnorm ||
                                  n->kind == Op::kAttention || n->kind == Op::kSiluMul);
        if (writer && n->out(0) == x && x->users.size() == 1 &&
            std::find(graph.outputs().begin(), graph.outputs().end(), x) == graph.outputs().end())
            p.fp8_input_of[n] = lin;
    }
    return p;
}

std::string StepProgram::describe() const {
    std::ostringstream os;
    for (const Node* n : nodes) {
        if (n->kind == Op::kInput || n->kind == Op::kParam) continue;
        if (norm_of.count(n) || (n->kind == Op::kSplit && [&] {
                for (const auto& [lin, f] : fusions)
                    if (f.split == n) return true;
                return false;
            }()))
            continue;  // printed with the GEMV that takes it in
        bool taken = false;
        for (const auto& [lin, f] : fusions) taken = taken || f.swiglu == n || f.rope == n;
        if (taken) continue;
        os << n->name << ": ";
        auto it = fusions.find(n);
        if (it != fusions.end()) {
            const DecodeFusion& f = it->second;
            os << "decode GEMV (" << fused_decode_tokens(gemv_mma, batch_gemm) << ")";
            if (f.norm) os << " with " << f.norm->op << " (" << f.norm->name << ") before at one token";
            if (f.swiglu) os << ", SwiGLU (" << f.swiglu->name << ") after";
            if (f.split) os << ", RoPE (" << f.rope->name << ") and the KV-cache write of " << f.attention->name << " after";
            if (f.split && rope_kv_of.count(f.rope))
                os << "; where no GEMV takes it (prefill, larger batches), " << f.rope->name << " writes K and V into "
                   << rope_kv_of.at(f.rope)->name << "'s cache, or in a decode step through the one-pass kernel "
                   << rope_kv_of.at(f.rope)->name << " does the RoPE and that write itself";
        } else if (exchange_of.count(n)) {
            os << "linear; batch 1: GEMV pushing its all-reduce, summed by the GEMV of " << norm_of.at(exchange_of.at(n))->name;
        } else if (residual_epilogue.count(n)) {
            os << "linear; 9 rows or more: the residual of " << residual_epilogue.at(n)->name << " added in the GEMM's epilogue";
        } else if (n->kind == Op::kSplit && split_views.count(n)) {
            os << "split as column views (no copies)";
        } else {
            os << n->op;
        }
        for (const auto& [writer, lin] : fp8_input_of)
            if (lin == n) os << "; w8a8 prefill: its input in e4m3 from " << writer->name;
        os << "\n";
    }
    return os.str();
}

}  // namespace tpx
