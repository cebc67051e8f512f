// The fusion patterns. Every rewrite builds the new nodes, moves the uses over with
// replace_all_uses_with and marks the old nodes removed; cleanup drops the dead params.
#include "sharding/fusion.h"

#include <algorithm>

namespace tpx {
namespace {

Node* producer_op(Value* v, const char* op) { return v && v->producer && v->producer->op == op ? v->producer : nullptr; }

bool single_user(Value* v) { return v->users.size() == 1; }

ParamSpec& spec_of(Value* param) { return *param->producer->param; }

// A param whose segments are the concatenation of the given params' segments (dim 0).
Value* concat_params(Graph& g, const std::string& name, const std::vector<Value*>& parts) {
    auto spec = std::make_shared<ParamSpec>();
    Shape shape = parts[0]->shape;
    shape[0] = 0;
    for (Value* p : parts) {
        const ParamSpec& s = spec_of(p);
        spec->segments.insert(spec->segments.end(), s.segments.begin(), s.segments.end());
        shape[0] += p->shape[0];
    }
    return g.add_param(name, shape, spec, parts[0]->dtype)->out();
}

std::string prefix_of(const std::string& name) { return name.substr(0, name.rfind('.') + 1); }

class QkvFusion : public PatternRewriter {
public:
    std::vector<std::string> root_ops() const override { return {"rope"}; }
    bool match(Graph&, Node* rope) override {
        q_ = producer_op(rope->inputs[0], "linear");
        k_ = producer_op(rope->inputs[1], "linear");
        attn_ = rope->out(0)->users.size() == 1 ? rope->out(0)->users[0] : nullptr;
        if (!q_ || !k_ || !attn_ || attn_->op != "attention") return false;
        v_ = producer_op(attn_->inputs[2], "linear");
        if (!v_) return false;
        Value* x = q_->inputs[0];
        for (Node* n : {q_, k_, v_})
            if (n->inputs[0] != x || n->inputs.size() != q_->inputs.size() || !single_user(n->out()) || !n->inputs[1]->producer->param)
                return false;
        return true;
    }
    void rewrite(Graph& g, Node* rope) override {
        std::string p = prefix_of(q_->name);
        Value* w = concat_params(g, p + "qkv_proj.weight", {q_->inputs[1], k_->inputs[1], v_->inputs[1]});
        std::vector<Value*> ins = {q_->inputs[0], w};
        if (q_->inputs.size() == 3)  // fold the three biases into the fused linear's one bias
            ins.push_back(concat_params(g, p + "qkv_proj.bias", {q_->inputs[2], k_->inputs[2], v_->inputs[2]}));
        Node* fused = g.add("linear", p + "qkv_proj", ins, {{kTokens, w->shape[0]}});
        fused->hints = {{"tp_mode", "fused"}, {"layer_type", "attention"}};
        if (q_->hints.count("min_local_shape")) fused->hints["min_local_shape"] = q_->hints.at("min_local_shape");
        auto count = [](Node* n) { return (int64_t)n->inputs[1]->producer->param->segments.size(); };
        Node* split = g.add("split", p + "qkv_split", {fused->out()}, {q_->out()->shape, k_->out()->shape, v_->out()->shape},
                            {{"sizes", std::vector<int64_t>{q_->out()->shape[1], k_->out()->shape[1], v_->out()->shape[1]}},
                             {"segment_counts", std::vector<int64_t>{count(q_), count(k_), count(v_)}}});
        g.replace_all_uses_with(q_->out(), split->out(0));
        g.replace_all_uses_with(k_->out(), split->out(1));
        g.replace_all_uses_with(v_->out(), split->out(2));
        for (Node* n : {q_, k_, v_}) g.mark_removed(n);
        (void)rope;
    }

private:
    Node *q_ = nullptr, *k_ = nullptr, *v_ = nullptr, *attn_ = nullptr;
};

class GateUpFusion : public PatternRewriter {
public:
    std::vector<std::string> root_ops() const override { return {"silu_mul", "moe"}; }
    bool match_and_rewrite(Graph& g, Node* root) override {
        return root->op == "silu_mul" ? fuse_dense(g, root) : fuse_experts(g, root);
    }

private:
    bool fuse_dense(Graph& g, Node* act) {
        if (act->inputs.size() != 2) return false;
        Node* gate = producer_op(act->inputs[0], "linear");
        Node* up = producer_op(act->inputs[1], "linear");
        if (!gate || !up || gate->inputs[0] != up->inputs[0] || gate->inputs.size() != 2 || up->inputs.size() != 2 ||
            !single_user(gate->out()) || !single_user(up->out()))
            return false;
        std::string p = prefix_of(gate->name);
        Value* w = concat_params(g, p + "gate_up_proj.weight", {gate->inputs[1], up->inputs[1]});
        Node* fused = g.add("linear", p + "gate_up_proj", {gate->inputs[0], w}, {{kTokens, w->shape[0]}});
        fused->hints = {{"tp_mode", "fused"}, {"layer_type", "mlp"}};
        Node* fused_act = g.add("silu_mul", act->name + "_fused", {fused->out()}, {act->out()->shape});
        g.replace_all_uses_with(act->out(), fused_act->out());
        for (Node* n : {act, gate, up}) g.mark_removed(n);
        return true;
    }

    // moe(x, logits, w1, w3, w2) -> moe(x, logits, w13, w2) with w13 = [w1_e; w3_e] per expert.
    bool fuse_experts(Graph& g, Node* moe) {
        if (moe->inputs.size() != 5) return false;
        Value* w1 = moe->inputs[2];
        Value* w3 = moe->inputs[3];
        const ParamSpec &s1 = spec_of(w1), &s3 = spec_of(w3);
        if (s1.segments.size() != s3.segments.size() || s1.stack != s3.stack) return false;
        auto spec = std::make_shared<ParamSpec>();
        spec->stack = s1.stack;
        for (size_t e = 0; e < s1.segments.size(); ++e) {
            spec->segments.push_back(s1.segments[e]);
            spec->segments.push_back(s3.segments[e]);
        }
        Shape shape = w1->shape;
        shape[1] *= 2;
        Value* w13 = g.add_param(prefix_of(moe->name) + "w13", shape, spec, w1->dtype)->out();
        Node* fused = g.add("moe", moe->name + "_fused", {moe->inputs[0], moe->inputs[1], w13, moe->inputs[4]}, {moe->out()->shape}, moe->attrs);
        fused->hints = moe->hints;
        g.replace_all_uses_with(moe->out(), fused->out());
        g.mark_removed(moe);
        return true;
    }
};

// Finds add(residual, all_reduce(y)) feeding `norm`; returns the add or nullptr.
Node* residual_add(Node* norm) {
    Node* add = producer_op(norm->inputs[0], "add");
    return add;
}

class AllReduceAddRmsNormFusion : public PatternRewriter {
public:
    std::vector<std::string> root_ops() const override { return {"rmsnorm"}; }
    bool match_and_rewrite(Graph& g, Node* norm) override {
        Node* add = residual_add(norm);
        if (!add) return false;
        for (int side = 0; side < 2; ++side) {
            Node* ar = producer_op(add->inputs[side], "all_reduce");
            if (!ar || !single_user(ar->out())) continue;
            Value* residual = add->inputs[1 - side];
            Node* fused = g.add("allreduce_add_rmsnorm", norm->name + "_fused", {ar->inputs[0], residual, norm->inputs[1]},
                                {norm->out()->shape, add->out()->shape}, norm->attrs);
            g.replace_all_uses_with(norm->out(), fused->out(0));
            g.replace_all_uses_with(add->out(), fused->out(1));
            for (Node* n : {norm, add, ar}) g.mark_removed(n);
            return true;
        }
        return false;
    }
};

class AddRmsNormFusion : public PatternRewriter {
public:
    std::vector<std::string> root_ops() const override { return {"rmsnorm"}; }
    bool match_and_rewrite(Graph& g, Node* norm) override {
        Node* add = residual_add(norm);
        if (!add) return false;
        // The residual stream is the add's first input (the factory's order).
        Node* fused = g.add("add_rmsnorm", norm->name + "_fused", {add->inputs[1], add->inputs[0], norm->inputs[1]},
                            {norm->out()->shape, add->out()->shape}, norm->attrs);
        g.replace_all_uses_with(norm->out(), fused->out(0));
        g.replace_all_uses_with(add->out(), fused->out(1));
        g.mark_removed(norm);
        g.mark_removed(add);
        return true;
    }
};

int run_one(Graph& g, const char* label, std::unique_ptr<PatternRewriter> p) {
    RewritePatternManager m;
    m.add(label, std::move(p));
    int n = m.rewrite(g);
    g.cleanup();
    return n;
}

}  // namespace

std::unique_ptr<PatternRewriter> make_qkv_fusion() { return std::make_unique<QkvFusion>(); }
std::unique_ptr<PatternRewriter> make_gate_up_fusion() { return std::make_unique<GateUpFusion>(); }
std::unique_ptr<PatternRewriter> make_allreduce_add_rmsnorm_fusion() { return std::make_unique<AllReduceAddRmsNormFusion>(); }
std::unique_ptr<PatternRewriter> make_add_rmsnorm_fusion() { return std::make_unique<AddRmsNormFusion>(); }

int fuse_qkv(Graph& g) { return run_one(g, "qkv", make_qkv_fusion()); }
int fuse_gate_up(Graph& g) { return run_one(g, "gate_up", make_gate_up_fusion()); }

int fuse_allreduce_residual_rmsnorm(Graph& g) {
    RewritePatternManager m;
    m.add("allreduce_add_rmsnorm", make_allreduce_add_rmsnorm_fusion(), 2);
    m.add("add_rmsnorm", make_add_rmsnorm_fusion(), 1);
    int n = m.rewrite(g);
    g.cleanup();
    return n;
}

}  // namespace tpx
