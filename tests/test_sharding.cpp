// The planner: graph IR and rewriter semantics, config dialects, and the sharding plan as a
// property: for every golden model at tp = 1, 2, 4 (and mixtral-moe with ep = 2, 4 at tp = 4),
// the ranks' pieces, read with the loader and put back together, equal every original tensor
// exactly. Real-scale plans are checked against the parameter counts of the published configs.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "jobs/parse.h"
#include "loader/checkpoint.h"
#include "process.h"
#include "sharding/analysis.h"
#include "sharding/factory.h"
#include "sharding/fusion.h"
#include "sharding/kv_cache.h"
#include "sharding/plan.h"
#include "sharding/steps.h"
#include "sharding/rewriter.h"
#include "sharding/tp_sharding.h"

namespace fs = std::filesystem;
using namespace tpx;

namespace {

const std::string kData = TPX_TEST_DATA;

Job job_for(const std::string& model, int tp, int ep, const std::string& extra = "") {
    std::string text = "[model]\npath = \"" + model + "\"\n[parallel]\ntp = " + std::to_string(tp) + "\nep = " + std::to_string(ep) +
                       "\n[backend]\ndevice = \"cuda\"\n" + extra;
    return parse_job(text, "test.toml", kData);
}

// A small chain graph: x -> a -> b -> c, each op "neg" with one input.
struct Chain {
    Graph g;
    Value* x;
    Node *a, *b, *c;
    Chain() {
        x = g.add("input", "x", {}, {{kTokens, 4}})->out();
        a = g.add("neg", "a", {x}, {{kTokens, 4}});
        b = g.add("neg", "b", {a->out()}, {{kTokens, 4}});
        c = g.add("neg", "c", {b->out()}, {{kTokens, 4}});
        g.mark_output(c->out());
    }
};

// neg(neg(v)) -> v: removes pairs; reaching a fixpoint needs several sweeps on long chains.
class DoubleNegation : public PatternRewriter {
public:
    std::vector<std::string> root_ops() const override { return {"neg"}; }
    bool match(Graph&, Node* n) override { return n->inputs[0]->producer && n->inputs[0]->producer->op == "neg"; }
    void rewrite(Graph& g, Node* n) override {
        Node* inner = n->inputs[0]->producer;
        g.replace_all_uses_with(n->out(), inner->inputs[0]);
        g.mark_removed(n);
        if (inner->out()->users.empty()) g.mark_removed(inner);
        ++calls;
    }
    int calls = 0;
};

// Renames the op of every root to `to`; records the order in which it saw nodes.
class Rename : public PatternRewriter {
public:
    Rename(std::string from, std::string to, std::vector<std::string>* log) : from_(std::move(from)), to_(std::move(to)), log_(log) {}
    std::vector<std::string> root_ops() const override { return {from_}; }
    bool match(Graph&, Node*) override { return true; }
    void rewrite(Graph&, Node* n) override {
        log_->push_back(to_ + ":" + n->name);
        n->op = to_;
    }

private:
    std::string from_, to_;
    std::vector<std::string>* log_;
};

class CountOps : public PatternAnalyzer {
public:
    explicit CountOps(std::string op) : op_(std::move(op)) {}
    std::vector<std::string> root_ops() const override { return {op_}; }
    bool match(const Graph&, const Node*) override { return true; }
    void analyze(const Graph&, const Node*) override { ++count; }
    int count = 0;

private:
    std::string op_;
};

}  // namespace

TEST(Graph, ReplaceAllUsesWithMovesUsersAndOutputs) {
    Chain ch;
    Value* y = ch.g.add("input", "y", {}, {{kTokens, 4}})->out();
    ch.g.replace_all_uses_with(ch.a->out(), y);
    EXPECT_EQ(ch.b->inputs[0], y);
    EXPECT_TRUE(ch.a->out()->users.empty());
    ASSERT_EQ(y->users.size(), 1u);
    ch.g.replace_all_uses_with(ch.c->out(), y);
    EXPECT_EQ(ch.g.outputs()[0], y);
    // a, b and c no longer feed the output: cleanup drops all three.
    EXPECT_EQ(ch.g.cleanup(), 4);  // x is dead too
    EXPECT_EQ(ch.g.size(), 1u);
    EXPECT_TRUE(ch.g.is_clean());
}

// Op names are parsed into the enum once, when a node is made or read back; a name tpx has no
// op for is kUnknown (an executor refuses it).
TEST(Graph, OpKindsAreParsedOnceFromTheirNames) {
    Graph g;
    Value* x = g.add("input", "x", {}, {{kTokens, 4}})->out();
    Node* n = g.add("allreduce_add_rmsnorm", "n", {x}, {{kTokens, 4}, {kTokens, 4}});
    Node* odd = g.add("neg", "odd", {x}, {{kTokens, 4}});
    g.mark_output(n->out());
    g.mark_output(odd->out());
    EXPECT_EQ(n->kind, Op::kAllreduceAddRmsnorm);
    EXPECT_EQ(odd->kind, Op::kUnknown);
    EXPECT_STREQ(op_name(Op::kAllGather), "all_gather");
    for (Op op : {Op::kInput, Op::kParam, Op::kEmbedding, Op::kRmsnorm, Op::kAdd, Op::kAddRmsnorm, Op::kAllreduceAddRmsnorm,
                  Op::kLinear, Op::kSplit, Op::kRope, Op::kAttention, Op::kSiluMul, Op::kMoe, Op::kAllReduce, Op::kAllGather})
        EXPECT_EQ(parse_op(op_name(op)), op) << op_name(op);
    Graph back = Graph::from_json(g.to_json());
    EXPECT_EQ(back.find("n")->kind, Op::kAllreduceAddRmsnorm);
    EXPECT_EQ(back.find("odd")->kind, Op::kUnknown);
}

TEST(Graph, CleanupRestoresTopologicalOrder) {
    Graph g;
    Value* x = g.add("input", "x", {}, {{kTokens, 4}})->out();
    Node* late = g.add("neg", "late", {x}, {{kTokens, 4}});
    Node* early = g.add("neg", "early", {x}, {{kTokens, 4}});
    g.set_input(late, 0, early->out());  // late now reads a node that comes after it
    g.mark_output(late->out());
    EXPECT_FALSE(g.is_clean());
    g.cleanup();
    EXPECT_TRUE(g.is_clean());
    std::vector<Node*> order = g.nodes();
    ASSERT_EQ(order.size(), 3u);
    EXPECT_EQ(order[1]->name, "early");
    EXPECT_EQ(order[2]->name, "late");
}

TEST(Rewriter, FixpointAndRemovedNodesSkipped) {
    Graph g;
    Value* v = g.add("input", "x", {}, {{kTokens, 4}})->out();
    for (int i = 0; i < 7; ++i) v = g.add("neg", "n" + std::to_string(i), {v}, {{kTokens, 4}})->out();
    g.mark_output(v);
    RewritePatternManager m;
    auto pattern = std::make_unique<DoubleNegation>();
    DoubleNegation* p = pattern.get();
    m.add("double_neg", std::move(pattern));
    int n = m.rewrite(g);
    // Seven negations leave one; every rewrite was counted, none ran on a removed node.
    EXPECT_EQ(n, 3);
    EXPECT_EQ(p->calls, 3);
    int negs = 0;
    for (Node* node : g.nodes()) negs += node->op == "neg";
    EXPECT_EQ(negs, 1);
    EXPECT_EQ(m.rewrite(g), 0) << "a second run finds the fixpoint at once";
    EXPECT_EQ(m.get("double_neg"), p);
    EXPECT_EQ(m.get("nope"), nullptr);
}

TEST(Rewriter, PatternsRunInBenefitOrder) {
    // Both patterns match "neg"; the higher benefit one must take every node first, whatever
    // the order they were added in.
    for (bool high_first : {false, true}) {
        Chain ch;
        std::vector<std::string> log;
        RewritePatternManager m;
        if (high_first) m.add("to_high", std::make_unique<Rename>("neg", "high", &log), 5);
        m.add("to_low", std::make_unique<Rename>("neg", "low", &log), 1);
        if (!high_first) m.add("to_high", std::make_unique<Rename>("neg", "high", &log), 5);
        EXPECT_EQ((m.labels_by_benefit()), (std::vector<std::string>{"to_high", "to_low"}));
        EXPECT_EQ(m.rewrite(ch.g), 3);
        EXPECT_EQ(log, (std::vector<std::string>{"high:a", "high:b", "high:c"}));
    }
    RewritePatternManager m;
    m.add("x", std::make_unique<DoubleNegation>());
    EXPECT_THROW(m.add("x", std::make_unique<DoubleNegation>()), Error);
}

TEST(Rewriter, AnalyzersCount) {
    Chain ch;
    AnalysisPatternManager m;
    auto negs = std::make_unique<CountOps>("neg");
    auto inputs = std::make_unique<CountOps>("input");
    CountOps *n = negs.get(), *i = inputs.get();
    m.add("negs", std::move(negs));
    m.add("inputs", std::move(inputs));
    EXPECT_EQ(m.analyze(ch.g), 4);
    EXPECT_EQ(n->count, 3);
    EXPECT_EQ(i->count, 1);
    // Removed nodes are not counted.
    ch.g.mark_removed(ch.c);
    n->count = 0;
    m.analyze(ch.g);
    EXPECT_EQ(n->count, 2);
}

TEST(Fusion, QkvGateUpAndAllReduceNormFusionsOnLlama) {
    auto ckpt = Checkpoint::open(kData + "/golden/qwen2-bias");
    ModelConfig c = parse_model_config(ckpt->config_json(), "config.json");
    Graph g = build_model(c, "bfloat16");
    auto count = [&](const char* op) {
        int k = 0;
        for (Node* n : g.nodes()) k += n->op == op;
        return k;
    };
    EXPECT_EQ(count("linear"), 7 * c.num_layers + 1);
    EXPECT_EQ(fuse_qkv(g), c.num_layers);
    EXPECT_EQ(fuse_gate_up(g), c.num_layers);
    EXPECT_EQ(count("linear"), 4 * c.num_layers + 1);  // qkv, o, gate_up, down
    // The q/k/v biases are folded into one bias of the fused linear.
    Node* qkv = g.find("layers.0.attn.qkv_proj");
    ASSERT_NE(qkv, nullptr);
    ASSERT_EQ(qkv->inputs.size(), 3u);
    EXPECT_EQ(qkv->inputs[2]->producer->param->segments.size(), 3u);
    shard_graph(g, 2, 1);
    EXPECT_EQ(count("all_reduce"), 2 * c.num_layers + 1);
    int fused = fuse_allreduce_residual_rmsnorm(g);
    // Every all_reduce of o/down feeds a residual add and a norm, except the last down_proj's,
    // which feeds the final norm too: 2 per layer.
    EXPECT_EQ(fused, 2 * (int)c.num_layers);
    EXPECT_EQ(count("allreduce_add_rmsnorm"), 2 * c.num_layers);
    EXPECT_EQ(count("all_reduce"), 1);  // the embedding's
    g.propagate_shapes();
}

// The step program of llama-gqa (2 layers) as the worker runs it (the plan, then the post-load
// fusion): per layer, the qkv GEMV takes in its norm, the split, RoPE and the cache write, and
// gate_up its norm and SwiGLU; at tp=2 with exchanges the GEMVs of o_proj and down_proj push
// their all-reduces except the last down_proj's (its sum feeds the final norm, which lm_head's
// GEMV does not take in): 3, as test_gpu_run's log check counts on the GPU; at tp=1 those
// projections add the residual in their GEMMs (not GEMVs) instead.
TEST(Steps, FusionsAreDecidedFromTheGraphOnce) {
    for (int tp : {1, 2}) {
        SCOPED_TRACE("tp=" + std::to_string(tp));
        ShardPlan plan = make_plan(job_for(kData + "/golden/llama-gqa", tp, 1));
        fuse_allreduce_residual_rmsnorm(plan.graph);
        plan.graph.cleanup();
        const int64_t layers = plan.config.num_layers;
        ASSERT_EQ(layers, 2);
        StepProgram p = plan_steps(plan.graph, {true, tp > 1});
        int swiglu = 0, split = 0, norms = 0;
        for (const auto& [lin, f] : p.fusions) swiglu += f.swiglu != nullptr, split += f.split != nullptr, norms += f.norm != nullptr;
        EXPECT_EQ(swiglu, layers);
        EXPECT_EQ(split, layers);
        EXPECT_EQ(norms, 2 * layers);
        EXPECT_EQ((int64_t)p.norm_of.size(), 2 * layers);
        EXPECT_EQ((int64_t)p.split_views.size(), layers);
        EXPECT_EQ((int64_t)p.rope_kv_of.size(), layers);
        for (const auto& [rope, attn] : p.rope_kv_of) EXPECT_EQ(attn->inputs[1]->producer, rope) << rope->name;
        EXPECT_EQ((int64_t)p.exchange_of.size(), tp > 1 ? 2 * layers - 1 : 0);
        EXPECT_EQ((int64_t)p.residual_epilogue.size(), tp > 1 ? 0 : 2 * layers);
        // A fused norm's inputs live until the GEMV that computes it.
        std::map<const Node*, size_t> index;
        for (size_t i = 0; i < p.nodes.size(); ++i) index[p.nodes[i]] = i;
        for (const auto& [norm, lin] : p.norm_of)
            for (const Value* v : norm->inputs) EXPECT_GE(p.last_use.at(v), index.at(lin)) << norm->name;
        std::string text = p.describe();
        EXPECT_NE(text.find("decode GEMV (1 to 8 tokens) with"), std::string::npos) << text;
        EXPECT_NE(text.find("(prefill, larger batches), layers.0.attn.rope writes K and V into layers.0.attn.sdpa's cache, or in a "
                            "decode step through the one-pass kernel layers.0.attn.sdpa does the RoPE and that write itself"),
                  std::string::npos)
            << text;
        EXPECT_EQ(plan_steps(plan.graph, {false, false}).residual_epilogue.size(), 0u);
        const std::string batch = plan_steps(plan.graph, {true, tp > 1, {}, true, true}).describe();  // batch_gemm on
        EXPECT_NE(batch.find("decode GEMV (1 to 64 tokens) with"), std::string::npos) << batch;
        // gemv_mma off: 2 to 8 tokens take cuBLAS
        const std::string no_mma = plan_steps(plan.graph, {true, tp > 1, {}, false, true}).describe();
        EXPECT_NE(no_mma.find("decode GEMV (1 and 9 to 64 tokens) with"), std::string::npos) << no_mma;
        EXPECT_NE(plan_steps(plan.graph, {true, tp > 1, {}, false, false}).describe().find("decode GEMV (1 token) with"), std::string::npos);
        EXPECT_TRUE(p.fp8_input_of.empty());
        // Every linear but lm_head taken as w8a8: each reads a norm's, attention's or SwiGLU's
        // output alone, which that kernel then writes in e4m3.
        std::set<const Node*> w8a8;
        for (const Node* n : p.nodes)
            if (n->kind == Op::kLinear && n->name != "lm_head") w8a8.insert(n);
        ASSERT_EQ((int64_t)w8a8.size(), 4 * layers);
        StepProgram q = plan_steps(plan.graph, {true, tp > 1, w8a8});
        std::map<Op, int> writers;
        for (const auto& [writer, lin] : q.fp8_input_of) {
            EXPECT_EQ(lin->inputs[0], writer->out(0)) << writer->name;
            ++writers[writer->kind];
        }
        EXPECT_EQ((int64_t)q.fp8_input_of.size(), 4 * layers);
        EXPECT_EQ(writers[Op::kAttention], layers);
        EXPECT_EQ(writers[Op::kSiluMul], layers);
        EXPECT_NE(q.describe().find("w8a8 prefill: its input in e4m3 from"), std::string::npos);
    }
}

TEST(ModelConfig, BothDialectsAndLlama3Rope) {
    auto legacy = Checkpoint::open(kData + "/golden/llama-sharded");
    ModelConfig a = parse_model_config(legacy->config_json(), "llama-sharded/config.json");
    EXPECT_EQ(a.rope.theta, 500000.0);
    EXPECT_EQ(a.head_dim, 32);  // no head_dim: hidden / heads
    EXPECT_EQ(a.dtype, "bfloat16");
    auto v5 = Checkpoint::open(kData + "/golden/llama-gqa");
    ModelConfig b = parse_model_config(v5->config_json(), "llama-gqa/config.json");
    EXPECT_EQ(b.rope.theta, 10000.0);
    EXPECT_EQ(b.num_kv_heads, 4);
    std::string llama3 = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": null,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}, "rope_theta": 500000.0, "tie_word_embeddings": true})";
    ModelConfig l3 = parse_model_config(llama3, "l3.json");
    EXPECT_EQ(l3.rope.type, "llama3");
    EXPECT_EQ(l3.rope.factor, 32.0);
    EXPECT_EQ(l3.head_dim, 4);
    EXPECT_TRUE(l3.tie_word_embeddings);
    try {
        parse_model_config(R"({"architectures": ["GPT2LMHeadModel"]})", "gpt2.json");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("architecture \"GPT2LMHeadModel\" is not supported (supported: LlamaForCausalLM"), std::string::npos) << e.what();
    }
    try {
        parse_model_config(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10})", "x.json");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("x.json: missing key \"hidden_size\""), std::string::npos) << e.what();
    }
}

// Values the model divides by or sizes with are refused by name, before any shape is built
// from them (a negative head_dim used to surface as a tensor shape [-128, 128]).
TEST(ModelConfig, NonPositiveSizesAndFactorsAreNamed) {
    const std::string base = R"("architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2)";
    const std::string llama3 = R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0})";
    struct {
        std::string extra, message;
    } cases[] = {
        {R"("head_dim": -4)", "\"head_dim\" = -4 must be positive"},
        {R"("head_dim": 0)", "\"head_dim\" = 0 must be positive"},
        {R"("max_position_embeddings": 0)", "\"max_position_embeddings\" = 0 must be positive"},
        {R"("max_position_embeddings": 18446744073709551615)", "\"max_position_embeddings\" = 18446744073709551615 is out of range"},
        {R"("rms_norm_eps": -1e-5)", "\"rms_norm_eps\" = -1e-05 must be zero or positive"},
        {R"("sliding_window": -1)", "\"sliding_window\" = -1 must be zero or positive"},
        {R"("rope_theta": 0)", "\"rope_theta\" = 0 must be positive"},
        {R"("rope_parameters": {"rope_type": "default", "rope_theta": -10000.0})", "\"rope_theta\" = -10000 must be positive"},
        {R"("rope_scaling": {"rope_type": "llama3", "factor": 0.0})", "\"factor\" = 0 must be positive"},
        {R"("rope_scaling": {"rope_type": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 4.0})",
         "\"high_freq_factor\" = 4 must be greater than \"low_freq_factor\" = 4"},
        {R"("rope_scaling": {"rope_type": "llama3", "original_max_position_embeddings": -1})",
         "\"original_max_position_embeddings\" = -1 must be positive"},
    };
    for (const auto& c : cases) {
        try {
            parse_model_config("{" + base + ", " + c.extra + "}", "bad.json");
            ADD_FAILURE() << "accepted: " << c.extra;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("bad.json: " + c.message), std::string::npos) << e.what();
            EXPECT_EQ(e.exit_code(), kExitBadInput);
        }
    }
    // The same keys at sane values, and zero where zero means "none" or "no epsilon", pass.
    ModelConfig ok = parse_model_config("{" + base + R"(, "sliding_window": 0, "rms_norm_eps": 0, )" + llama3 + "}", "ok.json");
    EXPECT_EQ(ok.sliding_window, 0);
    EXPECT_EQ(ok.rope.type, "llama3");
}

namespace {

// Reads one rank's local parameter: its pieces end to end, as the worker will.
std::vector<float> read_local(Checkpoint& c, const std::vector<Piece>& pieces) {
    std::vector<float> out;
    for (const Piece& p : pieces) {
        size_t at = out.size();
        out.resize(at + p.elements, std::nanf(""));
        if (p.tensor.empty()) std::fill(out.begin() + at, out.end(), 0.0f);
        else c.read(p.tensor, p.slice, DType::kF32, out.data() + at);
    }
    return out;
}

// For every parameter: the ranks' local buffers, cut back into their pieces and written at the
// pieces' slice positions, rebuild every source tensor exactly, every element covered, and
// replicas agree. Padding is zeros.
void check_plan_reassembles(const std::string& model, int tp, int ep) {
    SCOPED_TRACE(model + " tp=" + std::to_string(tp) + " ep=" + std::to_string(ep));
    Job job = job_for(kData + "/golden/" + model, tp, ep);
    ShardPlan plan = make_plan(job);
    auto ckpt = Checkpoint::open(job.model.path);
    ASSERT_EQ((int)plan.ranks.size(), tp);
    std::map<std::string, std::vector<float>> rebuilt;
    std::map<std::string, std::vector<int>> covered;
    for (const RankPlan& r : plan.ranks) {
        for (const WeightPlan& w : r.weights) {
            int64_t local = 1;
            for (int64_t d : w.shape) local *= d;
            std::vector<float> buf = read_local(*ckpt, w.pieces);
            ASSERT_EQ((int64_t)buf.size(), local) << w.name << " rank " << r.rank;
            size_t at = 0;
            for (const Piece& p : w.pieces) {
                if (p.tensor.empty()) {
                    for (int64_t i = 0; i < p.zeros; ++i) ASSERT_EQ(buf[at + i], 0.0f);
                    at += p.zeros;
                    continue;
                }
                const TensorInfo& t = ckpt->tensor(p.tensor);
                auto& full = rebuilt[p.tensor];
                auto& cov = covered[p.tensor];
                if (full.empty()) full.assign(t.numel(), 0.0f), cov.assign(t.numel(), 0);
                Slice s = p.slice.length < 0 ? Slice::range(0, 0, t.shape.empty() ? 1 : t.shape[0]) : p.slice;
                int64_t outer = 1, inner = 1;
                for (int d = 0; d < s.dim; ++d) outer *= t.shape[d];
                for (size_t d = s.dim + 1; d < t.shape.size(); ++d) inner *= t.shape[d];
                int64_t k = 0;
                for (int64_t o = 0; o < outer; ++o)
                    for (int64_t i = s.start; i < s.start + s.length; ++i)
                        for (int64_t e = 0; e < inner; ++e, ++k) {
                            int64_t idx = (o * t.shape[s.dim] + i) * inner + e;
                            float v = buf[at + k];
                            if (cov[idx]) {
                                ASSERT_EQ(full[idx], v) << "replicas of " << p.tensor << " disagree";
                            }
                            full[idx] = v;
                            ++cov[idx];
                        }
                at += p.elements;
            }
            EXPECT_EQ(at, buf.size());
        }
    }
    // Every tensor of the checkpoint is used (the tied head uses the embedding twice).
    for (const TensorInfo& t : ckpt->tensors()) {
        ASSERT_TRUE(rebuilt.count(t.name)) << t.name << " is in no rank's plan";
        std::vector<float> whole(t.numel());
        ckpt->read(t.name, Slice::whole(), DType::kF32, whole.data());
        EXPECT_EQ(0, std::memcmp(whole.data(), rebuilt[t.name].data(), whole.size() * 4)) << t.name;
        for (size_t i = 0; i < whole.size(); ++i) ASSERT_GE(covered[t.name][i], 1) << t.name << " element " << i;
    }
}

}  // namespace

TEST(Plan, RankSlicesReassembleEveryTensorExactly) {
    for (const char* m : {"llama-gqa", "llama-sharded", "qwen2-bias", "mixtral-moe"})
        for (int tp : {1, 2, 4}) check_plan_reassembles(m, tp, 1);
    check_plan_reassembles("mixtral-moe", 4, 2);
    check_plan_reassembles("mixtral-moe", 4, 4);
    check_plan_reassembles("mixtral-moe", 2, 2);
}

TEST(Plan, PlannedReadBytesAreWhatTheLoaderReads) {
    Job job = job_for(kData + "/golden/qwen2-bias", 4, 1);
    ShardPlan plan = make_plan(job);
    for (const RankPlan& r : plan.ranks) {
        auto ckpt = Checkpoint::open(job.model.path);
        for (const WeightPlan& w : r.weights) read_local(*ckpt, w.pieces);
        EXPECT_EQ((int64_t)ckpt->stats().data_bytes, r.read_bytes) << "rank " << r.rank;
    }
}

// The KV cache both executors allocate (sharding/kv_cache.h): a layer per attention node, each
// row the rank's KV heads (replicated ones counted once per rank) x head_dim; the plan's
// memory figure is that layout's bytes.
TEST(Plan, KvCacheLayoutIsOneLayerPerAttentionOfTheLocalHeads) {
    ShardPlan plan = make_plan(job_for(kData + "/golden/qwen2-bias", 4, 1));  // 2 KV heads over 4 ranks: 1 each
    KvCacheLayout kv = kv_cache_layout(plan.graph, plan.max_batch, plan.max_seq_len);
    ASSERT_EQ((int64_t)kv.layers.size(), plan.config.num_layers);
    for (size_t i = 0; i < kv.layers.size(); ++i) {
        EXPECT_EQ(kv.layers[i].layer, (int64_t)i);
        EXPECT_EQ(kv.layers[i].width, plan.config.head_dim);
    }
    const int64_t act = dtype_bytes(plan.act_dtype);
    EXPECT_EQ(kv.bytes(act), 2 * plan.config.num_layers * plan.config.head_dim * plan.max_batch * plan.max_seq_len * act);
    for (const RankPlan& r : plan.ranks) EXPECT_EQ(r.kv_cache_bytes, kv.bytes(act)) << "rank " << r.rank;
}

TEST(Plan, KvHeadsReplicatedWhenFewerThanTp) {
    // qwen2-bias has 2 KV heads: at tp = 4 ranks 0,1 hold head 0 and ranks 2,3 head 1.
    ShardPlan plan = make_plan(job_for(kData + "/golden/qwen2-bias", 4, 1));
    for (const RankPlan& r : plan.ranks)
        for (const WeightPlan& w : r.weights)
            if (w.name == "layers.0.attn.qkv_proj.weight") {
                ASSERT_EQ(w.pieces.size(), 3u);
                EXPECT_EQ(w.pieces[1].tensor, "model.layers.0.self_attn.k_proj.weight");
                EXPECT_EQ(w.pieces[1].slice.start, (r.rank / 2) * 16);
                EXPECT_EQ(w.pieces[1].slice.length, 16);
                EXPECT_EQ(w.shape, (Shape{32 + 16 + 16, 128}));
            }
}

namespace {

// The planner's error for the job `text` (a bad-input error: exit 2), or "(planned)".
std::string plan_error(const std::string& text, const std::string& file, const std::string& dir) {
    try {
        make_plan(parse_job(text, file, dir));
    } catch (const Error& e) {
        EXPECT_EQ(e.exit_code(), kExitBadInput) << e.what();
        return e.what();
    }
    return "(planned)";
}

}  // namespace

TEST(Plan, SplitsThatDoNotDivideAreErrorsNamingTheTensor) {
    std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/config.json") << R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 96,
        "intermediate_size": 192, "num_hidden_layers": 1, "num_attention_heads": 12, "num_key_value_heads": 4})";
    const std::string m = plan_error("[model]\npath = \"" + dir + "\"\n[parallel]\ntp = 6\n", "kv.toml", dir);
    EXPECT_NE(m.find("tensor 'model.layers.0.self_attn.k_proj.weight' [32, 96]"), std::string::npos) << m;
    EXPECT_NE(m.find("num_key_value_heads=4 cannot be split over tp=6"), std::string::npos) << m;
    // o_proj (96 input features) cannot be cut in 5 either: the first parameter met is named.
    const std::string m5 = plan_error("[model]\npath = \"" + dir + "\"\n[parallel]\ntp = 5\n", "q.toml", dir);
    EXPECT_NE(m5.find("self_attn.o_proj.weight' [96, 96]): dim 1 = 96 cannot be split row-wise into 5 parts"), std::string::npos) << m5;
    fs::remove_all(dir);
}

// A model's own position count past what run.max_seq_len may be is refused when the job leaves
// max_seq_len to it (the KV cache's sizes would overflow), and taken when the job sets its own.
TEST(Plan, AModelsHugePositionCountNeedsTheJobsMaxSeqLen) {
    std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/config.json") << R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 96,
        "intermediate_size": 192, "num_hidden_layers": 1, "num_attention_heads": 12, "max_position_embeddings": 288230376151711744})";
    const std::string m = plan_error("[model]\npath = \"" + dir + "\"\n", "j.toml", dir);
    EXPECT_NE(m.find(dir + "/config.json: max_position_embeddings = 288230376151711744 is past the 1073741824 positions a KV cache may "
                           "hold: set run.max_seq_len in j.toml"),
              std::string::npos)
        << m;
    EXPECT_EQ(make_plan(parse_job("[model]\npath = \"" + dir + "\"\n[run]\nmax_seq_len = 64\n", "j.toml", dir)).max_seq_len, 64);
    fs::remove_all(dir);
}

TEST(Plan, Llama70bAtTp8MatchesTheParameterCount) {
    auto r = tpx_test::run_process("cd " + tpx_test::temp_dir() + " && printf '[model]\\npath = \"" + kData +
                                   "/configs/llama-3-70b\"\\n[parallel]\\ntp = 1\\n[backend]\\ndevice = \"cuda\"\\n' > j.toml && " +
                                   tpx_test::tpx_bin("tpx") + " plan j.toml --world 8 --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json j = nlohmann::json::parse(r.out);
    ASSERT_EQ(j["ranks"].size(), 8u);
    // 70.55 B parameters in bf16 = 141.1 GB; the norms (2 per layer + the final one) are on
    // every rank, the rest is split 8 ways.
    double norms = (2 * 80 + 1) * 8192 * 2.0;
    double expected = (141.1e9 - norms) / 8 + norms;
    for (const auto& rank : j["ranks"]) {
        double w = rank["weight_bytes"].get<double>();
        EXPECT_NEAR(w, expected, 0.01 * expected) << "rank " << rank["rank"];
        EXPECT_GT(rank["kv_cache_bytes"].get<int64_t>(), 0);
        EXPECT_EQ(rank["read_bytes"].get<int64_t>(), rank["weight_bytes"].get<int64_t>());
        EXPECT_EQ(rank["collectives"]["all_reduce"]["count"].get<int>(), 2 * 80 + 1);
    }
    // FLOPs per token per rank: 2 per weight of every linear (all but the embedding and the
    // norms), split 8 ways; the LM head's part (vocab 128256 split over 8) is counted apart, since
    // a prefill runs it for one row.
    double embedding = 128256.0 * 8192;
    EXPECT_NEAR(j["costs"]["flops_per_token"].get<double>(), 2 * (70.55e9 - embedding) / 8, 0.01 * 2 * (70.55e9 - embedding) / 8);
    EXPECT_EQ(j["costs"]["head_flops_per_token"].get<double>(), 2.0 * 8192 * 128256 / 8);
}

TEST(Plan, Mixtral8x7bWithEp8HoldsOneWholeExpertPerLayerPerRank) {
    Job job = job_for(kData + "/configs/mixtral-8x7b", 8, 8);
    ShardPlan plan = make_plan(job);
    for (const RankPlan& r : plan.ranks) {
        int layers = 0;
        for (const WeightPlan& w : r.weights) {
            if (w.name.find(".moe.w13") == std::string::npos) continue;
            ++layers;
            EXPECT_EQ(w.shape, (Shape{1, 2 * 14336, 4096}));
            ASSERT_EQ(w.pieces.size(), 2u);
            std::string expert = ".experts." + std::to_string(r.rank) + ".";
            for (const Piece& p : w.pieces) {
                EXPECT_NE(p.tensor.find(expert), std::string::npos) << p.tensor;
                EXPECT_EQ(p.slice.start, 0);
                EXPECT_EQ(p.slice.length, 14336);  // the whole expert
            }
        }
        EXPECT_EQ(layers, 32);
    }
}

TEST(Plan, JsonRoundTripKeepsEverything) {
    ShardPlan plan = make_plan(job_for(kData + "/golden/mixtral-moe", 4, 2));
    nlohmann::json j = plan.to_json();
    ShardPlan back = ShardPlan::from_json(j);
    nlohmann::json again = back.to_json();
    for (auto it = j.begin(); it != j.end(); ++it) EXPECT_TRUE(again[it.key()] == *it) << "key " << it.key() << " differs";
    EXPECT_EQ(again.size(), j.size());
    EXPECT_EQ(back.graph.dump(), plan.graph.dump());
}

TEST(Transforms, DebugVisualizeDirWritesDotAndOptionsAreValidated) {
    std::string dir = tpx_test::temp_dir();
    Job job = job_for(kData + "/golden/llama-gqa", 2, 1,
                      "[transforms.fuse_qkv]\ndebug_visualize_dir = \"" + dir + "/dots\"\n[transforms.fuse_gate_up]\nenabled = false\n");
    ShardPlan plan = make_plan(job);
    bool found = false;
    for (const auto& e : fs::directory_iterator(dir + "/dots")) {
        std::string text = tpx_test::read_text(e.path().string());
        found = found || (e.path().filename().string().find("fuse_qkv.dot") != std::string::npos && text.rfind("digraph tpx {", 0) == 0 &&
                          text.find("qkv_proj") != std::string::npos);
    }
    EXPECT_TRUE(found);
    for (const TransformRecord& t : plan.transforms) {
        if (t.name == "fuse_gate_up") {
            EXPECT_FALSE(t.enabled);
        }
        if (t.name == "fuse_qkv") {
            EXPECT_EQ(t.matches, 2);
        }
    }
    EXPECT_NE(plan.graph.find("layers.0.mlp.gate_proj"), nullptr) << "gate_up fusion was disabled";
    EXPECT_THROW(resolve_transform_options(job_for(kData + "/golden/llama-gqa", 1, 1, "[transforms.fuse_everything]\n")), JobError);
    EXPECT_THROW(resolve_transform_options(job_for(kData + "/golden/llama-gqa", 1, 1, "[transforms.load_weights]\ndisable_preload = 1\n")),
                 JobError);
    fs::remove_all(dir);
}
