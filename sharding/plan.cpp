// Building, printing and serializing the plan.
#include "sharding/plan.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "common/path.h"
#include "loader/checkpoint.h"
#include "loader/meta.h"
#include "loader/quantized.h"
#include "sharding/factory.h"
#include "sharding/kv_cache.h"

namespace fs = std::filesystem;

namespace tpx {
namespace {

using json = nlohmann::json;

// Bytes the loader reads for one piece: what the checkpoint's reader takes for its slice when
// the headers are known, the piece's elements otherwise.
int64_t piece_read_bytes(const Piece& p, const Checkpoint* ckpt, int64_t checkpoint_elem_bytes) {
    if (p.tensor.empty()) return 0;
    if (!ckpt) return p.elements * checkpoint_elem_bytes;
    return (int64_t)ckpt->read_bytes(p.tensor, p.slice);
}

json pieces_json(const std::vector<Piece>& pieces) {
    json out = json::array();
    for (const Piece& p : pieces) {
        if (p.tensor.empty()) out.push_back({{"zeros", p.zeros}});
        else out.push_back({{"tensor", p.tensor}, {"index", p.slice.index}, {"dim", p.slice.dim}, {"start", p.slice.start}, {"length", p.slice.length},
                            {"elements", p.elements}});
    }
    return out;
}

// run.eos and run.max_seq_len against the model: an eos id outside the vocabulary can never be
// generated, and positions past max_position_embeddings are outside what the model was trained
// for unless its RoPE scaling stretches them.
void check_run_limits(const Job& job, const ModelConfig& c) {
    for (int64_t id : job.run.eos)
        if (id >= c.vocab_size)
            throw JobError(job.file + ": run.eos holds " + std::to_string(id) + ", outside the model's vocabulary of " +
                           std::to_string(c.vocab_size) + " ids (" + c.file + ")");
    int64_t limit = c.max_position_embeddings;
    if (c.rope.type != "default" && c.rope.factor > 1)
        limit = std::max(limit, (int64_t)((double)c.rope.original_max_position_embeddings * c.rope.factor));
    if (job.run.max_seq_len == 0 && c.max_position_embeddings > kMaxSeqLen)
        throw JobError(c.file + ": max_position_embeddings = " + std::to_string(c.max_position_embeddings) + " is past the " +
                       std::to_string(kMaxSeqLen) + " positions a KV cache may hold: set run.max_seq_len in " + job.file);
    if (limit > 0 && job.run.max_seq_len > limit)
        throw JobError(job.file + ": run.max_seq_len = " + std::to_string(job.run.max_seq_len) + " is beyond the model's " +
                       std::to_string(limit) + " positions (max_position_embeddings in " + c.file +
                       (c.rope.type != "default" ? ", with its RoPE scaling" : "") + "); leave it out or set at most " +
                       std::to_string(limit));
}

// Checkpoint tensors the model does not read mean that config.json and the checkpoint disagree
// (a config saying 1 layer ran a 2-layer checkpoint as 1, silently): refused, naming the first
// few, unless the job allows them; then the plan carries the warning for rank 0 to print.
void check_unused_tensors(const Job& job, const TransformContext& ctx, ShardPlan& plan) {
    const std::vector<std::string> unused = unused_tensors(ctx.graph, *ctx.checkpoint, ctx.config);
    if (unused.empty()) return;
    constexpr size_t kNamed = 4;
    std::string names;
    for (size_t i = 0; i < unused.size() && i < kNamed; ++i) names += (i ? ", " : "") + unused[i];
    if (unused.size() > kNamed) names += ", ...";
    const std::string why = explain_unused(unused, ctx.config);
    const std::string text = job.model.path + ": " + std::to_string(unused.size()) +
                             (unused.size() == 1 ? " checkpoint tensor is" : " checkpoint tensors are") + " not used by the model" +
                             (why.empty() ? "" : " (" + why + ")") + ": " + names;
    if (!job.model.allow_unused_weights) throw CheckpointError(text + "; set [model] allow_unused_weights = true to run anyway");
    plan.warnings.push_back(text + " (running anyway: [model] allow_unused_weights = true)");
}

// config.json's quantization_config, described ("" = none). The CPU backend dequantizes the
// weights to fp32 as they load (loader/quantized.h); the CUDA backend keeps the linears packed
// on the device and dequantizes inside its kernels (worker/quant_weights.h).
std::string check_quantization(const Job&, const std::string& config_text, const std::string& config_file) {
    const QuantConfig quant = parse_quant_config(config_text, config_file);
    return quant.quantized() ? quant.describe() : "";
}

// Every rank's entry: its stage's weights (the tp_rank's pieces), its stage's KV cache and the
// bytes its stage sends on per token.
void fill_ranks(ShardPlan& plan, const TransformContext& ctx, const Checkpoint* ckpt, bool cuda) {
    int64_t kv_heads_local = 0;
    for (Node* n : ctx.graph.nodes())
        if (n->kind == Op::kAttention) kv_heads_local = n->attr_int("kv_heads");
    // KV cache: K and V of the stage's layers for the local KV heads, max_batch x max_seq_len
    // tokens, as the executors allocate it (from the stage's cut graph).
    const KvCacheLayout kv = kv_cache_layout(ctx.graph, plan.max_batch, plan.max_seq_len);
    const int64_t ckpt_elem = dtype_bytes(ctx.config.dtype);
    const ModelConfig& c = ctx.config;
    const int64_t act = dtype_bytes(ctx.act_dtype);
    const int64_t mlp_local = (c.is_moe() ? c.intermediate_size * c.experts_per_token : c.intermediate_size) / plan.tp;
    const int64_t per_token = act * (4 * c.hidden_size + (c.num_heads / plan.tp + 2 * kv_heads_local) * c.head_dim + 3 * mlp_local);
    for (PipelineStage& st : plan.stages) st.send_bytes_per_token = st.last ? 0 : c.hidden_size * act;
    for (int r = 0; r < plan.world(); ++r) {
        RankPlan rp;
        rp.rank = r;
        rp.stage = r / plan.tp;
        rp.tp_rank = r % plan.tp;
        const PipelineStage& st = plan.stages.at(rp.stage);
        rp.kv_cache_bytes = kv.of_layers(st.first_layer, st.end_layer).bytes(act);
        rp.activation_bytes_per_token = per_token;
        rp.logits_bytes_per_row = c.vocab_size * (int64_t)sizeof(float);
        rp.staging_bytes = cuda ? (256ll << 20) : 0;  // upload_weights' pinned ring
        for (Node* n : ctx.graph.nodes()) {
            if (!n->param || !stage_holds(st, *n, c.num_layers)) continue;
            WeightPlan w;
            w.name = n->name;
            w.shape = n->out()->shape;
            w.dtype = n->out()->dtype;
            w.bytes = shape_numel(w.shape) * dtype_bytes(w.dtype);
            w.pieces = n->param->by_rank.at(rp.tp_rank);
            for (const Piece& p : w.pieces) rp.read_bytes += piece_read_bytes(p, ckpt, ckpt_elem);
            rp.weight_bytes += w.bytes;
            rp.weights.push_back(std::move(w));
        }
        plan.ranks.push_back(std::move(rp));
    }
}

// The stages: ranks, layers, bytes per rank, and what each boundary sends per token.
std::string format_stages(const ShardPlan& p) {
    std::ostringstream os;
    char line[256];
    int64_t most = 0, least = INT64_MAX;
    for (const PipelineStage& st : p.stages) most = std::max(most, st.weight_bytes), least = std::min(least, st.weight_bytes);
    os << "pipeline: " << p.pp << " stages of tp=" << p.tp << " ranks (rank = stage x " << p.tp << " + tp_rank), "
       << p.micro_batches << (p.micro_batches == 1 ? " micro-batch" : " micro-batches") << "\n";
    std::snprintf(line, sizeof(line), "%-6s %-11s %-18s %14s %26s\n", "stage", "ranks", "decoder layers", "weights/rank",
                  "sends per token (per rank)");
    os << line;
    for (const PipelineStage& st : p.stages) {
        const std::string ranks = std::to_string(st.stage * p.tp) + (p.tp > 1 ? "-" + std::to_string(st.stage * p.tp + p.tp - 1) : "");
        const std::string layers = std::to_string(st.first_layer) + "-" + std::to_string(st.end_layer - 1) +
                                   (st.first ? " +embed" : "") + (st.last ? " +head" : "");
        const std::string sends = st.last ? "- (last)" : human_bytes((double)(st.send_bytes_per_token * p.tp)) + " (" +
                                                               human_bytes((double)st.send_bytes_per_token) + ")";
        std::snprintf(line, sizeof(line), "%-6d %-11s %-18s %14s %26s\n", st.stage, ranks.c_str(), layers.c_str(),
                      human_bytes((double)st.weight_bytes).c_str(), sends.c_str());
        os << line;
    }
    std::snprintf(line, sizeof(line), "stage weights within %.2f%% of each other (largest over smallest - 1)\n",
                  least > 0 ? 100.0 * ((double)most / (double)least - 1.0) : 0.0);
    os << line;
    return os.str();
}

std::vector<PipelineStage> stages_from_json(const json& js) {
    std::vector<PipelineStage> stages;
    for (size_t i = 0; i < js.size(); ++i) {
        PipelineStage st;
        st.stage = js[i].at("stage");
        st.first = i == 0;
        st.last = i + 1 == js.size();
        st.first_layer = js[i].at("first_layer");
        st.end_layer = js[i].at("end_layer");
        st.weight_bytes = js[i].at("weight_bytes");
        st.send_bytes_per_token = js[i].at("send_bytes_per_token");
        stages.push_back(st);
    }
    return stages;
}

}  // namespace

std::string resolve_weight_dtype(const Job& job, const ModelConfig& config) {
    if (job.model.dtype != "auto") return job.model.dtype;
    return job.backend.device == "cuda" ? config.dtype : "float32";
}

ShardPlan make_plan(const Job& job, int world) {
    ShardPlan plan;
    plan.model_path = job.model.path;
    plan.tp = world > 0 ? world : job.parallel.tp;
    plan.ep = job.parallel.ep;
    plan.pp = job.parallel.pp;
    plan.micro_batches = job.parallel.micro_batches;
    if (plan.tp % plan.ep != 0)
        throw JobError(job.file + ": parallel.ep = " + std::to_string(plan.ep) + " must divide the world size " + std::to_string(plan.tp));
    plan.backend = job.backend.device;

    // config.json from the folder, or from the .h5 file's attribute.
    std::unique_ptr<Checkpoint> ckpt;
    std::string config_text, config_file;
    fs::path model(job.model.path);
    const bool folder = is_folder<CheckpointError>(model);
    if (folder) check_folder_layout(job.model.path);
    const bool meta = folder && is_meta_folder(job.model.path);
    bool has_weights = folder ? (path_exists<CheckpointError>(model / "model.safetensors") ||
                                 path_exists<CheckpointError>(model / "model.safetensors.index.json") || meta)
                              : path_exists<CheckpointError>(model);
    if (has_weights) {
        ckpt = Checkpoint::open(job.model.path);
        config_text = ckpt->config_json();
        config_file = meta     ? (model / "params.json").string() + " (as config.json)"
                      : folder ? (model / "config.json").string()
                               : job.model.path + ":config.json";
    } else {
        config_file = (model / "config.json").string();
        config_text = read_text_file(config_file);
    }
    if (config_text.empty()) {
        std::error_code ec;
        const fs::path read = model / (meta ? "params.json" : "config.json");
        const bool there = folder && fs::is_regular_file(read, ec);
        throw CheckpointError(there ? read.string() + ": is empty (a JSON object is expected)" : job.model.path + ": has no config.json");
    }
    plan.quantization = check_quantization(job, config_text, config_file);
    // generation_config.json's stop ids, which rank 0 reads when the job gives none: checked here
    // too, so that a bad file is refused by the plan and not only by the ranks after it.
    if (ckpt && job.run.eos.empty()) parse_generation_eos(ckpt->generation_config_json(), job.model.path + "/generation_config.json");

    TransformContext ctx;
    ctx.job = &job;
    ctx.config = parse_model_config(config_text, config_file);
    ctx.config.rope.freq_dtype = job.model.rope_precision == "checkpoint" ? ctx.config.dtype : "float32";
    // Experts as one tensor each (HF's original names) or stacked (transformers 5's own layout).
    if (ckpt && ctx.config.is_moe()) ctx.config.stacked_experts = ckpt->find("model.layers.0.mlp.experts.gate_up_proj") != nullptr;
    ctx.checkpoint = ckpt.get();
    ctx.tp = plan.tp;
    ctx.ep = plan.ep;
    ctx.weight_dtype = resolve_weight_dtype(job, ctx.config);
    ctx.act_dtype = job.backend.device == "cuda" ? "bfloat16" : "float32";
    if (ctx.config.is_moe() && ctx.config.num_experts % plan.ep != 0)
        throw JobError(job.file + ": parallel.ep = " + std::to_string(plan.ep) + " does not divide the model's " +
                       std::to_string(ctx.config.num_experts) + " experts");
    if (!ctx.config.is_moe() && plan.ep != 1)
        throw JobError(job.file + ": parallel.ep = " + std::to_string(plan.ep) + " needs a mixture-of-experts model; " +
                       ctx.config.architecture + " has none");

    plan.transforms = run_pipeline(ctx, resolve_transform_options(job), Stage::kFactory, Stage::kSharding);
    bool sharded = false;
    for (Node* n : ctx.graph.nodes()) sharded = sharded || (n->param && !n->param->by_rank.empty());
    if (!sharded) {  // name what was turned off (or skipped on an error) that the plan needs
        std::string off;
        for (const TransformRecord& r : plan.transforms)
            if (!r.enabled || (r.skipped && !r.error.empty())) off += (off.empty() ? "" : ", ") + r.name + (r.enabled ? " (failed, skip_on_error)" : "");
        throw JobError(job.file + ": no weight was sharded, so there is no plan to make" +
                       (off.empty() ? std::string() : " (turned off: " + off + ")"));
    }
    if (ckpt) check_unused_tensors(job, ctx, plan);

    plan.config = ctx.config;
    plan.weight_dtype = ctx.weight_dtype;
    plan.act_dtype = ctx.act_dtype;
    plan.headers_checked = ckpt != nullptr;
    plan.costs = ctx.costs;
    plan.max_batch = job.run.max_batch;
    plan.max_seq_len = job.run.max_seq_len > 0 ? job.run.max_seq_len : ctx.config.max_position_embeddings;
    check_run_limits(job, ctx.config);

    plan.stages = split_stages(layer_weight_bytes(ctx.graph, ctx.config.num_layers), plan.pp, job.parallel.pp_layers, job.file);
    fill_ranks(plan, ctx, ckpt.get(), job.backend.device == "cuda");
    plan.graph = std::move(ctx.graph);
    return plan;
}

json ShardPlan::to_json() const {
    json ranks_json = json::array();
    for (const RankPlan& r : ranks) {
        json weights = json::array();
        for (const WeightPlan& w : r.weights)
            weights.push_back({{"name", w.name}, {"shape", w.shape}, {"dtype", w.dtype}, {"bytes", w.bytes}, {"pieces", pieces_json(w.pieces)}});
        json coll = json::object();
        for (const auto& [op, c] : costs.collectives) coll[op] = {{"count", c.count}, {"bytes_per_token", c.bytes_per_token}};
        ranks_json.push_back({{"rank", r.rank}, {"stage", r.stage}, {"tp_rank", r.tp_rank}, {"weight_bytes", r.weight_bytes}, {"kv_cache_bytes", r.kv_cache_bytes},
                              {"activation_bytes_per_token", r.activation_bytes_per_token}, {"logits_bytes_per_row", r.logits_bytes_per_row},
                              {"staging_bytes", r.staging_bytes}, {"read_bytes", r.read_bytes}, {"collectives", coll}, {"weights", weights}});
    }
    json stages_json = json::array();
    for (const PipelineStage& st : stages)
        stages_json.push_back({{"stage", st.stage}, {"first_layer", st.first_layer}, {"end_layer", st.end_layer},
                               {"weight_bytes", st.weight_bytes}, {"send_bytes_per_token", st.send_bytes_per_token}});
    json transforms_json = json::array();
    for (const TransformRecord& t : transforms)
        transforms_json.push_back({{"name", t.name}, {"stage", stage_name(t.stage)}, {"enabled", t.enabled}, {"skipped", t.skipped},
                                   {"matches", t.matches}, {"ms", t.ms}, {"mem_change", t.mem_change}, {"error", t.error}, {"note", t.note}});
    const ModelConfig& c = config;
    json model = {{"path", model_path}, {"architecture", c.architecture}, {"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size},
                  {"intermediate_size", c.intermediate_size}, {"num_layers", c.num_layers}, {"num_heads", c.num_heads},
                  {"num_kv_heads", c.num_kv_heads}, {"head_dim", c.head_dim}, {"max_position_embeddings", c.max_position_embeddings},
                  {"rms_norm_eps", c.rms_norm_eps}, {"rope_type", c.rope.type}, {"rope_theta", c.rope.theta},
                  {"rope_factor", c.rope.factor}, {"rope_low_freq_factor", c.rope.low_freq_factor},
                  {"rope_high_freq_factor", c.rope.high_freq_factor},
                  {"rope_original_max_position_embeddings", c.rope.original_max_position_embeddings},
                  {"rope_freq_dtype", c.rope.freq_dtype},
                  {"tie_word_embeddings", c.tie_word_embeddings}, {"qkv_bias", c.qkv_bias}, {"sliding_window", c.sliding_window},
                  {"num_experts", c.num_experts}, {"experts_per_token", c.experts_per_token}, {"stacked_experts", c.stacked_experts},
                  {"dtype", c.dtype},
                  {"eos_token_ids", c.eos_token_ids}};
    return {{"model", model}, {"tp", tp}, {"ep", ep}, {"pp", pp}, {"micro_batches", micro_batches}, {"stages", stages_json},
            {"world", world()}, {"backend", backend}, {"weight_dtype", weight_dtype},
            {"act_dtype", act_dtype}, {"max_batch", max_batch}, {"max_seq_len", max_seq_len}, {"headers_checked", headers_checked},
            {"quantization", quantization}, {"warnings", warnings},
            {"costs", {{"weight_bytes", costs.weight_bytes}, {"flops_per_token", costs.flops_per_token},
                       {"head_flops_per_token", costs.head_flops_per_token},
                       {"attention_flops_per_token_per_position", costs.attention_flops_per_token_per_position}}},
            {"ranks", ranks_json}, {"transforms", transforms_json}, {"graph", graph.to_json()}};
}

ShardPlan ShardPlan::from_json(const json& j) {
    ShardPlan p;
    const json& m = j.at("model");
    ModelConfig& c = p.config;
    p.model_path = m.at("path");
    c.architecture = m.at("architecture");
    c.vocab_size = m.at("vocab_size");
    c.hidden_size = m.at("hidden_size");
    c.intermediate_size = m.at("intermediate_size");
    c.num_layers = m.at("num_layers");
    c.num_heads = m.at("num_heads");
    c.num_kv_heads = m.at("num_kv_heads");
    c.head_dim = m.at("head_dim");
    c.max_position_embeddings = m.at("max_position_embeddings");
    c.rms_norm_eps = m.at("rms_norm_eps");
    c.rope.type = m.at("rope_type");
    c.rope.theta = m.at("rope_theta");
    c.rope.factor = m.at("rope_factor");
    c.rope.low_freq_factor = m.at("rope_low_freq_factor");
    c.rope.high_freq_factor = m.at("rope_high_freq_factor");
    c.rope.original_max_position_embeddings = m.at("rope_original_max_position_embeddings");
    c.rope.freq_dtype = m.at("rope_freq_dtype");
    c.tie_word_embeddings = m.at("tie_word_embeddings");
    c.qkv_bias = m.at("qkv_bias");
    c.sliding_window = m.at("sliding_window");
    c.num_experts = m.at("num_experts");
    c.experts_per_token = m.at("experts_per_token");
    c.stacked_experts = m.at("stacked_experts");
    c.dtype = m.at("dtype");
    c.eos_token_ids = m.at("eos_token_ids").get<std::vector<int64_t>>();
    p.tp = j.at("tp");
    p.ep = j.at("ep");
    p.pp = j.at("pp");
    p.micro_batches = j.at("micro_batches");
    p.stages = stages_from_json(j.at("stages"));
    p.backend = j.at("backend");
    p.weight_dtype = j.at("weight_dtype");
    p.act_dtype = j.at("act_dtype");
    p.max_batch = j.at("max_batch");
    p.max_seq_len = j.at("max_seq_len");
    p.headers_checked = j.at("headers_checked");
    p.quantization = j.value("quantization", "");
    p.warnings = j.value("warnings", std::vector<std::string>{});
    p.costs.weight_bytes = j.at("costs").at("weight_bytes");
    p.costs.flops_per_token = j.at("costs").at("flops_per_token");
    p.costs.head_flops_per_token = j.at("costs").at("head_flops_per_token");
    p.costs.attention_flops_per_token_per_position = j.at("costs").at("attention_flops_per_token_per_position");
    p.graph = Graph::from_json(j.at("graph"));
    for (const json& jt : j.at("transforms")) {
        TransformRecord t;
        t.name = jt.at("name");
        std::string stage = jt.at("stage");
        for (Stage s : all_stages())
            if (stage == stage_name(s)) t.stage = s;
        t.enabled = jt.at("enabled");
        t.skipped = jt.at("skipped");
        t.matches = jt.at("matches");
        t.ms = jt.at("ms");
        t.mem_change = jt.at("mem_change");
        t.error = jt.at("error");
        t.note = jt.at("note");
        p.transforms.push_back(std::move(t));
    }
    for (const json& jr : j.at("ranks")) {
        RankPlan r;
        r.rank = jr.at("rank");
        r.stage = jr.at("stage");
        r.tp_rank = jr.at("tp_rank");
        r.weight_bytes = jr.at("weight_bytes");
        r.kv_cache_bytes = jr.at("kv_cache_bytes");
        r.activation_bytes_per_token = jr.at("activation_bytes_per_token");
        r.logits_bytes_per_row = jr.at("logits_bytes_per_row");
        r.staging_bytes = jr.at("staging_bytes");
        r.read_bytes = jr.at("read_bytes");
        for (auto it = jr.at("collectives").begin(); it != jr.at("collectives").end(); ++it)
            p.costs.collectives[it.key()] = {it->at("count"), it->at("bytes_per_token")};
        p.ranks.push_back(std::move(r));
    }
    // Weights per rank come back from the graph's parameter specs (one source of truth).
    for (Node* n : p.graph.nodes()) {
        if (!n->param) continue;
        for (RankPlan& r : p.ranks) {
            if (!stage_holds(p.stages.at(r.stage), *n, c.num_layers)) continue;
            WeightPlan w{n->name, n->out()->shape, n->out()->dtype, shape_numel(n->out()->shape) * dtype_bytes(n->out()->dtype),
                         n->param->by_rank.at(r.tp_rank)};
            r.weights.push_back(std::move(w));
        }
    }
    return p;
}

void check_memory(const ShardPlan& plan, const std::vector<int>& ranks, int64_t tokens, int64_t rows, int64_t available,
                  const std::string& where, bool on_device) {
    int64_t need = 0, weights = 0, kv = 0;
    for (int r : ranks) {
        const RankPlan& rp = plan.ranks.at(r);
        need += rp.memory_bytes(tokens, rows, on_device);
        weights += rp.weight_bytes;
        kv += rp.kv_cache_bytes;
    }
    if (need <= available) return;
    std::ostringstream os;
    os << where << ": not enough memory for " << ranks.size() << (ranks.size() == 1 ? " rank" : " ranks") << ": they need "
       << human_bytes((double)need) << " (weights " << human_bytes((double)weights) << ", KV cache " << human_bytes((double)kv)
       << " for max_batch " << plan.max_batch << " x max_seq_len " << plan.max_seq_len << ", activations and staging "
       << human_bytes((double)(need - weights - kv)) << ") but " << human_bytes((double)available)
       << " is available; lower run.max_seq_len or run.max_batch, or spread the job over more ranks or hosts (parallel.tp, parallel.nodes)";
    throw JobError(os.str());
}

std::string describe_stages(const ShardPlan& p) {
    std::string out;
    for (const PipelineStage& st : p.stages)
        out += (out.empty() ? "" : " | ") + std::string("stage ") + std::to_string(st.stage) +
               (p.tp == 1 ? ": rank " + std::to_string(st.stage)
                          : ": ranks " + std::to_string(st.stage * p.tp) + "-" + std::to_string(st.stage * p.tp + p.tp - 1)) +
               ", layers " + std::to_string(st.first_layer) + "-" +
               std::to_string(st.end_layer - 1) + (st.first ? " +embed" : "") + (st.last ? " +head" : "");
    return out;
}

std::string format_plan(const ShardPlan& p, bool detail) {
    std::ostringstream os;
    const ModelConfig& c = p.config;
    char line[512];
    os << "plan: " << p.model_path << "\n";
    std::snprintf(line, sizeof(line), "model: %s, %lld layers, hidden %lld, heads %lld (kv %lld, head_dim %lld), vocab %lld%s\n",
                  c.architecture.c_str(), (long long)c.num_layers, (long long)c.hidden_size, (long long)c.num_heads,
                  (long long)c.num_kv_heads, (long long)c.head_dim, (long long)c.vocab_size,
                  c.is_moe() ? (", " + std::to_string(c.num_experts) + " experts, top-" + std::to_string(c.experts_per_token) +
                                (c.stacked_experts ? " (stacked tensors: mlp.experts.gate_up_proj, down_proj)" : ""))
                                   .c_str()
                             : "");
    os << line;
    os << "parallel: tp=" << p.tp << " ep=" << p.ep << (p.pp > 1 ? " pp=" + std::to_string(p.pp) : std::string()) << " (world "
       << p.world() << "), backend " << p.backend << ", weights "
       << p.weight_dtype << ", activations " << p.act_dtype << "\n";
    os << "kv cache: max_batch " << p.max_batch << " x max_seq_len " << p.max_seq_len << "\n";
    os << (p.headers_checked ? "checkpoint headers: read and matched\n" : "checkpoint headers: not present (planned from config.json alone)\n");
    if (!p.quantization.empty())
        os << "quantized: " << p.quantization << " (read: the packed bytes; weights: "
           << (p.backend == "cuda" ? "kept packed on the device, the linears' weight column counts them as bf16" : "dequantized to fp32 on load") << ")\n";
    for (const std::string& w : p.warnings) os << "warning: " << w << "\n";
    os << "\n";
    if (p.pp > 1) os << format_stages(p) << "\n";
    std::snprintf(line, sizeof(line), "%-5s %14s %14s %14s %14s %9s\n", "rank", "weights", "kv cache", "total", "read", "tensors");
    os << line;
    int64_t tw = 0, tk = 0, tr = 0;
    for (const RankPlan& r : p.ranks) {
        std::snprintf(line, sizeof(line), "%-5d %14s %14s %14s %14s %9zu\n", r.rank, human_bytes((double)r.weight_bytes).c_str(),
                      human_bytes((double)r.kv_cache_bytes).c_str(), human_bytes((double)(r.weight_bytes + r.kv_cache_bytes)).c_str(),
                      human_bytes((double)r.read_bytes).c_str(), r.weights.size());
        os << line;
        tw += r.weight_bytes, tk += r.kv_cache_bytes, tr += r.read_bytes;
    }
    std::snprintf(line, sizeof(line), "%-5s %14s %14s %14s %14s\n", "all", human_bytes((double)tw).c_str(), human_bytes((double)tk).c_str(),
                  human_bytes((double)(tw + tk)).c_str(), human_bytes((double)tr).c_str());
    os << line << "\nper forward, per token, per rank:\n";
    std::snprintf(line, sizeof(line), "  %.3f GFLOP in GEMMs, %.3f of them in the LM head (+ %.1f KFLOP of attention per cached position)\n",
                  p.costs.flops_per_token / 1e9, p.costs.head_flops_per_token / 1e9, p.costs.attention_flops_per_token_per_position / 1e3);
    os << line;
    if (p.costs.collectives.empty()) os << "  no collectives\n";
    for (const auto& [op, cc] : p.costs.collectives)
        os << "  " << op << ": " << cc.count << " calls, " << human_bytes((double)cc.bytes_per_token) << " per token\n";
    os << "\ntransforms:\n";
    for (const TransformRecord& t : p.transforms) {
        std::snprintf(line, sizeof(line), "  %-16s %-30s %s %4d matches %8.2f ms  mem %+lld B%s\n", stage_name(t.stage), t.name.c_str(),
                      !t.enabled ? "off " : (t.skipped ? "skip" : "ran "), t.matches, t.ms, (long long)t.mem_change,
                      t.error.empty() ? "" : ("  error: " + t.error).c_str());
        os << line;
    }
    if (detail) {
        for (const RankPlan& r : p.ranks) {
            os << "\nrank " << r.rank << " weights:\n";
            for (const WeightPlan& w : r.weights) {
                os << "  " << w.name << " " << shape_text(w.shape) << " " << w.dtype << " " << human_bytes((double)w.bytes) << " <-";
                for (const Piece& piece : w.pieces) {
                    if (piece.tensor.empty()) os << " zeros(" << piece.zeros << ")";
                    else {
                        os << " " << piece.tensor;
                        if (piece.slice.index >= 0) os << "[" << piece.slice.index << "]";
                        if (piece.slice.length >= 0)
                            os << "[dim " << piece.slice.dim << ": " << piece.slice.start << ".." << piece.slice.start + piece.slice.length << "]";
                    }
                }
                os << "\n";
            }
        }
    }
    return os.str();
}

}  // namespace tpx
