// Graph rewriting in the manner of TensorRT-LLM's Graph Rewriting module. A PatternRewriter
// matches at a root node and rewrites there; a PatternAnalyzer matches and records facts.
// RewritePatternManager holds labelled patterns with a benefit and applies them in benefit order:
//
//   RewritePatternManager::rewrite(graph): patterns sorted by benefit, highest first (ties in
//   the order they were added). Sweep: for each pattern in that order, visit every live node in
//   topological order whose op passes the pattern's root filter, and try match_and_rewrite.
//   After a sweep that changed anything the graph is cleaned and the next sweep starts again
//   from the highest benefit; it stops after a sweep with no change (a fixpoint) or, as a guard
//   against patterns that undo each other, after `max_sweeps`. Removed nodes are never visited.
//
//   AnalysisPatternManager::analyze(graph): one pass per analyzer, in the order they were added
//   (analyzers only record facts, so no order among them changes a result).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sharding/graph.h"

namespace tpx {

class PatternRewriter {
public:
    virtual ~PatternRewriter() = default;
    // Ops a root may have; empty = every op.
    virtual std::vector<std::string> root_ops() const { return {}; }
    virtual bool match(Graph&, Node*) { return false; }
    virtual void rewrite(Graph&, Node*) {}
    // Default: match, then rewrite. Override for patterns that find and rewrite in one step.
    virtual bool match_and_rewrite(Graph& g, Node* root) {
        if (!match(g, root)) return false;
        rewrite(g, root);
        return true;
    }
};

class PatternAnalyzer {
public:
    virtual ~PatternAnalyzer() = default;
    virtual std::vector<std::string> root_ops() const { return {}; }
    virtual bool match(const Graph&, const Node*) { return false; }
    virtual void analyze(const Graph&, const Node*) {}
    virtual bool match_and_analyze(const Graph& g, const Node* root) {
        if (!match(g, root)) return false;
        analyze(g, root);
        return true;
    }
};

template <typename Pattern>
struct LabelledPattern {
    std::string label;
    std::unique_ptr<Pattern> pattern;
    int benefit;
    size_t order;
};

class RewritePatternManager {
public:
    void add(const std::string& label, std::unique_ptr<PatternRewriter> pattern, int benefit = 1);
    PatternRewriter* get(const std::string& label) const;
    // Labels in the order rewrite() tries them.
    std::vector<std::string> labels_by_benefit() const;
    // Returns the number of rewrites made; `per_label` (if given) gets them per label.
    int rewrite(Graph& g, int max_sweeps = 100, std::vector<std::pair<std::string, int>>* per_label = nullptr);

private:
    std::vector<LabelledPattern<PatternRewriter>> patterns_;
};

struct LabelledAnalyzer {
    std::string label;
    std::unique_ptr<PatternAnalyzer> pattern;
};

class AnalysisPatternManager {
public:
    void add(const std::string& label, std::unique_ptr<PatternAnalyzer> pattern);
    PatternAnalyzer* get(const std::string& label) const;
    // Returns the number of matches over all analyzers.
    int analyze(const Graph& g);

private:
    std::vector<LabelledAnalyzer> patterns_;
};

}  // namespace tpx
