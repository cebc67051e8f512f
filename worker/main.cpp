// tpx-worker: one rank of a tpx job. Reads like the job itself: start MPI, plan on rank 0 and
// broadcast, load this rank's model (worker/rank_model.h), then generate and report (or serve,
// or benchmark). Any error on any
// rank prints "rank R (host): message" and aborts the whole job, so no peer waits forever in
// a collective.
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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

#include "common/fault_injection.h"
#include "common/file.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "common/mpi_check.h"
#include "common/temporaries.h"
#include "jobs/emit.h"
#include "jobs/outputs.h"
#include "jobs/parse.h"
#include "loader/checkpoint.h"
#include "sharding/plan.h"
#include "worker/bench.h"
#include "worker/executor.h"
#include "worker/generation.h"
#include "worker/mpi_comm.h"
#include "worker/progress.h"
#include "worker/rank_model.h"
#include "worker/load_stop.h"
#include "worker/serve_loop.h"
#include "text/text_tools.h"
#include "worker/report.h"
#include "worker/topology.h"
#ifdef TPX_HAVE_CUDA
#include "worker/cuda_executor.h"
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
    int read_delay_ms = 0;   // serve: each read of the load pauses this long (a test aid: a load to stop)
    bool help = false;
};

Options parse_options(int argc, char** argv) {
    po::options_description desc("tpx-worker options (started by `tpx run` under mpirun, one per rank)");
    Options o;
    desc.add_options()("job", po::value(&o.job)->required(), "the job file")(
        "dump-logits", po::value(&o.dump_logits), "write every prompt position's and every step's logits to this .h5 file")(
        "step-delay-ms", po::value(&o.step_delay_ms), "pause per decode step (for failure tests; also TPX_STEP_DELAY_MS, common/fault_injection.h)")(
        "bench", po::value(&o.bench), "run the benchmark (docs/PERF.md) and write its JSON here")(
        "serve", po::bool_switch(&o.serve), "serve the job's model over HTTP from rank 0 ([serve], docs/SERVE.md)")(
        "ready-delay-ms", po::value(&o.ready_delay_ms), "serve: answer 503 (loading) this long after loading (for tests)")(
        "refit-delay-ms", po::value(&o.refit_delay_ms), "serve: pause a refit this long after its checks, before its reads (for tests)")(
        "read-delay-ms", po::value(&o.read_delay_ms), "serve: pause each of the load's reads this long (for tests)")(
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
            o.step_delay_ms = injected_step_delay_ms();
    } catch (const po::error& e) {
        throw JobError(std::string(e.what()) + "\n" + [&] { std::ostringstream os; os << desc; return os.str(); }());
    }
    return o;
}

std::vector<int64_t> eos_ids(const Job& job, const ShardPlan& plan, const Checkpoint& ckpt) {
    if (!job.run.eos.empty()) return job.run.eos;
    std::vector<int64_t> ids = parse_generation_eos(ckpt.generation_config_json(), job.model.path + "/generation_config.json");
    return ids.empty() ? plan.config.eos_token_ids : ids;
}

// How long MPI_Init may wait for the other ranks: the job's backend.collective_timeout_s. A job
// that does not parse gets the default here; run() then reports it as any bad job, after
// MPI_Init, so that every rank ends.
double init_timeout_s(int argc, char** argv) {
    try {
        return load_job(parse_options(argc, argv).job).backend.collective_timeout_s;
    } catch (const std::exception&) {
        return BackendSection{}.collective_timeout_s;
    }
}

// Where rank 0 prints its report: standard output, or standard error when run.output is
// standard output itself (the results alone there, for `tpx run JOB | jq`).
FILE* report_stream(const Job& job) {
    struct stat out, here;
    const bool same = ::stat(job.run.output.c_str(), &out) == 0 && ::fstat(STDOUT_FILENO, &here) == 0 && out.st_dev == here.st_dev &&
                      out.st_ino == here.st_ino;
    return same ? stderr : stdout;
}

// One finished prompt on the terminal: its text (JSON-quoted, so that newlines stay on the
// line) when the job has a tokenizer, else its ids.
void print_result(FILE* to, const SequenceResult& r) {
    std::string shown;
    if (r.has_text) {
        shown = " " + nlohmann::json(r.text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } else {
        for (int32_t t : r.output) shown += " " + std::to_string(t);
    }
    std::fprintf(to, "%s:%s  (%s, %zu tokens, first token %.1f ms)\n", r.prompt.id.c_str(), shown.c_str(), r.finish_reason.c_str(),
                 r.output.size(), r.time_to_first_token_ms);
    std::fflush(to);
}

// Rank 0 plans; the others trust its plan.
ShardPlan plan_on_rank0(const Job& job, MpiCommunicator& comm) {
    std::string plan_text;
    if (comm.rank() == 0) {
        maybe_inject_fault("plan", 0);
        plan_text = make_plan(job).to_json().dump();
    }
    plan_text = comm.broadcast_string(plan_text);
    ShardPlan plan = ShardPlan::from_json(nlohmann::json::parse(plan_text));
    if (comm.rank() == 0) {
        log_info("job '", job.name, "': ", plan.config.architecture, " from ", job.model.path, ", tp=", plan.tp, " ep=", plan.ep,
                 plan.pp > 1 ? " pp=" + std::to_string(plan.pp) + " micro_batches=" + std::to_string(plan.micro_batches) : std::string(),
                 ", backend ", plan.backend, ", weights ", plan.weight_dtype);
        if (plan.pp > 1) log_info("pipeline stages: ", describe_stages(plan));
        for (const std::string& w : plan.warnings) log_warn(w);
        log_info("settings: backend.collective_timeout_s=", job.backend.collective_timeout_s, " model.read_threads=", job.model.read_threads,
                 plan.backend == "cuda" ? std::string(" backend.cuda_graphs=") + (job.backend.cuda_graphs ? "true" : "false") : "");
        if (plan.backend == "cuda") log_info("kernel settings [backend.tuning]: ", format_kernel_config(job.backend.tuning));
    }
    return plan;
}

// The prompts, read and checked on rank 0 (with its tokenizer and chat template, kept in
// `text`), then every rank has the tokens. None for the benchmark and for serving.
std::vector<Prompt> read_and_share_prompts(const Options& opt, const Job& job, const ShardPlan& plan, MpiCommunicator& comm,
                                           TextTools& text) {
    std::vector<Prompt> prompts;
    if (job.run.prompts.empty() && opt.bench.empty() && !opt.serve)
        throw Error(job.file + ": run.prompts is not set: there is nothing to run", kExitBadInput);
    std::vector<int32_t> packed;
    uint64_t packed_size = 0;
    if (comm.rank() == 0 && opt.bench.empty()) {
        text = load_text_tools(job);
        if (!opt.serve) prompts = read_prompts(job.run.prompts, plan.config.vocab_size, job.run.max_new_tokens, plan.max_seq_len, text);
        packed = pack_prompts(prompts);
        packed_size = packed.size();
    }
    comm.broadcast(&packed_size, sizeof(packed_size), 0);
    packed.resize(packed_size);
    comm.broadcast(packed.data(), packed_size * sizeof(int32_t), 0);
    if (comm.rank() != 0 && opt.bench.empty() && !opt.serve) prompts = unpack_prompts(packed);
    return prompts;
}

int run_benchmark(const Options& opt, const Job& job, const ShardPlan& plan, MpiCommunicator& comm, RankModel& m) {
    DeviceRates rates;
#ifdef TPX_HAVE_CUDA
    if (m.gpu) rates = measure_device_rates(m.gpu->stream);
#endif
    BenchSettings bs;
    bs.what = job.bench;
    bs.json_path = opt.bench;
    bs.fifo_wait_s = job.backend.fifo_wait_s();
    bs.load_seconds = m.load_seconds;
    bs.weights_seconds = m.weights_seconds;
    bs.read_bytes = (double)m.ckpt->stats().data_bytes;
    bs.planned_read_bytes = (double)plan.ranks.at(comm.rank()).read_bytes;
    bs.graph = &m.ctx.graph;
    bs.weight_bytes = (double)m.weight_bytes;  // as held: quantized linears count their packed bytes
    run_bench(*m.exec, comm, plan, rates, bs);
    comm.barrier();
    return 0;
}

int run_serve(const Options& opt, const Job& job, const ShardPlan& plan, MpiCommunicator& comm, RankModel& m, const TextTools& text,
              ServeFront* front) {
    ServeSettings ss;
    ss.slots = plan.max_batch;
    ss.prefill_chunk = job.serve.prefill_chunk;
    ss.eos = eos_ids(job, plan, *m.ckpt);
    ss.tokenizer = text.tokenizer ? &*text.tokenizer : nullptr;
    ss.grace_s = job.serve.grace_s;
    ss.step_delay_ms = opt.step_delay_ms;
    ss.ready_delay_ms = opt.ready_delay_ms;
    ss.refit = {&m.ctx.graph, m.ckpt.get(), &plan.config, opt.refit_delay_ms, job.model.read_threads};
    serve(*m.exec, comm, front, ss);
    return 0;
}

// The CUDA executor's decode statistics (a pipeline stage's: its own), on rank 0.
void log_decode_graphs(const RankModel& m) {
#ifdef TPX_HAVE_CUDA
    if (const CudaExecutor* cuda_exec = m.cuda)
        log_info("decode: ", cuda_exec->graph_replays(), " CUDA graph replays of ", cuda_exec->graphs_captured(), " captured graphs (",
                 cuda_exec->programmatic_edges(), " programmatic edges in the last; ", cuda_exec->fused_all_reduces(),
                 " all-reduces of a batch-1 step summed in the GEMVs)");
#else
    (void)m;
#endif
}

// How long rank 0 may still wait for a FIFO output's reader: the job's wait (BackendSection::
// fifo_wait_s) counted from when the other ranks began to wait for it; 0 (as long as it takes)
// when the job has no timeout.
double fifo_wait_s(const Job& job, std::chrono::steady_clock::time_point others_wait) {
    if (job.backend.fifo_wait_s() <= 0) return 0;
    const double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - others_wait).count();
    return std::max(job.backend.fifo_wait_s() - spent, 0.001);
}

// Rank 0 writes the results, the logits (--dump-logits) and the ranks' table, and prints the report.
void report_run(const Options& opt, const Job& job, const ShardPlan& plan, MpiCommunicator& comm, const RankModel& m,
                const std::vector<SequenceResult>& results) {
    RankReport mine;
    mine.rank = comm.rank();
    mine.host = identity().host;
    ReadStats st = m.ckpt->stats();
    mine.read_bytes = (double)st.data_bytes;
    mine.header_bytes = (double)st.header_bytes;
    mine.planned_read_bytes = (double)plan.ranks.at(comm.rank()).read_bytes;
    mine.load_seconds = m.load_seconds;
    mine.peak_rss_bytes = peak_rss_bytes();
    mine.weight_bytes = (double)m.weight_bytes;
    mine.kv_cache_bytes = (double)m.exec->kv_cache_bytes();
    std::vector<RankReport> reports = gather_reports(mine, comm);
    if (comm.rank() != 0) return;
    // From here the other ranks wait for this one, up to the collective timeout.
    const auto others_wait = std::chrono::steady_clock::now();
    // Every output written before any is moved into place: a failure leaves them all as they were.
    // (The handlers that remove the staged files on a signal, again: MPI or CUDA may have put theirs.)
    remove_temporaries_on_signals();
    OutputSet outputs;
    outputs.add(job.run.output, [&](std::ostream& out) { write_results_jsonl(out, results); });
    if (!opt.dump_logits.empty())
        outputs.add_file(opt.dump_logits, [&](const std::string& tmp) { write_logits_h5(tmp, opt.dump_logits, results, m.exec->vocab()); });
    if (std::string ranks = ranks_table_path(job); !ranks.empty()) outputs.add(ranks, [&](std::ostream& out) { out << reports_json(reports); });
    outputs.commit(fifo_wait_s(job, others_wait));
    FILE* to = report_stream(job);
    std::fprintf(to, "\n%s", format_reports(reports).c_str());
    std::fprintf(to, "output: %s\n", job.run.output.c_str());
    std::fflush(to);
}

int run_prompts(const Options& opt, const Job& job, const ShardPlan& plan, MpiCommunicator& comm, RankModel& m, const TextTools& text,
                const std::vector<Prompt>& prompts, Progress& progress) {
    GenerationSettings gs;
    gs.max_batch = plan.max_batch;
    gs.model_path = job.model.path;
    gs.max_new_tokens = job.run.max_new_tokens;
    gs.eos = eos_ids(job, plan, *m.ckpt);
    gs.sampling = {job.run.sampling.temperature, job.run.sampling.top_k, job.run.sampling.top_p};
    gs.penalties = {job.run.sampling.presence_penalty, job.run.sampling.frequency_penalty, job.run.sampling.repetition_penalty};
    gs.seed = job.run.sampling.seed;
    gs.keep_logits = !opt.dump_logits.empty();
    gs.step_delay_ms = opt.step_delay_ms;
    gs.progress = comm.rank() == 0 ? &progress : nullptr;
    gs.tokenizer = text.tokenizer ? &*text.tokenizer : nullptr;
    gs.stop = StopStrings(job.run.stop);
    FILE* to = report_stream(job);
    gs.on_finished = [to](const SequenceResult& r) { print_result(to, r); };
    maybe_inject_fault("decode", comm.rank());
    std::vector<SequenceResult> results = generate(*m.exec, comm, prompts, gs);
    progress.finish();
    if (comm.rank() == 0) log_decode_graphs(m);
    report_run(opt, job, plan, comm, m, results);
    comm.barrier();
    return 0;
}

// Reads like the job: plan, prompts, outputs checked, load, then the benchmark, the server or
// the prompts.
int run(const Options& opt) {
    Job job = load_job(opt.job);
    MpiCommunicator comm(job.backend.collective_timeout_s);
    const int rank = comm.rank();
    if (opt.launched_by == "srun") check_srun_environment(rank, comm.world());
    else if (!opt.launched_by.empty()) throw JobError("--launched-by takes only \"srun\"");
    refuse_retired_variables();
    if (comm.world() != job.world())
        throw Error("mpirun started " + std::to_string(comm.world()) + " ranks but the job's " +
                        (job.parallel.pp > 1 ? "parallel.tp x parallel.pp is " : "parallel.tp is ") + std::to_string(job.world()),
                    kExitBadInput);
    ShardPlan plan = plan_on_rank0(job, comm);
    if (plan.pp > 1 && (opt.serve || !opt.bench.empty()))
        throw Error(job.file + ": parallel.pp = " + std::to_string(plan.pp) + ": " + (opt.serve ? "tpx serve" : "tpx bench") +
                        " runs pp = 1 jobs only in this version (tpx run takes pipeline stages)",
                    kExitBadInput);
    TextTools text;  // rank 0's tokenizer and chat template, when the job has them
    std::vector<Prompt> prompts = read_and_share_prompts(opt, job, plan, comm, text);
    // Outputs are proven writable before any weight is read (a Slurm node may not see the
    // folders the launcher saw).
    if (rank == 0 && opt.bench.empty() && !opt.serve) {
        std::vector<NamedPath> extra;
        if (!opt.dump_logits.empty()) extra.push_back({"--dump-logits", opt.dump_logits});
        check_job_outputs(job, extra);
    }
    Progress progress(rank == 0 ? parse_progress_mode(opt.progress) : ProgressMode::kQuiet);
    std::unique_ptr<ServeFront> serve_front;  // serving: rank 0 listens (answering 503) while every rank loads
    if (opt.serve) {
        install_serve_signals();
        if (rank == 0) serve_front = open_serve_front(job, plan.config.vocab_size, plan.max_seq_len, text);
    }
    RankModel model;
    // Serving, a stop asked while the ranks load ends the load on every rank (rank 0 says so).
    std::unique_ptr<LoadStop> stop;
    if (opt.serve) stop = std::make_unique<LoadStop>(serve_stop_asked, job.backend.collective_timeout_s, opt.read_delay_ms);
    load_rank_model(model, job, plan, comm, prompts, progress, {opt.serve && job.serve.allow_refit, stop.get()});
    if (!model.stopped) stop.reset();  // every rank is past its load: the word's communicator freed
    if (model.stopped) {
        // Every rank left its reads, or one that did not (stopped, stuck) is named after the
        // collective timeout, rather than holding the others in MPI_Finalize.
        comm.barrier();
        if (rank == 0) log_info("serve: stopped while loading (", strsignal(serve_stop_asked()), "): every rank left its reads; exiting");
        return 0;
    }
    if (rank == 0 && model.weights_seconds > 0)
        log_info("loaded ", model.weight_bytes / 1e9, " GB per rank in ", model.load_seconds, " s; the weights' read and upload ",
                 model.weights_seconds, " s (", model.ckpt->stats().data_bytes / 1e9 / model.weights_seconds, " GB/s)");
    if (!opt.bench.empty()) return run_benchmark(opt, job, plan, comm, model);
    if (opt.serve) return run_serve(opt, job, plan, comm, model, text, serve_front.get());
    return run_prompts(opt, job, plan, comm, model, text, prompts, progress);
}

}  // namespace
}  // namespace tpx

int main(int argc, char** argv) {
    // Serving, the drain signals are ours from the first instruction on (`tpx serve` may send one
    // before this rank has read its options: the default action would end it).
    bool serving = false;
    for (int i = 1; i < argc; ++i) serving = serving || std::strcmp(argv[i], "--serve") == 0;
    if (serving) tpx::install_serve_signals();
    // Otherwise a signal ends the rank (mpirun sends SIGTERM when the job is stopped), and rank 0's
    // outputs being written are not left beside their places.
    else tpx::remove_temporaries_on_signals();
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
    // others there, before any collective with a timeout. This rank ends itself after the job's
    // backend.collective_timeout_s, and mpirun then ends the job.
    const double init_timeout_s = tpx::init_timeout_s(argc, argv);
    // Until MPI can say, the rank is the launcher's (mpirun's or srun's) for the message.
    const char* launcher_rank = std::getenv("OMPI_COMM_WORLD_RANK");
    if (!launcher_rank) launcher_rank = std::getenv("SLURM_PROCID");
    tpx::set_identity(launcher_rank ? std::atoi(launcher_rank) : -1, 0);
    std::mutex init_mutex;
    std::condition_variable init_cv;
    bool init_done = false;
    std::thread init_watchdog([&] {
        std::unique_lock<std::mutex> lock(init_mutex);
        const double timeout_s = init_timeout_s;
        if (timeout_s <= 0 || init_cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return init_done; })) return;
        std::fprintf(stderr, "%s: MPI_Init waited more than %g s (backend.collective_timeout_s): a rank did not start, or stopped while starting\n",
                     tpx::where().c_str(), timeout_s);
        std::fflush(stderr);
        _exit(tpx::kExitRuntime);
    });
    // A second thread of a rank may call MPI while the first does not (a serve's load: LoadStop,
    // which asks MPI_Query_thread what was provided). Failing, MPI_Init_thread ends the process
    // (MPI_ERRORS_ARE_FATAL until the handler is set below).
    int provided = MPI_THREAD_SINGLE;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
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
