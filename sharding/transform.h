// The transform pipeline, after AutoDeploy's: named transforms, each in one stage of the
// ordered list below, each configurable from the job's [transforms.NAME] table with the
// common options (enabled, skip_on_error, run_graph_cleanup, run_shape_prop,
// requires_clean_graph, requires_shape_prop, debug_visualize_dir, expect_mem_change) plus its
// own. Every transform is a planning pass over the graph: rank 0 runs the stages up to sharding
// and broadcasts the plan; every rank runs the rest (post_load_fusion, visualize) on its graph
// after loading. Loading, the KV cache and CUDA graphs are the worker's own steps, not
// transforms (worker/rank_model.h).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "jobs/job.h"
#include "sharding/analysis.h"
#include "sharding/graph.h"
#include "sharding/model_config.h"

namespace tpx {

class Checkpoint;

enum class Stage { kFactory, kExport, kPostExport, kPatternMatcher, kSharding, kPostLoadFusion, kVisualize };
const std::vector<Stage>& all_stages();
const char* stage_name(Stage s);

struct TransformOptions {
    bool enabled = true;
    bool skip_on_error = false;        // log the error and go on instead of failing the job
    bool run_graph_cleanup = true;     // cleanup() afterwards
    bool run_shape_prop = false;       // propagate_shapes() afterwards
    bool requires_clean_graph = true;  // cleanup() before, if the graph is not clean
    bool requires_shape_prop = false;  // propagate_shapes() before
    std::string debug_visualize_dir;   // write the graph as DOT here afterwards ("" = no)
    bool expect_mem_change = false;    // warn if memory did not change
    std::map<std::string, OptionValue> own;  // the transform's own options, defaults filled

    bool flag(const std::string& key) const;
    std::string text(const std::string& key) const;
};

// Everything a transform may read or change.
struct TransformContext {
    const Job* job = nullptr;
    ModelConfig config;
    const Checkpoint* checkpoint = nullptr;  // headers, when the checkpoint is at hand
    Graph graph;
    int tp = 1, ep = 1;
    int rank = -1;                   // -1 on the coordinator's planning pass
    std::string weight_dtype = "bfloat16";
    std::string act_dtype = "bfloat16";
    GraphCosts costs;                // filled by count_costs
    // Bytes in use, for each transform's memory change: local parameter bytes by default; the
    // worker points this at device (or host) memory in use.
    std::function<int64_t(const TransformContext&)> memory_in_use;
};

struct TransformResult {
    int matches = 0;
    bool skipped = false;  // ran but found nothing to do, or does not apply (e.g. CUDA graphs on cpu)
    std::string note;
};

using TransformFn = std::function<TransformResult(TransformContext&, const TransformOptions&)>;

struct TransformDef {
    std::string name;
    Stage stage;
    std::string summary;
    TransformOptions defaults;
    std::map<std::string, std::string> own_docs;  // own option -> meaning
    TransformFn fn;
};

struct TransformRecord {
    std::string name;
    Stage stage;
    bool enabled = true;
    bool skipped = false;
    int matches = 0;
    double ms = 0;
    int64_t mem_change = 0;
    std::string error;  // with skip_on_error
    std::string note;
};

class TransformRegistry {
public:
    // Every transform tpx knows, in pipeline order.
    static TransformRegistry& global();
    void add(TransformDef def);
    const TransformDef* find(const std::string& name) const;
    const std::vector<TransformDef>& all() const { return defs_; }

private:
    std::vector<TransformDef> defs_;
};

// The options of every transform for this job: defaults, overridden by [transforms.NAME].
// An unknown transform or option, or an option of the wrong type, is a JobError with its
// file:line:col and the valid names; so is a table for a worker step that once was a
// transform (load_weights, init_kv_cache, ...), naming what replaced it.
std::map<std::string, TransformOptions> resolve_transform_options(const Job& job);

// Runs, in order, the enabled transforms of stages [from, to]. Throws on the first failure of
// a transform without skip_on_error, naming the transform.
std::vector<TransformRecord> run_pipeline(TransformContext& ctx, const std::map<std::string, TransformOptions>& options,
                                          Stage from, Stage to);

}  // namespace tpx
