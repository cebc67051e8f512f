// This rank's model, made ready to run by the worker's own steps (not transforms: the registry
// holds planning passes only): the graph cut to the rank's pipeline stage and the stage's links
// set up (pp > 1), the checkpoint opened and this rank's slices read onto its backend, the
// post-load planning passes run on the rank's graph, the KV cache laid out (sharding/kv_cache.h)
// and the executor built with it, and (cuda) decode steps captured as CUDA graphs when
// backend.cuda_graphs is on. Memory is checked against the plan before any weight is read, so
// that a job that does not fit ends with the numbers (exit 2).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "jobs/job.h"
#include "loader/checkpoint.h"
#include "sharding/plan.h"
#include "sharding/transform.h"
#include "text/prompts.h"
#include "worker/executor.h"
#include "worker/load_stop.h"
#include "worker/mpi_comm.h"
#include "worker/mpi_pipe.h"
#include "worker/progress.h"
#ifdef TPX_HAVE_CUDA
#include "worker/gpu_context.h"
#endif

namespace tpx {

#ifdef TPX_HAVE_CUDA
class CudaExecutor;
class NcclPipe;
#endif

// Members are declared in the order they are needed: each is destroyed before those it uses.
struct RankModel {
    RankModel();  // and the destructor: out of line, where the CUDA members' types are complete
    ~RankModel();
    RankModel(const RankModel&) = delete;  // the executor refers to ctx.graph: it stays put
    RankModel& operator=(const RankModel&) = delete;

    std::unique_ptr<Checkpoint> ckpt;  // open to the end: the report reads its statistics
    // pp > 1: the stage's tp group (its collectives stay inside the stage) and the pipe to the
    // stages around it; both null at pp = 1, where the world is the tp group.
    std::unique_ptr<MpiCommunicator> tp_comm;
    std::unique_ptr<MpiPipe> pipe;
#ifdef TPX_HAVE_CUDA
    std::unique_ptr<GpuContext> gpu;  // declared before exec, so destroyed after it (its stream)
    std::unique_ptr<NcclPipe> nccl_pipe;  // pp > 1: NCCL over the stage boundaries
    CudaExecutor* cuda = nullptr;         // the (stage's) CUDA executor, for its statistics
#endif
    TransformContext ctx;             // the rank's graph (cut to its stage) and the post-load passes' context
    std::unique_ptr<Executor> stage;  // pp > 1: the stage's own executor, which exec runs in micro-batches
    std::unique_ptr<Executor> exec;
    int64_t weight_bytes = 0;
    // From opening the checkpoint to the last weight on the device (device and communicator
    // setup included, as HF's from_pretrained includes its own); weights_seconds: the batched
    // read and upload alone.
    double load_seconds = 0, weights_seconds = 0;
    bool stopped = false;  // the load was stopped (LoadOptions::stop): no executor
};

struct LoadOptions {
    bool refits = false;       // the weights may be refit later (a GPU rank keeps its pinned staging ring for them)
    LoadStop* stop = nullptr;  // a serve's load: the weights' reads end on rank 0's word (RankModel::stopped)
};

// Fills `m` for this rank from the broadcast plan (whose graph moves into m.ctx). `prompts`
// size the memory check's activations; `progress` shows rank 0's loading line.
void load_rank_model(RankModel& m, const Job& job, ShardPlan& plan, MpiCommunicator& comm, const std::vector<Prompt>& prompts,
                     Progress& progress, const LoadOptions& options);

}  // namespace tpx
