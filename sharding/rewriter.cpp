// The pattern managers: rewriters ordered by benefit and swept to a fixpoint, analyzers in turn; root filtering.
#include "sharding/rewriter.h"

#include <algorithm>

#include "common/error.h"

namespace tpx {
namespace {

template <typename P>
std::vector<P*> sorted(std::vector<P>& v) {
    std::vector<P*> out;
    for (auto& p : v) out.push_back(&p);
    std::stable_sort(out.begin(), out.end(), [](const P* a, const P* b) { return a->benefit > b->benefit; });
    return out;
}

bool passes(const std::vector<std::string>& ops, const Node* n) {
    return ops.empty() || std::find(ops.begin(), ops.end(), n->op) != ops.end();
}

template <typename P>
void check_new_label(const std::vector<P>& v, const std::string& label) {
    for (const auto& p : v)
        if (p.label == label) throw Error("pattern label '" + label + "' is already registered");
}

}  // namespace

void RewritePatternManager::add(const std::string& label, std::unique_ptr<PatternRewriter> pattern, int benefit) {
    check_new_label(patterns_, label);
    patterns_.push_back({label, std::move(pattern), benefit, patterns_.size()});
}

PatternRewriter* RewritePatternManager::get(const std::string& label) const {
    for (const auto& p : patterns_)
        if (p.label == label) return p.pattern.get();
    return nullptr;
}

std::vector<std::string> RewritePatternManager::labels_by_benefit() const {
    std::vector<const LabelledPattern<PatternRewriter>*> order;
    for (const auto& p : patterns_) order.push_back(&p);
    std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->benefit > b->benefit; });
    std::vector<std::string> out;
    for (auto* p : order) out.push_back(p->label);
    return out;
}

int RewritePatternManager::rewrite(Graph& g, int max_sweeps, std::vector<std::pair<std::string, int>>* per_label) {
    int total = 0;
    std::vector<LabelledPattern<PatternRewriter>*> order = sorted(patterns_);
    if (per_label)
        for (auto* p : order) per_label->push_back({p->label, 0});
    for (int sweep = 0; sweep < max_sweeps; ++sweep) {
        bool changed = false;
        for (size_t i = 0; i < order.size() && !changed; ++i) {
            auto* p = order[i];
            std::vector<std::string> roots = p->pattern->root_ops();
            for (Node* n : g.nodes()) {
                if (n->removed || !passes(roots, n)) continue;  // an earlier rewrite may have removed it
                if (p->pattern->match_and_rewrite(g, n)) {
                    changed = true;
                    ++total;
                    if (per_label) ++(*per_label)[i].second;
                }
            }
        }
        if (!changed) return total;
        g.cleanup();
    }
    return total;
}

void AnalysisPatternManager::add(const std::string& label, std::unique_ptr<PatternAnalyzer> pattern) {
    check_new_label(patterns_, label);
    patterns_.push_back({label, std::move(pattern)});
}

PatternAnalyzer* AnalysisPatternManager::get(const std::string& label) const {
    for (const auto& p : patterns_)
        if (p.label == label) return p.pattern.get();
    return nullptr;
}

int AnalysisPatternManager::analyze(const Graph& g) {
    int matches = 0;
    for (const LabelledAnalyzer& p : patterns_) {
        std::vector<std::string> roots = p.pattern->root_ops();
        for (Node* n : g.nodes())
            if (passes(roots, n) && p.pattern->match_and_analyze(g, n)) ++matches;
    }
    return matches;
}

}  // namespace tpx
