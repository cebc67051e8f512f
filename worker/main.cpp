// tpx-worker: one rank of a tpx job. Reads like the job itself: start MPI, plan on rank 0 and
// broadcast, load this rank's slices, finish the pipeline, generate, report. Any error on any
// rank prints "rank R (host): message" and aborts the whole job, so no peer waits forever in
// a collective.
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include "common/file.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "common/mpi_check.h"
#include "jobs/emit.h"
#include "jobs/outputs.h"
#include "jobs/parse.h"
#include "loader/checkpoint.h"
#include "sharding/plan.h"
#include "worker/bench.h"
#include "worker/executor.h"
#include "worker/generation.h"
#include "worker/mpi_comm.h"
#include "worker/mpi_pipe.h"
#include "worker/pipeline.h"
#include "worker/progress.h"
#include "worker/serve_loop.h"
#include "text/text_tools.h"
#include "worker/report.h"
#include "worker/topology.h"
#include "worker/weights.h"
#ifdef TPX_HAVE_CUDA
#include "worker/cuda_executor.h"
#include "worker/cuda_pipeline.h"
#include "worker/gpu_context.h"
#endif

namespace po = boost::program_options;

namespace tpx {
namespace {

struct Options {
    std::string job;
    std::string dump_logits;
    std::string launched_by;
    std::string bench;  // JSON path: run the benchmark instead of the prompts
    std::string progress = "lines";  // quiet | lines | live (tpx run chooses by its terminal)
    int step_delay_ms = 0;
    bool serve = false;  // answer HTTP requests (tpx serve) instead of running run.prompts
    int ready_delay_ms = 0;  // serve: /health stays 503 this long after loading (a test aid)
    int refit_delay_ms = 0;  // serve: a refit pauses this long between its checks and its reads (a test aid)
    bool help = false;
};

Options parse_options(int argc, char** argv) {
    po::options_description desc("tpx-worker options (started by `tpx run` under mpirun, one per rank)");
    Options o;
    desc.add_options()("job", po::value(&o.job)->required(), "the job file")(
        "dump-logits", po::value(&o.dump_logits), "write every prompt position's and every step's logits to this .h5 file")(
        "step-delay-ms", po::value(&o.step_delay_ms), "pause per decode step (for failure tests; also TPX_STEP_DELAY_MS)")(
        "bench", po::value(&o.bench), "run the benchmark (docs/PERF.md) and write its JSON here")(
        "serve", po::bool_switch(&o.serve), "serve the job's model over HTTP from rank 0 ([serve], docs/SERVE.md)")(
        "ready-delay-ms", po::value(&o.ready_delay_ms), "serve: answer 503 (loading) this long after loading (for tests)")(
        "refit-delay-ms", po::value(&o.refit_delay_ms), "serve: pause a refit this long after its checks, before its reads (for tests)")(
        "launched-by", po::value(&o.launched_by), "srun: cross-check SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS against MPI")(
        "progress", po::value(&o.progress), "rank 0's progress on stderr: quiet, lines (every few seconds) or live (one line, rewritten)")(
        "help,h", "print this help");
    po::variables_map vm;
    try {
        po::store(po::parse_command_line(argc, argv, desc), vm);
        if (vm.count("help")) {
            std::cout << "usage: tpx-worker --job JOB [options]   (normally started by `tpx run` or `tpx submit`)\n\n" << desc << "\n";
            o.help = true;
            return o;
        }
        po::notify(vm);
        parse_progress_mode(o.progress);
        if (!vm.count("step-delay-ms"))
            if (const char* d = std::getenv("TPX_STEP_DELAY_MS")) o.step_delay_ms = std::atoi(d);
    } catch (const po::error& e) {
        throw JobError(std::string(e.what()) + "\n" + [&] { std::ostringstream os; os << desc; return os.str(); }());
    }
    return o;
}

// TPX_FAULT=RANK:STAGE makes RANK throw at STAGE (plan, load, decode): the failure tests' hook.
void maybe_fail(const char* stage, int rank) {
    const char* f = std::getenv("TPX_FAULT");
    if (!f) return;
    std::string spec = f;
    size_t colon = spec.find(':');
    if (colon == std::string::npos) return;
    if (std::atoi(spec.substr(0, colon).c_str()) == rank && spec.substr(colon + 1) == stage)
        throw Error(std::string("injected failure at ") + stage + " (TPX_FAULT=" + spec + ")");
}

// The kernel choices were environment variables before [backend.tuning]; one still set would
// be silently ignored, so it is refused with the key that replaced it.
void refuse_retired_variables() {
    static const char* const kRetired[][2] = {
        {"TPX_PDL", "pdl"},           {"TPX_GEMV_EARLY", "gemv_early"},     {"TPX_GEMV_SPLITK", "gemv_splitk"},
        {"TPX_GEMV_BALANCE", "gemv_balance"}, {"TPX_SUM_WIDE", "sum_wide"},  {"TPX_ATTN_EARLY", "attention_early"},
        {"TPX_DECODE_SPLITS", "decode_splits"}, {"TPX_ATTN_GQA", "attention_gqa"}, {"TPX_FLASH", "flash_tile"},
        {"TPX_FLASH_SHORT_MAX", "flash_short_max"}, {"TPX_GEMM_TUNE", "gemm_tune"}, {"TPX_RESIDUAL_EPILOGUE", "residual_epilogue"},
        {"TPX_MOE", "moe"},           {"TPX_ONESHOT", "oneshot"},            {"TPX_AR_FUSE", "fused_all_reduce"},
        {"TPX_PROFILE", "profile"},
    };
    for (const auto& [var, key] : kRetired)
        if (std::getenv(var))
            throw JobError(std::string(var) + " is no longer read: set backend.tuning." + key + " in the job ([backend.tuning], `tpx example`)");
}

std::vector<int64_t> eos_ids(const Job& job, const ShardPlan& plan, const Checkpoint& ckpt) {
    if (!job.run.eos.empty()) return job.run.eos;
    std::vector<int64_t> ids = parse_generation_eos(ckpt.generation_config_json(), job.model.path + "/generation_config.json");
    return ids.empty() ? plan.config.eos_token_ids : ids;
}

// The checkpoint's files are mapped while the GPU backend loads (loader/checkpoint.h): a file
// cut short under the loader then faults (SIGBUS) instead of failing a read. Say so, naming the
// rank, before the default action ends the process (and mpirun the job).
char bus_message[160];
void on_bus_error(int sig) {
    ssize_t ignored = ::write(STDERR_FILENO, bus_message, std::strlen(bus_message));
    (void)ignored;
    std::signal(sig, SIG_DFL);
    std::raise(sig);
}

// One finished prompt on the terminal: its text (JSON-quoted, so that newlines stay on the
// line) when the job has a tokenizer, else its ids.
void print_result(const SequenceResult& r) {
    std::string shown;
    if (r.has_text) {
        shown = " " + nlohmann::json(r.text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } else {
        for (int32_t t : r.output) shown += " " + std::to_string(t);
    }
    std::printf("%s:%s  (%s, %zu tokens, first token %.1f ms)\n", r.prompt.id.c_str(), shown.c_str(), r.finish_reason.c_str(), r.output.size(),
                r.time_to_first_token_ms);
    std::fflush(stdout);
}

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
            auto start = std::chrono::steady_clock::now();
            std::unique_lock<std::mutex> lock(mutex_);
            while (!cv_.wait_for(lock, std::chrono::milliseconds(250), [this] { return done_; })) {
                double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
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

// A pipeline stage's links (pp > 1; both null at pp = 1, where the world is the tp group): its tp
// group's communicator and the pipe to the stages around it. Collective over the world.
struct StageLinks {
    std::unique_ptr<MpiCommunicator> tp_comm;
    std::unique_ptr<MpiPipe> pipe;
};

StageLinks join_stage(const ShardPlan& plan, int rank) {
    StageLinks links;
    if (plan.pp == 1) return links;
    const RankPlan& me = plan.ranks.at(rank);
    MPI_Comm group = MPI_COMM_NULL;
    MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, me.stage, rank, &group));
    links.tp_comm = std::make_unique<MpiCommunicator>(group);
    links.pipe = std::make_unique<MpiPipe>(PipeLayout{rank, me.stage, plan.pp, plan.tp, me.tp_rank}, collective_timeout_from_env());
    return links;
}

int run(const Options& opt) {
    MpiCommunicator comm;
    const int rank = comm.rank();
    std::snprintf(bus_message, sizeof(bus_message),
                  "rank %d: bus error: a mapped checkpoint file was cut short or changed while it was being read\n", rank);
    std::signal(SIGBUS, on_bus_error);
    if (opt.launched_by == "srun") check_srun_environment(rank, comm.world());
    else if (!opt.launched_by.empty()) throw JobError("--launched-by takes only \"srun\"");
    Job job = load_job(opt.job);
    refuse_retired_variables();
    if (comm.world() != job.world())
        throw Error("mpirun started " + std::to_string(comm.world()) + " ranks but the job's " +
                        (job.parallel.pp > 1 ? "parallel.tp x parallel.pp is " : "parallel.tp is ") + std::to_string(job.world()),
                    kExitBadInput);

    // Rank 0 plans; the others trust its plan.
    std::string plan_text;
    if (rank == 0) {
        maybe_fail("plan", rank);
        plan_text = make_plan(job).to_json().dump();
    }
    plan_text = comm.broadcast_string(plan_text);
    ShardPlan plan = ShardPlan::from_json(nlohmann::json::parse(plan_text));
    if (rank == 0) {
        log_info("job '", job.name, "': ", plan.config.architecture, " from ", job.model.path, ", tp=", plan.tp, " ep=", plan.ep,
                 plan.pp > 1 ? " pp=" + std::to_string(plan.pp) + " micro_batches=" + std::to_string(plan.micro_batches) : std::string(),
                 ", backend ", plan.backend, ", weights ", plan.weight_dtype);
        if (plan.pp > 1) log_info("pipeline stages: ", describe_stages(plan));
        for (const std::string& w : plan.warnings) log_warn(w);
        if (plan.backend == "cuda") log_info("kernel settings [backend.tuning]: ", format_kernel_config(job.backend.tuning));
    }

    // Prompts: read and checked on rank 0, then every rank has the tokens.
    std::vector<Prompt> prompts;
    if (plan.pp > 1 && (opt.serve || !opt.bench.empty()))
        throw Error(job.file + ": parallel.pp = " + std::to_string(plan.pp) + ": " + (opt.serve ? "tpx serve" : "tpx bench") +
                        " runs pp = 1 jobs only in this version (tpx run takes pipeline stages)",
                    kExitBadInput);
    if (job.run.prompts.empty() && opt.bench.empty() && !opt.serve) throw Error(job.file + ": run.prompts is not set: there is nothing to run", kExitBadInput);
    std::vector<int32_t> packed;
    uint64_t packed_size = 0;
    TextTools text;  // rank 0's tokenizer and chat template, when the job has them
    if (rank == 0 && opt.bench.empty()) {
        text = load_text_tools(job);
        if (!opt.serve) prompts = read_prompts(job.run.prompts, plan.config.vocab_size, job.run.max_new_tokens, plan.max_seq_len, text);
        packed = pack_prompts(prompts);
        packed_size = packed.size();
    }
    comm.broadcast(&packed_size, sizeof(packed_size), 0);
    packed.resize(packed_size);
    comm.broadcast(packed.data(), packed_size * sizeof(int32_t), 0);
    if (rank != 0 && opt.bench.empty() && !opt.serve) prompts = unpack_prompts(packed);

    // Outputs are proven writable before any weight is read (a Slurm node may not see the
    // folders the launcher saw).
    if (rank == 0 && opt.bench.empty() && !opt.serve) {
        std::vector<NamedPath> extra;
        if (!opt.dump_logits.empty()) extra.push_back({"--dump-logits", opt.dump_logits});
        check_job_outputs(job, extra);
    }
    if (plan.backend == "cpu") check_memory_before_load(plan, prompts, rank);
    Progress progress(rank == 0 ? parse_progress_mode(opt.progress) : ProgressMode::kQuiet);
    // Serving: rank 0 listens (answering 503) while every rank loads.
    std::unique_ptr<ServeFront> serve_front;
    if (opt.serve) {
        install_serve_signals();
        if (rank == 0) serve_front = open_serve_front(job, plan.config.vocab_size, plan.max_seq_len, text);
    }

    // The rest of the pipeline, on this rank: load, fuse, allocate, capture.
    auto load_start = std::chrono::steady_clock::now();
    std::unique_ptr<Checkpoint> ckpt = Checkpoint::open(job.model.path);
#ifdef TPX_HAVE_CUDA
    // Declared before the executor: destroyed after it (the executor uses the stream).
    std::unique_ptr<GpuContext> gpu;
    DeviceWeights device_weights;
    std::unique_ptr<NcclPipe> nccl_pipe;         // pp > 1: NCCL over the stage boundaries
    std::unique_ptr<CudaExecutor> cuda_stage;    // pp > 1: this stage's executor, run by a CudaPipelineExecutor
    CudaExecutor* cuda_exec = nullptr;
#endif
    HostWeights host_weights;
    std::unique_ptr<Executor> exec;
    int64_t weight_bytes = 0;
    double load_seconds = 0;
    TransformRegistry& reg = TransformRegistry::global();
    TransformContext ctx;
    ctx.job = &job;
    ctx.config = plan.config;
    ctx.graph = std::move(plan.graph);
    ctx.tp = plan.tp;
    ctx.ep = plan.ep;
    // This rank's stage: its layers of the graph, its tp group's communicator (the tp collectives
    // stay inside the stage), and the pipe to the stages around it. rank = stage x tp + tp_rank.
    const int tp_rank = plan.ranks.at(rank).tp_rank;
    cut_stage(ctx.graph, plan.stages.at(plan.ranks.at(rank).stage), plan.config.num_layers);
    StageLinks stage = join_stage(plan, rank);
    std::unique_ptr<MpiPipe>& pipe = stage.pipe;
    std::unique_ptr<CpuExecutor> stage_exec;
    MpiCommunicator& tp_comm = stage.tp_comm ? *stage.tp_comm : comm;
    ctx.rank = tp_rank;
    ctx.weight_dtype = plan.weight_dtype;
    ctx.act_dtype = plan.act_dtype;
    ctx.memory_in_use = [](const TransformContext&) { return (int64_t)peak_rss_bytes(); };
    // load_seconds: from opening the checkpoint to the last weight on the device (device and
    // communicator setup included, as HF's from_pretrained includes its own); weights_seconds:
    // the batched read and upload alone.
    double weights_seconds = 0;
    std::chrono::steady_clock::time_point weights_start;
    auto loading = [&] { weights_start = std::chrono::steady_clock::now(); };
    auto loaded = [&](int64_t bytes) {
        weight_bytes = bytes;
        auto now = std::chrono::steady_clock::now();
        load_seconds = std::chrono::duration<double>(now - load_start).count();
        weights_seconds = std::chrono::duration<double>(now - weights_start).count();
    };
    if (plan.backend == "cpu") {
        reg.bind("load_weights", [&](TransformContext& c, const TransformOptions&) {
            maybe_fail("load", rank);
            loading();
            host_weights = load_host_weights(c.graph, tp_rank, *ckpt);
            loaded(host_weights.bytes);
            return TransformResult{(int)host_weights.buffers.size(), false, ""};
        });
        reg.bind("move_inputs_to_device", [](TransformContext&, const TransformOptions&) {
            return TransformResult{0, true, "cpu backend: inputs stay in host memory"};
        });
        reg.bind("init_kv_cache", [&](TransformContext& c, const TransformOptions&) {
            auto cpu = std::make_unique<CpuExecutor>(c.graph, tp_comm, std::move(host_weights.buffers), plan.max_batch, plan.max_seq_len);
            if (!pipe) {
                exec = std::move(cpu);
            } else {
                stage_exec = std::move(cpu);
                exec = std::make_unique<PipelineExecutor>(*stage_exec, *pipe, plan.micro_batches, plan.config.vocab_size,
                                                          plan.config.hidden_size);
            }
            return TransformResult{1, false, ""};
        });
        reg.bind("compile_cuda_graph", [](TransformContext&, const TransformOptions&) {
            return TransformResult{0, true, "cpu backend: no CUDA graphs"};
        });
    } else {
#ifdef TPX_HAVE_CUDA
        gpu = std::make_unique<GpuContext>(tp_comm, job.backend.tuning);
        if (pipe) nccl_pipe = std::make_unique<NcclPipe>(*pipe, gpu->stream);
        check_memory_before_load(plan, prompts, rank);
        ctx.memory_in_use = [](const TransformContext&) { return device_memory_in_use(); };
        reg.bind("load_weights", [&](TransformContext& c, const TransformOptions&) {
            maybe_fail("load", rank);
            loading();
            device_weights = upload_weights(c.graph, tp_rank, *ckpt, gpu->stream);
            loaded(device_weights.bytes);
            return TransformResult{(int)(device_weights.params.size() + device_weights.quant.size()), false, ""};
        });
        reg.bind("move_inputs_to_device", [](TransformContext&, const TransformOptions&) {
            return TransformResult{0, false, "inputs are staged into fixed device buffers per forward"};
        });
        reg.bind("init_kv_cache", [&](TransformContext& c, const TransformOptions&) {
            auto cuda = std::make_unique<CudaExecutor>(c.graph, tp_rank, gpu->nccl.get(), std::move(device_weights), plan.max_batch,
                                                       plan.max_seq_len, gpu->stream, gpu->timeout_s, job.backend.tuning);
            cuda_exec = cuda.get();
            if (!pipe) {
                exec = std::move(cuda);
            } else {
                cuda_stage = std::move(cuda);
                exec = std::make_unique<CudaPipelineExecutor>(*cuda_stage, *pipe, *nccl_pipe, plan.micro_batches, plan.config.vocab_size,
                                                              plan.config.hidden_size);
            }
            return TransformResult{1, false, ""};
        });
        reg.bind("compile_cuda_graph", [&](TransformContext&, const TransformOptions&) {
            cuda_exec->enable_graphs(true);  // per stage: the sends and receives stay outside the graphs
            return TransformResult{1, false, "decode steps are captured on first use per batch size"};
        });
#else
        throw Error("this tpx-worker was built without CUDA; the job asks for backend " + plan.backend, kExitBadInput);
#endif
    }
    {
        LoadProgress shown(progress, *ckpt, plan.ranks.at(rank).read_bytes);
        run_pipeline(ctx, resolve_transform_options(job), Stage::kWeightLoad, Stage::kCompile);
    }
    if (rank == 0 && weights_seconds > 0)
        log_info("loaded ", weight_bytes / 1e9, " GB per rank in ", load_seconds, " s; the weights' read and upload ", weights_seconds,
                 " s (", ckpt->stats().data_bytes / 1e9 / weights_seconds, " GB/s)");
    if (!exec) throw Error("init_kv_cache is disabled: the executor needs a KV cache", kExitBadInput);

    if (!opt.bench.empty()) {
        DeviceRates rates;
#ifdef TPX_HAVE_CUDA
        if (gpu) rates = measure_device_rates(gpu->stream);
#endif
        BenchSettings bs;
        bs.json_path = opt.bench;
        bs.load_seconds = load_seconds;
        bs.weights_seconds = weights_seconds;
        bs.read_bytes = (double)ckpt->stats().data_bytes;
        bs.planned_read_bytes = (double)plan.ranks.at(rank).read_bytes;
        bs.graph = &ctx.graph;
        bs.weight_bytes = (double)weight_bytes;  // as held: quantized linears count their packed bytes
        run_bench(*exec, comm, plan, rates, bs);
        comm.barrier();
        return 0;
    }

    if (opt.serve) {
        ServeSettings ss;
        ss.slots = plan.max_batch;
        ss.prefill_chunk = job.serve.prefill_chunk;
        ss.eos = eos_ids(job, plan, *ckpt);
        ss.tokenizer = text.tokenizer ? &*text.tokenizer : nullptr;
        ss.grace_s = job.serve.grace_s;
        ss.step_delay_ms = opt.step_delay_ms;
        ss.ready_delay_ms = opt.ready_delay_ms;
        ss.refit = {&ctx.graph, ckpt.get(), &plan.config, opt.refit_delay_ms};
        serve(*exec, comm, serve_front.get(), ss);
        return 0;
    }

    GenerationSettings gs;
    gs.max_batch = plan.max_batch;
    gs.model_path = job.model.path;
    gs.max_new_tokens = job.run.max_new_tokens;
    gs.eos = eos_ids(job, plan, *ckpt);
    gs.sampling = {job.run.sampling.temperature, job.run.sampling.top_k, job.run.sampling.top_p};
    gs.seed = job.run.sampling.seed;
    gs.keep_logits = !opt.dump_logits.empty();
    gs.step_delay_ms = opt.step_delay_ms;
    gs.progress = rank == 0 ? &progress : nullptr;
    gs.tokenizer = text.tokenizer ? &*text.tokenizer : nullptr;
    gs.stop = StopStrings(job.run.stop);
    gs.on_finished = print_result;
    maybe_fail("decode", rank);
    std::vector<SequenceResult> results = generate(*exec, comm, prompts, gs);
    progress.finish();
#ifdef TPX_HAVE_CUDA
    if (cuda_exec && rank == 0)
        log_info("decode: ", cuda_exec->graph_replays(), " CUDA graph replays of ", cuda_exec->graphs_captured(), " captured graphs (",
                 cuda_exec->programmatic_edges(), " programmatic edges in the last; ", cuda_exec->fused_all_reduces(),
                 " all-reduces of a batch-1 step summed in the GEMVs)");
#endif

    RankReport mine;
    mine.rank = rank;
    mine.host = identity().host;
    ReadStats st = ckpt->stats();
    mine.read_bytes = (double)st.data_bytes;
    mine.header_bytes = (double)st.header_bytes;
    mine.planned_read_bytes = (double)plan.ranks.at(rank).read_bytes;
    mine.load_seconds = load_seconds;
    mine.peak_rss_bytes = peak_rss_bytes();
    mine.weight_bytes = (double)weight_bytes;
    mine.kv_cache_bytes = (double)exec->kv_cache_bytes();
    std::vector<RankReport> reports = gather_reports(mine, comm);

    if (rank == 0) {
        write_results_jsonl(job.run.output, results);
        if (!opt.dump_logits.empty()) write_logits_h5(opt.dump_logits, results, exec->vocab());
        if (std::string ranks = ranks_table_path(job); !ranks.empty()) write_file_atomically(ranks, reports_json(reports));
        std::printf("\n%s", format_reports(reports).c_str());
        std::printf("output: %s\n", job.run.output.c_str());
        std::fflush(stdout);
    }
    comm.barrier();
    return 0;
}

}  // namespace
}  // namespace tpx

int main(int argc, char** argv) {
    // A rank never outlives the process that started it (mpirun's daemon, or srun's step): if
    // that dies without ending its ranks, the kernel ends this one.
    const pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) return tpx::kExitRuntime;
    for (int i = 1; i < argc; ++i)
        if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
            tpx::parse_options(argc, argv);  // prints the help, no MPI needed
            return 0;
        }
    // MPI_Init waits for every rank to start: one that stops (or never starts) would hold the
    // others there, before any collective with a timeout. This rank ends itself after
    // TPX_COLLECTIVE_TIMEOUT_S, and mpirun then ends the job.
    // Until MPI can say, the rank is the launcher's (mpirun's or srun's) for the message.
    const char* launcher_rank = std::getenv("OMPI_COMM_WORLD_RANK");
    if (!launcher_rank) launcher_rank = std::getenv("SLURM_PROCID");
    tpx::set_identity(launcher_rank ? std::atoi(launcher_rank) : -1, 0);
    std::mutex init_mutex;
    std::condition_variable init_cv;
    bool init_done = false;
    std::thread init_watchdog([&] {
        std::unique_lock<std::mutex> lock(init_mutex);
        const double timeout_s = tpx::collective_timeout_from_env();
        if (timeout_s <= 0 || init_cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return init_done; })) return;
        std::fprintf(stderr, "%s: MPI_Init waited more than %g s (TPX_COLLECTIVE_TIMEOUT_S): a rank did not start, or stopped while starting\n",
                     tpx::where().c_str(), timeout_s);
        std::fflush(stderr);
        _exit(tpx::kExitRuntime);
    });
    MPI_Init(&argc, &argv);
    {
        std::lock_guard<std::mutex> lock(init_mutex);
        init_done = true;
    }
    init_cv.notify_one();
    init_watchdog.join();
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    tpx::set_identity(rank, world);
    int code = 0;
    try {
        tpx::Options options = tpx::parse_options(argc, argv);
        code = options.help ? 0 : tpx::run(options);
    } catch (const tpx::Error& e) {
        code = e.exit_code();
        std::string what = e.what();
        // Messages from check macros already start with "rank R (host)".
        std::string prefix = tpx::where() + ": ";
        std::fprintf(stderr, "%s%s\n", what.rfind(prefix, 0) == 0 ? "" : prefix.c_str(), what.c_str());
    } catch (const std::bad_alloc&) {
        code = tpx::kExitRuntime;
        std::fprintf(stderr, "%s: out of host memory (an allocation failed); `tpx plan` shows what each rank holds: lower run.max_seq_len "
                             "or run.max_batch, or use more ranks\n", tpx::where().c_str());
    } catch (const std::exception& e) {
        code = tpx::kExitRuntime;
        std::fprintf(stderr, "%s: internal error: %s\n", tpx::where().c_str(), e.what());
    }
    if (code != 0) {
        std::fflush(stderr);
        // Ends every rank of the job, including those waiting in a collective.
        MPI_Abort(MPI_COMM_WORLD, code);
        return code;
    }
    MPI_Finalize();
    return 0;
}
