// `tpx serve`: the job's ranks under mpirun as `tpx run` starts them, with `tpx-worker --serve`:
// rank 0 answers OpenAI-style HTTP requests ([serve], docs/SERVE.md) until it is stopped.
// SIGTERM, Ctrl-C, SIGHUP or SIGUSR1 drains: the ranks are sent SIGUSR1 (mpirun_process.cpp), rank
// 0 finishes the requests in flight (up to [serve] grace_s) and every rank exits 0; a second
// signal ends the job at once.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "common/error.h"
#include "jobs/parse.h"
#include "launcher/command.h"
#include "launcher/mpirun.h"
#include "launcher/mpirun_process.h"
#include "sharding/transform.h"

namespace po = boost::program_options;

namespace tpx {

int cmd_serve(const Args& args) {
    po::options_description options("tpx serve options");
    options.add_options()("job", po::value<std::string>()->required(), "the job file (its [serve] table: host, port, ...)")(
        "dry-run", "print the mpirun command instead of running it")(
        "step-delay-ms", po::value<int>(), "pause per step (for tests)")(
        "ready-delay-ms", po::value<int>(), "answer 503 (loading) this long after the model is loaded (for tests)")(
        "refit-delay-ms", po::value<int>(), "pause each refit this long between its checks and its reads (for tests)")(
        "read-delay-ms", po::value<int>(), "pause each of the load's reads this long (for tests: a load to stop)");
    po::positional_options_description positional;
    positional.add("job", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx serve JOB [--dry-run]", options, positional, vm)) return 0;

    const std::vector<std::string> delays = delay_args(vm, {"step-delay-ms", "refit-delay-ms", "read-delay-ms", "ready-delay-ms"});
    std::string job_path = vm["job"].as<std::string>();
    Job job = load_job(job_path);
    resolve_transform_options(job);
    require_one_stage(job, "tpx serve");
    // The plan, the tokenizer and chat template, this host's memory: refused before any rank starts.
    check_before_launch(job, {}, /*local=*/true);
    check_launch_hosts(job, in_slurm_allocation());
    RanksJobFile ranks_job(job, job_path);
    std::vector<std::string> worker_args = {"--job", ranks_job.path(), "--serve", "--progress", "lines"};
    worker_args.insert(worker_args.end(), delays.begin(), delays.end());
    std::vector<std::string> cmd = mpirun_command(job, worker_binary(), worker_args);
    if (vm.count("dry-run")) {
        std::cout << shell_join(cmd) << "\n";
        ranks_job.keep();
        return 0;
    }
    std::cerr << "tpx serve: rank map: " << format_rank_map(rank_map(job)) << "\n";
    std::cerr << "tpx serve: " << shell_join(cmd) << "\n";
    MpirunSettings settings;
    settings.name = "tpx serve";
    settings.drain_signal = SIGUSR1;
    settings.drain_s = job.serve.grace_s;
    // Where every rank runs here (no launch hosts, hostfile or Slurm allocation), the drain waits
    // 10 s for rank 0 to start (a wrapper or extra_args may still place it elsewhere: not forever).
    if (job.launch.hosts.empty() && job.launch.hostfile.empty() && !in_slurm_allocation()) settings.rank0_wait_s = 10;
    // A server outlives its log's reader: where stderr is a pipe whose reader went (`| head`, a
    // log shipper restarting), what the ranks print is lost, and the server goes on serving
    // (SIGPIPE's default would end tpx serve, and with it the job). mpirun gets the default back.
    ::signal(SIGPIPE, SIG_IGN);
    MpirunOutcome outcome = run_mpirun(cmd, settings);
    if (outcome.code == 127) throw Error("could not start " + cmd[0] + " (is Open MPI installed? set [launch] mpirun)");
    // Drained after a signal: the server stopped as asked.
    if (outcome.code == 0) {
        std::fprintf(stderr, "tpx serve: job '%s' stopped%s%s after %.1f s\n", job.name.c_str(), outcome.signal ? " by " : "",
                     outcome.signal ? strsignal(outcome.signal) : "", outcome.seconds);
        return 0;
    }
    // Signalled, and mpirun ended the ranks before they drained: at a second signal (mpirun's
    // SIGTERM), or at the one signal where mpirun was signalled too (every process of the job at
    // once: Slurm's cancel, a group kill, pkill; it said "failed", exit 1). Stopped as asked,
    // unless the job was failing (before the second signal, where one came).
    if (outcome.signals > 0 && !outcome.failing) {
        const std::string sig = strsignal(outcome.signal);
        const std::string how = outcome.signals >= 2 ? "at a second signal (" + sig + ")" : "by " + sig;
        std::fprintf(stderr,
                     "tpx serve: job '%s' stopped %s after %.1f s: mpirun ended the ranks (its status %d); calls in flight may have "
                     "been cut off\n",
                     job.name.c_str(), how.c_str(), outcome.seconds, outcome.code);
        return 128 + outcome.signal;
    }
    const int exit_code = outcome.code == kExitBadInput ? kExitBadInput : kExitRuntime;
    std::fprintf(stderr, "tpx serve: job '%s' failed after %.1f s (exit status %d%s)\n", job.name.c_str(), outcome.seconds, exit_code,
                 mpirun_status_note(outcome.code, exit_code).c_str());
    return exit_code;
}

}  // namespace tpx
