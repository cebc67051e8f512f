// The registry with tpx's transforms in pipeline order, option resolution from the job, and
// the runner that records matches, time and memory change per transform.
#include "sharding/transform.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/file.h"
#include "common/log.h"
#include "common/output_path.h"
#include "jobs/outputs.h"
#include "loader/checkpoint.h"
#include "sharding/factory.h"
#include "sharding/fusion.h"
#include "sharding/tp_sharding.h"

namespace fs = std::filesystem;

namespace tpx {

const std::vector<Stage>& all_stages() {
    static const std::vector<Stage> s = {Stage::kFactory, Stage::kExport,         Stage::kPostExport, Stage::kPatternMatcher,
                                         Stage::kSharding, Stage::kPostLoadFusion, Stage::kVisualize};
    return s;
}

const char* stage_name(Stage s) {
    static const char* names[] = {"factory", "export", "post_export", "pattern_matcher", "sharding", "post_load_fusion", "visualize"};
    return names[static_cast<int>(s)];
}

bool TransformOptions::flag(const std::string& key) const {
    auto it = own.find(key);
    if (it == own.end() || !std::holds_alternative<bool>(it->second.value)) throw Error("transform option '" + key + "' is not a flag");
    return std::get<bool>(it->second.value);
}

std::string TransformOptions::text(const std::string& key) const {
    auto it = own.find(key);
    if (it == own.end() || !std::holds_alternative<std::string>(it->second.value)) throw Error("transform option '" + key + "' is not text");
    return std::get<std::string>(it->second.value);
}

namespace {

// A folder the job names for DOT files, made when missing; a JobError naming the option and the
// folder when it cannot be (a file in the way, a symlink loop), not a filesystem_error.
void make_folder(const std::string& option, const std::string& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw JobError(option + ": cannot make the folder " + dir + ": " + ec.message());
}

// The graph as DOT into `path`, which must not be one of the job's inputs (its name comes from
// the transform's place and name, which an input may share).
void write_dot(const TransformContext& ctx, const std::string& option, const std::string& path) {
    if (ctx.job) check_outputs({{option + " (its file)", path}}, job_inputs(*ctx.job));
    // Rank 0 plans while the others wait for its plan.
    write_file_atomically(path, ctx.graph.to_dot(), ctx.job ? ctx.job->backend.fifo_wait_s() : 0.0);
}

int64_t param_bytes(const TransformContext& ctx) {
    int64_t n = 0;
    for (Node* node : ctx.graph.nodes())
        if (node->param) {
            int64_t e = 1;
            for (int64_t d : node->out()->shape) e *= d;
            n += e * dtype_bytes(node->out()->dtype);
        }
    return n;
}

OptionValue opt(std::variant<bool, int64_t, double, std::string> v) { return OptionValue{std::move(v), 0, 0}; }

TransformOptions defaults(bool enabled = true, std::map<std::string, OptionValue> own = {}) {
    TransformOptions o;
    o.enabled = enabled;
    o.own = std::move(own);
    return o;
}

void build(TransformContext& ctx) {
    if (ctx.checkpoint) check_layer_count(ctx.config, *ctx.checkpoint);
    ctx.graph = build_model(ctx.config, ctx.weight_dtype);
    if (ctx.checkpoint) check_against_checkpoint(ctx.graph, *ctx.checkpoint);
}

TransformRegistry make_registry() {
    TransformRegistry r;
    r.add({"build_model", Stage::kFactory, "build the graph from config.json on meta (shapes only)",
           defaults(true, {{"device", opt(std::string("meta"))}}), {{"device", "where the graph is built: meta (no data)"}},
           [](TransformContext& ctx, const TransformOptions& o) {
               if (o.text("device") != "meta") throw Error("build_model: device must be \"meta\" (tpx plans before it loads)", kExitBadInput);
               build(ctx);
               return TransformResult{(int)ctx.graph.size(), false, ""};
           }});
    r.add({"fuse_qkv", Stage::kPatternMatcher, "one q/k/v GEMM (biases folded) instead of three", defaults(), {},
           [](TransformContext& ctx, const TransformOptions&) {
               int n = fuse_qkv(ctx.graph);
               return TransformResult{n, n == 0, ""};
           }});
    r.add({"fuse_gate_up", Stage::kPatternMatcher, "one gate/up GEMM instead of two (dense and per expert)", defaults(), {},
           [](TransformContext& ctx, const TransformOptions&) {
               int n = fuse_gate_up(ctx.graph);
               return TransformResult{n, n == 0, ""};
           }});
    r.add({"detect_sharding", Stage::kSharding, "tensor- and expert-parallel split of every parameter; collectives inserted",
           defaults(), {},
           [](TransformContext& ctx, const TransformOptions&) {
               ShardingReport rep = shard_graph(ctx.graph, ctx.tp, ctx.ep);
               return TransformResult{rep.params + rep.collectives, false,
                                      std::to_string(rep.collectives) + " collectives inserted"};
           }});
    r.add({"strip_sharding_hints", Stage::kSharding, "drop the factory's sharding hints once sharding is done", defaults(), {},
           [](TransformContext& ctx, const TransformOptions&) { return TransformResult{strip_sharding_hints(ctx.graph), false, ""}; }});
    r.add({"count_costs", Stage::kSharding, "analyzers: FLOPs, weight bytes and collectives per forward", defaults(), {},
           [](TransformContext& ctx, const TransformOptions&) {
               ctx.costs = analyze_costs(ctx.graph, (int)dtype_bytes(ctx.act_dtype));
               return TransformResult{ctx.costs.matches, false, ""};
           }});
    r.add({"fuse_allreduce_residual_rmsnorm", Stage::kPostLoadFusion,
           "all_reduce + residual add + RMSNorm as one op (add + RMSNorm where tp = 1)", defaults(), {},
           [](TransformContext& ctx, const TransformOptions&) {
               int n = fuse_allreduce_residual_rmsnorm(ctx.graph);
               return TransformResult{n, n == 0, ""};
           }});
    r.add({"visualize", Stage::kVisualize, "write the final graph as Graphviz DOT",
           defaults(false, {{"dir", opt(std::string("."))}}), {{"dir", "folder for graph.dot"}},
           [](TransformContext& ctx, const TransformOptions& o) {
               make_folder("transforms.visualize.dir", o.text("dir"));
               write_dot(ctx, "transforms.visualize.dir", (fs::path(o.text("dir")) / "graph.dot").string());
               return TransformResult{1, false, ""};
           }});
    return r;
}

// The worker's own steps, and a factory that was never used, were registered as transforms
// once; a job that still configures one is told what became of it.
const char* retired_transform(const std::string& name) {
    static const std::map<std::string, const char*> kRetired = {
        {"load_weights", "every rank always loads its weights (model.read_threads sets the reading threads); remove the table"},
        {"move_inputs_to_device", "inputs always go to fixed device buffers per forward; remove the table"},
        {"init_kv_cache", "every executor always allocates its KV cache (run.max_batch x run.max_seq_len); remove the table"},
        {"compile_cuda_graph", "set backend.cuda_graphs = false to run decode steps without CUDA graphs; remove the table"},
        {"build_and_load_factory_model", "build_model builds the graph and every rank loads its slices; remove the table"},
    };
    auto it = kRetired.find(name);
    return it == kRetired.end() ? nullptr : it->second;
}

const char* kind_name(const OptionValue& v) {
    switch (v.value.index()) {
        case 0: return "a boolean";
        case 1: return "an integer";
        case 2: return "a float";
        default: return "a string";
    }
}

}  // namespace

TransformRegistry& TransformRegistry::global() {
    static TransformRegistry r = make_registry();
    return r;
}

void TransformRegistry::add(TransformDef def) {
    if (find(def.name)) throw Error("transform '" + def.name + "' registered twice");
    defs_.push_back(std::move(def));
    std::stable_sort(defs_.begin(), defs_.end(), [](const TransformDef& a, const TransformDef& b) { return a.stage < b.stage; });
}

const TransformDef* TransformRegistry::find(const std::string& name) const {
    for (const TransformDef& d : defs_)
        if (d.name == name) return &d;
    return nullptr;
}

std::map<std::string, TransformOptions> resolve_transform_options(const Job& job) {
    const TransformRegistry& reg = TransformRegistry::global();
    std::map<std::string, TransformOptions> out;
    for (const TransformDef& d : reg.all()) out[d.name] = d.defaults;
    for (const TransformSection& t : job.transforms) {
        const TransformDef* def = reg.find(t.name);
        if (const char* instead = retired_transform(t.name))
            throw JobError(at(job.file, t.line, t.col, "[transforms." + t.name + "] is no longer a transform: " + instead));
        if (!def) {
            std::string names;
            for (const TransformDef& d : reg.all()) names += (names.empty() ? "" : ", ") + d.name;
            throw JobError(at(job.file, t.line, t.col, "unknown transform '" + t.name + "'; valid transforms: " + names));
        }
        TransformOptions& o = out[t.name];
        for (const auto& [key, value] : t.options) {
            auto set_bool = [&](bool& field) { field = std::get<bool>(value.value); };
            if (key == "enabled") set_bool(o.enabled);
            else if (key == "skip_on_error") set_bool(o.skip_on_error);
            else if (key == "run_graph_cleanup") set_bool(o.run_graph_cleanup);
            else if (key == "run_shape_prop") set_bool(o.run_shape_prop);
            else if (key == "requires_clean_graph") set_bool(o.requires_clean_graph);
            else if (key == "requires_shape_prop") set_bool(o.requires_shape_prop);
            else if (key == "expect_mem_change") set_bool(o.expect_mem_change);
            else if (key == "debug_visualize_dir") o.debug_visualize_dir = std::get<std::string>(value.value);
            else if (o.own.count(key)) {
                if (o.own[key].value.index() != value.value.index())
                    throw JobError(at(job.file, value.line, value.col, "transforms." + t.name + "." + key + " must be " +
                                                                         kind_name(o.own[key]) + ", not " + kind_name(value)));
                o.own[key] = value;
            } else {
                std::string valid = "enabled, skip_on_error, run_graph_cleanup, run_shape_prop, requires_clean_graph, "
                                    "requires_shape_prop, debug_visualize_dir, expect_mem_change";
                for (const auto& [k, v] : def->defaults.own) valid += ", " + k;
                throw JobError(at(job.file, value.line, value.col,
                                  "unknown option '" + key + "' of transform " + t.name + "; valid options: " + valid));
            }
        }
    }
    return out;
}

std::vector<TransformRecord> run_pipeline(TransformContext& ctx, const std::map<std::string, TransformOptions>& options,
                                          Stage from, Stage to) {
    const TransformRegistry& reg = TransformRegistry::global();
    auto memory = [&] { return ctx.memory_in_use ? ctx.memory_in_use(ctx) : param_bytes(ctx); };
    std::vector<TransformRecord> records;
    int index = 0;
    for (const TransformDef& def : reg.all()) {
        ++index;
        if (def.stage < from || def.stage > to) continue;
        const TransformOptions& o = options.count(def.name) ? options.at(def.name) : def.defaults;
        TransformRecord rec;
        rec.name = def.name;
        rec.stage = def.stage;
        rec.enabled = o.enabled;
        if (!o.enabled) {
            rec.skipped = true;
            records.push_back(rec);
            continue;
        }
        auto t0 = std::chrono::steady_clock::now();
        int64_t before = memory();
        try {
            if (o.requires_clean_graph && !ctx.graph.is_clean()) ctx.graph.cleanup();
            if (o.requires_shape_prop) ctx.graph.propagate_shapes();
            TransformResult res = def.fn(ctx, o);
            rec.matches = res.matches;
            rec.skipped = res.skipped;
            rec.note = res.note;
            if (o.run_graph_cleanup) ctx.graph.cleanup();
            if (o.run_shape_prop) ctx.graph.propagate_shapes();
        } catch (const std::exception& e) {
            if (!o.skip_on_error) {
                int code = kExitRuntime;
                if (auto* te = dynamic_cast<const Error*>(&e)) code = te->exit_code();
                throw Error("transform " + def.name + " (" + stage_name(def.stage) + "): " + e.what(), code);
            }
            rec.error = e.what();
            rec.skipped = true;
            log_warn("transform ", def.name, " failed and is skipped (skip_on_error): ", e.what());
        }
        rec.mem_change = memory() - before;
        rec.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (o.expect_mem_change && rec.mem_change == 0 && rec.error.empty())
            log_warn("transform ", def.name, " was expected to change memory but did not");
        if (!o.debug_visualize_dir.empty()) {
            make_folder("transforms." + def.name + ".debug_visualize_dir", o.debug_visualize_dir);
            char file[256];
            std::snprintf(file, sizeof(file), "%02d_%s.dot", index, def.name.c_str());
            write_dot(ctx, "transforms." + def.name + ".debug_visualize_dir", (fs::path(o.debug_visualize_dir) / file).string());
        }
        records.push_back(rec);
    }
    return records;
}

}  // namespace tpx
