// This rank's model: its pipeline stage, memory check, load, post-load passes, KV cache and
// executor (rank_model.h).
#include "worker/rank_model.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <thread>

#include "common/fault_injection.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "common/mpi_check.h"
#include "sharding/kv_cache.h"
#include "sharding/pipeline.h"
#include "worker/pipeline.h"
#include "worker/report.h"
#include "worker/topology.h"
#include "worker/weights.h"
#ifdef TPX_HAVE_CUDA
#include "worker/cuda_executor.h"
#include "worker/cuda_pipeline.h"
#include "worker/device_weights.h"
#endif

namespace tpx {

RankModel::RankModel() = default;
RankModel::~RankModel() = default;

namespace {

using Clock = std::chrono::steady_clock;

// The largest prefill of the run: prompts go in batches of max_batch, in file order.
int64_t max_prefill_tokens(const std::vector<Prompt>& prompts, int64_t max_batch) {
    int64_t most = 0;
    for (size_t first = 0; first < prompts.size(); first += (size_t)max_batch) {
        int64_t tokens = 0;
        for (size_t i = first; i < std::min(prompts.size(), first + (size_t)max_batch); ++i) tokens += (int64_t)prompts[i].tokens.size();
        most = std::max(most, tokens);
    }
    return most;
}

// Before any weight is allocated: on the CPU backend the first rank of each host checks what
// that host's ranks need against its available memory; on GPUs each rank checks its device's
// free memory. A job that does not fit is refused with the numbers (JobError, exit 2) instead
// of dying in the kernel's OOM killer or a bare bad_alloc.
void check_memory_before_load(const ShardPlan& plan, const std::vector<Prompt>& prompts, int rank) {
    int64_t tokens = std::max<int64_t>(plan.max_batch, max_prefill_tokens(prompts, plan.max_batch));
    int64_t rows = std::min<int64_t>(plan.max_batch, std::max<size_t>(1, prompts.size()));
    if (plan.backend == "cpu") {
        std::vector<int> ranks = ranks_on_this_host();
        int64_t available = available_host_memory();
        if (ranks.front() == rank && available >= 0)
            check_memory(plan, ranks, tokens, rows, available, "host " + identity().host, false);
    } else {
#ifdef TPX_HAVE_CUDA
        int64_t free_bytes = device_free_memory();  // this rank's device, selected by GpuContext
        if (free_bytes >= 0) check_memory(plan, {rank}, tokens, rows, free_bytes, where() + ", its GPU", true);
#endif
    }
}

// Rank 0's loading line: bytes read of the plan's, and the rate, while the load runs.
class LoadProgress {
public:
    LoadProgress(Progress& progress, const Checkpoint& ckpt, int64_t planned) : progress_(progress) {
        if (progress.quiet()) return;
        thread_ = std::thread([this, &ckpt, planned] {
            auto start = Clock::now();
            std::unique_lock<std::mutex> lock(mutex_);
            while (!cv_.wait_for(lock, std::chrono::milliseconds(250), [this] { return done_; })) {
                double s = std::chrono::duration<double>(Clock::now() - start).count();
                double gb = (double)ckpt.stats().data_bytes / 1e9;
                char line[128];
                std::snprintf(line, sizeof(line), "loading: %.2f of %.2f GB read, %.2f GB/s", gb, (double)planned / 1e9, s > 0 ? gb / s : 0.0);
                progress_.update(line);
            }
        });
    }
    ~LoadProgress() {
        if (!thread_.joinable()) return;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done_ = true;
        }
        cv_.notify_one();
        thread_.join();
    }

private:
    Progress& progress_;
    std::thread thread_;
    std::mutex mutex_;
    std::condition_variable cv_;
    bool done_ = false;
};

// The post-load passes' context: the plan's graph cut to this rank's stage (rank = stage x tp
// + tp_rank), and its parallel layout, on this rank.
void init_rank_context(TransformContext& ctx, const Job& job, ShardPlan& plan, int rank) {
    const RankPlan& me = plan.ranks.at(rank);
    ctx.job = &job;
    ctx.config = plan.config;
    ctx.graph = std::move(plan.graph);
    cut_stage(ctx.graph, plan.stages.at(me.stage), plan.config.num_layers);
    ctx.tp = plan.tp;
    ctx.ep = plan.ep;
    ctx.rank = me.tp_rank;
    ctx.weight_dtype = plan.weight_dtype;
    ctx.act_dtype = plan.act_dtype;
    ctx.memory_in_use = [](const TransformContext&) { return (int64_t)peak_rss_bytes(); };
}

// pp > 1: the stage's tp group and its pipe (collective over the world); nothing at pp = 1.
void join_stage(RankModel& m, const ShardPlan& plan, int rank, double timeout_s) {
    if (plan.pp == 1) return;
    const RankPlan& me = plan.ranks.at(rank);
    MPI_Comm group = MPI_COMM_NULL;
    MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, me.stage, rank, &group));
    m.tp_comm = std::make_unique<MpiCommunicator>(group, timeout_s);
    m.pipe = std::make_unique<MpiPipe>(PipeLayout{rank, me.stage, plan.pp, plan.tp, me.tp_rank}, timeout_s);
}

// The weights' reads, which rank 0's word stops where `stop` is given; true (m.stopped) when
// they were stopped.
bool read_weights(RankModel& m, LoadStop* stop, const std::function<void()>& read) {
    if (!stop) {
        read();
        return false;
    }
    struct Controlled {  // the checkpoint consults the stop while the reads run, and only then
        Checkpoint& ckpt;
        ~Controlled() { ckpt.set_control(nullptr); }
    } controlled{*m.ckpt};
    m.ckpt->set_control(stop->control());
    m.stopped = stop->run(read);
    return m.stopped;
}

// The CPU backend: fp32 weights in host memory, the CPU executor (a stage's, run by the
// pipeline executor, at pp > 1). `tp`: the stage's tp group (the world at pp = 1).
void load_on_host(RankModel& m, const Job& job, const ShardPlan& plan, MpiCommunicator& tp, Clock::time_point start, LoadStop* stop) {
    const Clock::time_point weights_start = Clock::now();
    HostWeights weights;
    if (read_weights(m, stop, [&] { weights = load_host_weights(m.ctx.graph, tp.rank(), *m.ckpt); })) return;
    m.weight_bytes = weights.bytes;
    m.load_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    m.weights_seconds = std::chrono::duration<double>(Clock::now() - weights_start).count();
    run_pipeline(m.ctx, resolve_transform_options(job), Stage::kPostLoadFusion, Stage::kVisualize);
    auto cpu = std::make_unique<CpuExecutor>(m.ctx.graph, tp, std::move(weights.buffers),
                                             kv_cache_layout(m.ctx.graph, plan.max_batch, plan.max_seq_len));
    if (!m.pipe) {
        m.exec = std::move(cpu);
        return;
    }
    m.exec = std::make_unique<PipelineExecutor>(*cpu, *m.pipe, plan.micro_batches, plan.config.vocab_size, plan.config.hidden_size);
    m.stage = std::move(cpu);
}

#ifdef TPX_HAVE_CUDA
// The GPU backend: bf16 (or packed quantized) weights uploaded to this rank's device, the CUDA
// executor (a stage's, run by the GPU pipeline executor, at pp > 1). `tp`: the stage's tp group.
void load_on_device(RankModel& m, const Job& job, const ShardPlan& plan, MpiCommunicator& tp, Clock::time_point start,
                    const LoadOptions& options) {
    const Clock::time_point weights_start = Clock::now();
    DeviceWeights weights;
    if (read_weights(m, options.stop, [&] {
            weights = upload_weights(m.ctx.graph, tp.rank(), *m.ckpt, m.gpu->stream, job.backend.tuning.quant_prefill == "w8a8");
        }))
        return;
    if (!options.refits) weights.drop_staging();  // its pinned memory has no further use
    m.weight_bytes = weights.bytes;
    m.load_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    m.weights_seconds = std::chrono::duration<double>(Clock::now() - weights_start).count();
    run_pipeline(m.ctx, resolve_transform_options(job), Stage::kPostLoadFusion, Stage::kVisualize);
    auto cuda = std::make_unique<CudaExecutor>(m.ctx.graph, tp.rank(), m.gpu->nccl.get(), std::move(weights),
                                               kv_cache_layout(m.ctx.graph, plan.max_batch, plan.max_seq_len), m.gpu->stream,
                                               m.gpu->timeout_s, job.backend.tuning);
    // Decode steps captured on first use per batch size; per stage, the sends and receives stay
    // outside the graphs.
    cuda->enable_graphs(job.backend.cuda_graphs);
    m.cuda = cuda.get();
    if (!m.pipe) {
        m.exec = std::move(cuda);
        return;
    }
    m.exec = std::make_unique<CudaPipelineExecutor>(*cuda, *m.pipe, *m.nccl_pipe, plan.micro_batches, plan.config.vocab_size,
                                                    plan.config.hidden_size);
    m.stage = std::move(cuda);
}
#endif

}  // namespace

void load_rank_model(RankModel& m, const Job& job, ShardPlan& plan, MpiCommunicator& comm, const std::vector<Prompt>& prompts,
                     Progress& progress, const LoadOptions& options) {
    const int rank = comm.rank();
    if (plan.backend == "cpu") check_memory_before_load(plan, prompts, rank);
    const Clock::time_point start = Clock::now();
    m.ckpt = Checkpoint::open(job.model.path, job.model.read_threads);
    init_rank_context(m.ctx, job, plan, rank);
    join_stage(m, plan, rank, job.backend.collective_timeout_s);
    MpiCommunicator& tp = m.tp_comm ? *m.tp_comm : comm;
    if (plan.backend != "cpu") {
#ifdef TPX_HAVE_CUDA
        m.gpu = std::make_unique<GpuContext>(tp, job.backend.tuning);
        if (m.pipe) m.nccl_pipe = std::make_unique<NcclPipe>(*m.pipe, m.gpu->stream);
        check_memory_before_load(plan, prompts, rank);
        m.ctx.memory_in_use = [](const TransformContext&) { return device_memory_in_use(); };
#else
        throw Error("this tpx-worker was built without CUDA; the job asks for backend " + plan.backend, kExitBadInput);
#endif
    }
    LoadProgress shown(progress, *m.ckpt, plan.ranks.at(rank).read_bytes);
    maybe_inject_fault("load", rank);
#ifdef TPX_HAVE_CUDA
    if (m.gpu) {
        load_on_device(m, job, plan, tp, start, options);
        return;
    }
#endif
    load_on_host(m, job, plan, tp, start, options.stop);
}

}  // namespace tpx
