// Three PatternAnalyzers run by one AnalysisPatternManager.
#include "sharding/analysis.h"

#include "common/error.h"
#include "sharding/rewriter.h"

namespace tpx {

int64_t dtype_bytes(const std::string& dtype) {
    if (dtype == "bfloat16" || dtype == "float16") return 2;
    if (dtype == "float32" || dtype == "int32") return 4;
    if (dtype == "float64" || dtype == "int64") return 8;
    throw Error("unknown dtype '" + dtype + "'");
}

namespace {

class WeightBytes : public PatternAnalyzer {
public:
    explicit WeightBytes(GraphCosts& c) : c_(c) {}
    std::vector<std::string> root_ops() const override { return {"param"}; }
    bool match(const Graph&, const Node* n) override { return n->param != nullptr; }
    void analyze(const Graph&, const Node* n) override { c_.weight_bytes += shape_numel(n->out()->shape) * dtype_bytes(n->out()->dtype); }

private:
    GraphCosts& c_;
};

class Flops : public PatternAnalyzer {
public:
    explicit Flops(GraphCosts& c) : c_(c) {}
    std::vector<std::string> root_ops() const override { return {"linear", "moe", "attention"}; }
    bool match(const Graph&, const Node*) override { return true; }
    void analyze(const Graph&, const Node* n) override {
        if (n->op == "linear") {
            double flops = 2.0 * shape_numel(n->inputs[1]->shape);
            c_.flops_per_token += flops;
            if (n->name == "lm_head") c_.head_flops_per_token += flops;
        } else if (n->op == "moe") {
            // Each token visits top_k experts; this rank holds experts/ep of them, each a part.
            double expert_weights = 0;
            for (size_t i = 2; i < n->inputs.size(); ++i) expert_weights += (double)shape_numel(n->inputs[i]->shape);
            double local_experts = (double)n->inputs[2]->shape[0];
            c_.flops_per_token += 2.0 * expert_weights / local_experts * (double)n->attr_int("top_k") * local_experts /
                                  (double)n->attr_int("experts");
        } else {
            c_.attention_flops_per_token_per_position += 4.0 * n->attr_int("heads") * n->attr_int("head_dim");
        }
    }

private:
    GraphCosts& c_;
};

class Collectives : public PatternAnalyzer {
public:
    Collectives(GraphCosts& c, int act_bytes) : c_(c), act_bytes_(act_bytes) {}
    std::vector<std::string> root_ops() const override { return {"all_reduce", "all_gather", "allreduce_add_rmsnorm"}; }
    bool match(const Graph&, const Node*) override { return true; }
    void analyze(const Graph&, const Node* n) override {
        CollectiveCost& cost = c_.collectives[n->op == "all_gather" ? "all_gather" : "all_reduce"];
        ++cost.count;
        cost.bytes_per_token += n->out()->shape.back() * act_bytes_;
    }

private:
    GraphCosts& c_;
    int act_bytes_;
};

}  // namespace

GraphCosts analyze_costs(const Graph& g, int act_bytes) {
    GraphCosts costs;
    AnalysisPatternManager m;
    m.add("weight_bytes", std::make_unique<WeightBytes>(costs));
    m.add("flops", std::make_unique<Flops>(costs));
    m.add("collectives", std::make_unique<Collectives>(costs, act_bytes));
    costs.matches = m.analyze(g);
    return costs;
}

}  // namespace tpx
