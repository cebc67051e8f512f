// Weight refit (POST /v1/admin/refit, docs/SERVE.md): every rank reads its slices of a new
// checkpoint into the weight buffers it already holds. Invariant: no weight is touched until
// every rank has checked every tensor it reads (name, shape, dtype) and the model's config
// against the plan and all ranks agreed; a failure after that point is fatal (the job ends)
// rather than leave a server with some weights old and some new.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loader/checkpoint.h"
#include "sharding/graph.h"
#include "sharding/model_config.h"
#include "worker/executor.h"
#include "worker/mpi_comm.h"

namespace tpx {

// What a new checkpoint is checked against: the checkpoint the plan was made from (its headers)
// and the plan's model config. Pointers into the worker's own objects, alive while it serves.
struct RefitReference {
    const Graph* graph = nullptr;            // the rank's sharded graph (its pieces name the tensors read)
    const Checkpoint* checkpoint = nullptr;  // the job's model.path, as loaded
    const ModelConfig* config = nullptr;
    int delay_ms = 0;                        // pause between the agreement and the reads (a test aid)
    int read_threads = 0;                    // the job's model.read_threads (0: the reader's default)
};

// One rank's refit, gathered to every rank (plain bytes: it travels through all_gather_bytes).
struct RankRefit {
    int32_t rank = 0;
    char host[60] = {};
    double bytes = 0;         // tensor bytes read from the new checkpoint's files
    double check_s = 0;       // opening it and checking its headers
    double read_s = 0;        // the reads into the weight buffers and the KV cache's clearing
};

struct RefitOutcome {
    int status = 200;  // 200 done; 400 refused before any weight changed (the old ones serve on)
    std::string error; // the first failing rank's message, naming it (and the file or tensor)
    bool fatal = false;  // weights began to change and a rank failed: the job must end
    std::vector<RankRefit> ranks;  // by rank (status 200)
};

// Collective: every rank calls it with the same path. Never throws for a bad checkpoint: a
// refusal is status 400 and a failure during the reads is `fatal`, on every rank alike.
RefitOutcome refit_weights(Executor& exec, MpiCommunicator& comm, const RefitReference& ref, const std::string& path);

// The refused checkpoint's first difference from the reference, or "" when `ckpt` may replace it
// on `rank`: the config's shape-setting fields, then every tensor of the rank's pieces.
std::string refit_mismatch(const Checkpoint& ckpt, const RefitReference& ref, int rank);

}  // namespace tpx
