// `tpx run`: validates the job, checks its outputs and memory, builds the mpirun command,
// starts it, streams its output and ends with the job's exit status. Signals to tpx (Ctrl-C,
// SIGTERM, SIGHUP) are passed on to mpirun, which ends the ranks; should tpx itself die
// (SIGKILL), mpirun gets SIGTERM from the kernel (PR_SET_PDEATHSIG), so no rank outlives it.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include "common/error.h"
#include "jobs/parse.h"
#include "launcher/command.h"
#include "launcher/mpirun.h"
#include "launcher/mpirun_process.h"
#include "sharding/transform.h"
#include "slurm/commands.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace tpx {
namespace {

// After a failed job on several hosts, asks each host, through the same agent mpirun used,
// to run `true` within 5 s, and names those that do not answer: mpirun's own message does not
// always say which host went away.
void report_unreachable_hosts(const Job& job, const char* who) {
    std::vector<RankPlace> map = rank_map(job);
    if (job.launch.hosts.empty() && job.launch.hostfile.empty()) return;
    std::vector<std::string> agent = {"ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"};
    if (!job.launch.rsh_agent.empty()) agent = {job.launch.rsh_agent};
    for (size_t i = 0; i < map.size();) {
        size_t j = i;
        while (j + 1 < map.size() && map[j + 1].host == map[i].host) ++j;
        std::vector<std::string> probe = {"timeout", "5"};
        probe.insert(probe.end(), agent.begin(), agent.end());
        probe.insert(probe.end(), {map[i].host, "true"});
        if (run_command(probe).exit_code != 0)
            std::fprintf(stderr, "%s: host %s (rank%s) did not answer; it is down or cannot be reached\n", who, map[i].host.c_str(),
                         i == j ? (" " + std::to_string(i)).c_str() : ("s " + std::to_string(i) + "-" + std::to_string(j)).c_str());
        i = j + 1;
    }
}

// At temperature 0 (greedy) [run.sampling]'s top_k, top_p and seed choose nothing in a run of
// prompts (tpx serve takes them as its calls' defaults, where a call may sample): refused.
void check_sampling_used(const Job& job) {
    const SamplingSection& s = job.run.sampling;
    if (s.temperature > 0) return;
    char top_p[32];
    std::snprintf(top_p, sizeof(top_p), "top_p = %g", s.top_p);
    std::string unused;
    if (s.top_k != 0) unused = "top_k = " + std::to_string(s.top_k);
    else if (s.top_p != 1.0) unused = top_p;
    else if (s.seed != 0) unused = "seed = " + std::to_string(s.seed);
    if (!unused.empty())
        throw JobError(job.file + ": [run.sampling] " + unused + " does nothing at temperature = 0 (greedy decoding): set "
                       "run.sampling.temperature, or leave it out");
}

// What the ranks would refuse of the job's [bench], refused before any starts: decode sequences
// longer than run.max_seq_len where a batch size runs, and sizes given of which the ranks would
// skip every one (both lists empty is a bench of the load and the device's rates alone).
void check_bench(const Job& job, const ShardPlan& plan) {
    const BenchSection& b = job.bench;
    auto any_within = [](const std::vector<int64_t>& sizes, int64_t limit) {
        return std::any_of(sizes.begin(), sizes.end(), [&](int64_t v) { return v <= limit; });
    };
    const bool decodes = any_within(b.batch_sizes, plan.max_batch);
    if (decodes && decode_positions(b) > plan.max_seq_len)
        throw JobError(job.file + ": bench.decode_prompt_length + bench.decode_warmup + bench.decode_steps = " +
                       std::to_string(decode_positions(b)) + " positions, more than run.max_seq_len = " + std::to_string(plan.max_seq_len) +
                       " (the decode sequences grow a position a step)");
    if (decodes || any_within(b.prompt_lengths, plan.max_seq_len) || (b.prompt_lengths.empty() && b.batch_sizes.empty())) return;
    auto why = [](const std::vector<int64_t>& sizes, const char* key, const char* limit_key, int64_t limit) {
        return sizes.empty() ? std::string("bench.") + key + " is empty"
                             : std::string("every bench.") + key + " is above " + limit_key + " = " + std::to_string(limit);
    };
    throw JobError(job.file + ": [bench] times no prefill and no decode: " + why(b.prompt_lengths, "prompt_lengths", "run.max_seq_len", plan.max_seq_len) +
                   " and " + why(b.batch_sizes, "batch_sizes", "run.max_batch", plan.max_batch));
}

}  // namespace

// `tpx run`, and `tpx bench` through it (`as` says which, and the name of the benchmark's JSON
// output as typed).
int run_job(const Args& args, const RunAs& as) {
    const std::string& bench_flag = as.bench_flag;
    const char* who = as.command.c_str();
    po::options_description options("tpx run options");
    options.add_options()("job", po::value<std::string>()->required(), "the job file")(
        "dry-run", "print the mpirun command instead of running it")(
        "dump-logits", po::value<std::string>(), "write every step's logits to this HDF5 file")(
        "step-delay-ms", po::value<int>(), "pause per decode step (for failure tests)")(
        "bench", po::value<std::string>(), "run the benchmark instead of the prompts; JSON to this file (tpx bench)")(
        "quiet,q", "no progress lines (loading, prefill, decode)");
    po::positional_options_description positional;
    positional.add("job", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx run JOB [--dry-run] [--dump-logits FILE.h5] [--quiet]", options, positional, vm)) return 0;

    const std::vector<std::string> delays = delay_args(vm, {"step-delay-ms"});
    std::string job_path = vm["job"].as<std::string>();
    Job job = load_job(job_path);
    resolve_transform_options(job);
    if (job.run.prompts.empty() && !vm.count("bench")) throw JobError(job.file + ": run.prompts is not set: there is nothing to run");
    if (!vm.count("bench")) check_sampling_used(job);
    if (vm.count("bench")) require_one_stage(job, "tpx bench");
    // The benchmark times its own steps: it keeps no logits and takes no pause.
    for (const char* unused : {"dump-logits", "step-delay-ms"})
        if (vm.count("bench") && vm.count(unused))
            throw JobError(std::string("--") + unused + " does nothing with " + bench_flag +
                           " (tpx bench): the benchmark keeps no logits and takes no pause");
    // Outputs are resolved and proven writable before anything is started.
    std::vector<std::string> output_args;
    std::vector<NamedPath> extra_outputs;
    for (const char* option : {"dump-logits", "bench"})
        if (vm.count(option)) {
            std::string path = output_file_arg(option, vm[option].as<std::string>());
            output_args.insert(output_args.end(), {std::string("--") + option, path});
            extra_outputs.push_back({std::string(option) == "bench" ? bench_flag : std::string("--") + option, path});
        }
    const ShardPlan plan = check_before_launch(job, extra_outputs, /*local=*/true);
    if (vm.count("bench")) check_bench(job, plan);
    check_launch_hosts(job, in_slurm_allocation());
    const char* progress = vm.count("quiet") ? "quiet" : (isatty(STDERR_FILENO) ? "live" : "lines");
    output_args.insert(output_args.end(), {"--progress", progress});
    RanksJobFile ranks_job(job, job_path);
    std::vector<std::string> worker_args = {"--job", ranks_job.path()};
    worker_args.insert(worker_args.end(), output_args.begin(), output_args.end());
    worker_args.insert(worker_args.end(), delays.begin(), delays.end());
    std::vector<std::string> cmd = mpirun_command(job, worker_binary(), worker_args);

    if (vm.count("dry-run")) {
        std::cout << shell_join(cmd) << "\n";
        ranks_job.keep();
        return 0;
    }
    std::cerr << who << ": rank map: " << format_rank_map(rank_map(job)) << "\n";
    std::cerr << who << ": " << shell_join(cmd) << "\n";
    // Rank 0 writes its result whole (a new file renamed into place) at the end: run.output, or
    // with --bench the figures. An mpirun that exits 0 without having run the ranks ([launch]
    // mpirun = "true") must not look like a run. Checked where rank 0 is this host's (no other
    // hosts named: their files may not be ours).
    const std::string written = vm.count("bench") ? extra_outputs.back().path : job.run.output;
    const std::string written_as = vm.count("bench") ? bench_flag : "run.output";
    struct stat before {};
    const bool check_written = !is_stream_target(written) && job.launch.hosts.empty() && job.launch.hostfile.empty();
    const bool existed = check_written && ::stat(written.c_str(), &before) == 0;
    MpirunSettings settings;
    settings.name = who;
    MpirunOutcome outcome = run_mpirun(cmd, settings);
    const int code = outcome.code, g_signal = outcome.signal;
    const double seconds = outcome.seconds;
    if (code != 0) report_unreachable_hosts(job, who);
    if (code == 127) throw Error("could not start " + cmd[0] + " (is Open MPI installed? set [launch] mpirun)");
    struct stat after {};
    const bool rewritten = check_written && ::stat(written.c_str(), &after) == 0 &&
                           (!existed || after.st_ino != before.st_ino || after.st_mtim.tv_sec != before.st_mtim.tv_sec ||
                            after.st_mtim.tv_nsec != before.st_mtim.tv_nsec);
    if (g_signal != 0 && rewritten) {
        // Rank 0 moves all its outputs into place at once, holding terminating signals until
        // they are (common/file.h's OutputSet): one in place is all of them, and the run done
        // before the signal stopped rank 0 (mpirun passes it on about a second late), which the
        // exit status says.
        std::fprintf(stderr, "%s: job '%s' finished after %.1f s: its outputs were in place before the %s stopped rank 0 (%s: %s)\n", who,
                     job.name.c_str(), seconds, strsignal(g_signal), written_as.c_str(), written.c_str());
        return 0;
    }
    if (g_signal != 0) {
        std::fprintf(stderr, "%s: job '%s' interrupted by %s after %.1f s\n", who, job.name.c_str(), strsignal(g_signal), seconds);
        return 128 + g_signal;
    }
    if (code == 0 && check_written && !rewritten)
        throw Error(cmd[0] + " exited 0, but no rank wrote " + written_as + " (" + written + "): did it start the ranks? ([launch] mpirun)",
                    kExitRuntime);
    const int exit_code = code == 0 ? 0 : (code == kExitBadInput ? kExitBadInput : kExitRuntime);
    std::fprintf(stderr, "%s: job '%s' %s after %.1f s (exit status %d%s)\n", who, job.name.c_str(), code == 0 ? "finished" : "failed",
                 seconds, exit_code, mpirun_status_note(code, exit_code).c_str());
    return exit_code;
}

int cmd_run(const Args& args) { return run_job(args, RunAs{}); }

}  // namespace tpx
