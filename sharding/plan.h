// The sharding plan: what rank 0 computes and every rank trusts. For every rank, every weight
// it holds (source tensors, slices, destination shape, dtype), its memory (weights, KV cache
// for the job's max_batch x max_seq_len), the bytes it will read, and the collectives of one
// forward; plus the sharded graph the ranks execute. Serializable to JSON for the broadcast
// and for `tpx plan --json`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "jobs/job.h"
#include "sharding/pipeline.h"
#include "sharding/transform.h"

namespace tpx {

struct WeightPlan {
    std::string name;  // the graph parameter
    Shape shape;       // local shape
    std::string dtype;
    int64_t bytes = 0;
    std::vector<Piece> pieces;  // laid end to end (dim 0) into the local buffer
};

struct RankPlan {
    int rank = 0;
    int stage = 0, tp_rank = 0;  // rank = stage x tp + tp_rank
    int64_t weight_bytes = 0;
    int64_t kv_cache_bytes = 0;
    int64_t read_bytes = 0;  // what the loader will read (exact when checkpoint headers were at hand)
    // Memory besides weights and KV cache, an estimate: activations per token of a forward
    // (residual, norms, q/k/v, attention output, gate/up of the local heads and MLP slice, in
    // the activation dtype) and a logits row per sequence; staging for the GPU's uploads.
    int64_t activation_bytes_per_token = 0;
    int64_t logits_bytes_per_row = 0;
    int64_t staging_bytes = 0;
    std::vector<WeightPlan> weights;

    // What this rank holds at most when a forward runs `tokens` tokens for `rows` sequences.
    int64_t memory_bytes(int64_t tokens, int64_t rows, bool on_device) const {
        return weight_bytes + kv_cache_bytes + (on_device ? 0 : staging_bytes) + tokens * activation_bytes_per_token +
               rows * logits_bytes_per_row;
    }
};

struct ShardPlan {
    std::string model_path;
    ModelConfig config;
    int tp = 1, ep = 1;
    int pp = 1;             // pipeline stages; world = tp x pp
    int micro_batches = 1;  // [parallel] micro_batches
    std::vector<PipelineStage> stages;  // pp entries
    std::string backend = "cpu";
    std::string weight_dtype, act_dtype;
    int64_t max_batch = 1, max_seq_len = 0;
    bool headers_checked = false;  // checkpoint headers were read and matched
    std::string quantization;      // config.json's quantization_config, described ("" = none)
    std::vector<std::string> warnings;  // for rank 0 to print once (unused tensors the job allows)
    Graph graph;
    GraphCosts costs;  // per rank, per token, over the whole model (a stage runs its layers' share)
    std::vector<RankPlan> ranks;  // world entries, by rank
    std::vector<TransformRecord> transforms;

    int world() const { return tp * pp; }

    nlohmann::json to_json() const;
    static ShardPlan from_json(const nlohmann::json& j);
};

// Plans `job` on the coordinator: reads config.json (and the checkpoint's headers when the
// checkpoint is there), runs the pipeline through the sharding stage, and fills every rank's
// entry. `world` overrides parallel.tp when > 0. The graph is the whole model's; each stage's
// ranks cut their part (cut_stage).
ShardPlan make_plan(const Job& job, int world = 0);

// The weight dtype the ranks hold: model.dtype, or for "auto" the checkpoint's on cuda and
// float32 on cpu (the CPU backend computes in fp32).
std::string resolve_weight_dtype(const Job& job, const ModelConfig& config);

// Refuses (JobError, exit 2) a plan whose `ranks` need more than `available` bytes of one
// memory (a host's, or one device's when `on_device`: no staging there) for a forward of
// `tokens` tokens over `rows` sequences, naming `where`, the numbers and the keys to change.
void check_memory(const ShardPlan& plan, const std::vector<int>& ranks, int64_t tokens, int64_t rows, int64_t available,
                  const std::string& where, bool on_device);

// One line: "stage 0: ranks 0-1, layers 0-1 +embed | stage 1: ranks 2-3, layers 2-2 +head".
std::string describe_stages(const ShardPlan& plan);

// A human-readable summary: one row per rank and the totals, then the transforms; `detail`
// adds each rank's weights.
std::string format_plan(const ShardPlan& plan, bool detail);

}  // namespace tpx
