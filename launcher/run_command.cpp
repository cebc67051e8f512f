// `tpx run`: validates the job, checks its outputs and memory, builds the mpirun command,
// starts it, streams its output and ends with the job's exit status. Signals to tpx (Ctrl-C,
// SIGTERM, SIGHUP) are passed on to mpirun, which ends the ranks; should tpx itself die
// (SIGKILL), mpirun gets SIGTERM from the kernel (PR_SET_PDEATHSIG), so no rank outlives it.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

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
#include "common/file.h"
#include "jobs/emit.h"
#include "jobs/parse.h"
#include "launcher/command.h"
#include "launcher/mpirun.h"
#include "sharding/transform.h"
#include "slurm/commands.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace tpx {
namespace {

pid_t g_child = -1;
volatile sig_atomic_t g_signal = 0;  // the signal that interrupted the run, if any

void forward_signal(int sig) {
    g_signal = sig;
    // mpirun ends the job on SIGTERM; a hang-up of tpx's terminal means the same.
    if (g_child > 0) kill(g_child, sig == SIGHUP ? SIGTERM : sig);
}

// After a failed job on several hosts, asks each host, through the same agent mpirun used,
// to run `true` within 5 s, and names those that do not answer: mpirun's own message does not
// always say which host went away.
void report_unreachable_hosts(const Job& job) {
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
            std::fprintf(stderr, "tpx run: host %s (rank%s) did not answer; it is down or cannot be reached\n", map[i].host.c_str(),
                         i == j ? (" " + std::to_string(i)).c_str() : ("s " + std::to_string(i) + "-" + std::to_string(j)).c_str());
        i = j + 1;
    }
}

// A line of mpirun's stderr that says the job is failing: Open MPI's runtime reporting a lost
// or failed daemon or process, or an MPI_Abort (a rank's error ends in one).
// Open MPI's own noise after a rank's MPI_Abort (the rank's message came before it), which
// reads like a second, unrelated failure.
bool is_mpi_noise(const std::string& line) { return line.find("ORTE_ERROR_LOG") != std::string::npos; }

bool says_job_failed(const std::string& line) {
    for (const char* mark : {"ORTE was unable", "ORTE has lost", "ORTE daemon has unexpectedly", "PRTE has lost", "mpirun noticed that",
                             "MPI_ABORT was invoked"})
        if (line.find(mark) != std::string::npos) return true;
    return false;
}

// How long mpirun may take to end once the job is failing before tpx ends it: Open MPI 4.1's
// mpirun can sit for a minute or more after a host dies (its runtime waits on the lost daemon;
// tests/test_multinode.cpp), while a failure it handles ends every rank within a second or two.
constexpr double kMpirunGraceSeconds = 10;

}  // namespace

int cmd_run(const Args& args) {
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

    std::string job_path = vm["job"].as<std::string>();
    Job job = load_job(job_path);
    resolve_transform_options(job);
    if (job.run.prompts.empty() && !vm.count("bench")) throw JobError(job.file + ": run.prompts is not set: there is nothing to run");
    // Outputs are resolved and proven writable before anything is started.
    std::vector<std::string> output_args;
    std::vector<NamedPath> extra_outputs;
    for (const char* option : {"dump-logits", "bench"})
        if (vm.count(option)) {
            std::string path = output_file_arg(option, vm[option].as<std::string>());
            output_args.insert(output_args.end(), {std::string("--") + option, path});
            extra_outputs.push_back({std::string("--") + option, path});
        }
    check_before_launch(job, extra_outputs, /*local=*/true);
    const char* progress = vm.count("quiet") ? "quiet" : (isatty(STDERR_FILENO) ? "live" : "lines");
    output_args.insert(output_args.end(), {"--progress", progress});
    // A job read from a pipe cannot be read again by the ranks: hand them the resolved job.
    std::string worker_job = fs::absolute(job_path).lexically_normal().string();
    if (!fs::is_regular_file(job_path)) {
        worker_job = (fs::temp_directory_path() / ("tpx-job-" + std::to_string(getpid()) + ".toml")).string();
        write_file_atomically(worker_job, emit_job_toml(job));
    }
    std::vector<std::string> worker_args = {"--job", worker_job};
    worker_args.insert(worker_args.end(), output_args.begin(), output_args.end());
    if (vm.count("step-delay-ms")) worker_args.insert(worker_args.end(), {"--step-delay-ms", std::to_string(vm["step-delay-ms"].as<int>())});
    std::vector<std::string> cmd = mpirun_command(job, worker_binary(), worker_args);

    if (vm.count("dry-run")) {
        std::cout << shell_join(cmd) << "\n";
        return 0;
    }
    std::cerr << "tpx run: rank map: " << format_rank_map(rank_map(job)) << "\n";
    std::cerr << "tpx run: " << shell_join(cmd) << "\n";
    std::vector<char*> argv;
    for (std::string& s : cmd) argv.push_back(s.data());
    argv.push_back(nullptr);
    auto t0 = std::chrono::steady_clock::now();
    // mpirun's stderr comes through a pipe, passed on line by line, so that tpx sees when the
    // job is failing (says_job_failed) and can end an mpirun that does not end on its own.
    int err_pipe[2];
    if (pipe(err_pipe) != 0) throw Error(std::string("pipe failed: ") + std::strerror(errno));
    // Signals that arrive between fork and the handlers being set are held, then forwarded.
    sigset_t block, old_mask;
    sigemptyset(&block);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&block, sig);
    sigprocmask(SIG_BLOCK, &block, &old_mask);
    const pid_t parent = getpid();
    g_child = fork();
    if (g_child < 0) throw Error(std::string("fork failed: ") + std::strerror(errno));
    if (g_child == 0) {
        sigprocmask(SIG_SETMASK, &old_mask, nullptr);
        // Should tpx die without a word (SIGKILL), the kernel sends mpirun SIGTERM, and mpirun
        // ends the ranks; tpx may already be gone before this line, hence the check after it.
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(128 + SIGTERM);
        dup2(err_pipe[1], STDERR_FILENO);
        close(err_pipe[0]);
        close(err_pipe[1]);
        execvp(argv[0], argv.data());
        std::fprintf(stderr, "tpx run: cannot start %s: %s\n", argv[0], std::strerror(errno));
        _exit(127);
    }
    close(err_pipe[1]);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) signal(sig, forward_signal);
    sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    using Clock = std::chrono::steady_clock;
    // Shared with the relay thread, which may outlive this function (below).
    struct Relay {
        std::atomic<bool> failing{false}, drained{false};
        std::atomic<int64_t> failing_since{0};
    };
    auto state = std::make_shared<Relay>();
    std::thread relay([state, fd = err_pipe[0]] {
        // Bytes are passed on as they come (a live progress line ends in '\r', not '\n');
        // whole lines are looked at for failure marks and Open MPI's noise.
        std::string pending;
        char buf[4096];
        ssize_t n;
        while ((n = read(fd, buf, sizeof(buf))) != 0) {
            if (n < 0) {
                if (errno == EINTR) continue;
                break;
            }
            pending.append(buf, (size_t)n);
            size_t start = 0;
            for (size_t end; (end = pending.find_first_of("\r\n", start)) != std::string::npos; start = end + 1) {
                std::string line = pending.substr(start, end + 1 - start);
                if (is_mpi_noise(line)) continue;
                std::fwrite(line.data(), 1, line.size(), stderr);
                if (!state->failing && says_job_failed(line)) {
                    state->failing_since = Clock::now().time_since_epoch().count();
                    state->failing = true;
                }
            }
            pending.erase(0, start);
            std::fflush(stderr);
        }
        if (!pending.empty() && !is_mpi_noise(pending)) std::fwrite(pending.data(), 1, pending.size(), stderr);
        std::fflush(stderr);
        close(fd);
        state->drained = true;
    });
    int status = 0;
    for (;;) {
        pid_t done = waitpid(g_child, &status, WNOHANG);
        if (done == g_child || (done < 0 && errno != EINTR)) break;
        if (state->failing &&
            std::chrono::duration<double>(Clock::now() - Clock::time_point(Clock::duration(state->failing_since.load()))).count() >
                kMpirunGraceSeconds) {
            std::fprintf(stderr, "tpx run: the job failed, and mpirun had not ended %g s later; ending it\n", kMpirunGraceSeconds);
            kill(g_child, SIGTERM);
            for (int i = 0; i < 30 && waitpid(g_child, &status, WNOHANG) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
            if (kill(g_child, 0) == 0) {
                kill(g_child, SIGKILL);
                while (waitpid(g_child, &status, 0) < 0 && errno == EINTR) {
                }
            }
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    g_child = -1;
    // The pipe ends when mpirun's children (rsh or ssh clients to other hosts) let go of it too;
    // one stuck on a dead host may hold it for minutes, so the rest of its output is not waited for.
    for (int i = 0; i < 20 && !state->drained; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (state->drained) relay.join();
    else relay.detach();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (worker_job != fs::absolute(job_path).lexically_normal().string()) fs::remove(worker_job);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0) report_unreachable_hosts(job);
    if (code == 127) throw Error("could not start " + cmd[0] + " (is Open MPI installed? set [launch] mpirun)");
    if (g_signal != 0) {
        std::fprintf(stderr, "tpx run: job '%s' interrupted by %s after %.1f s\n", job.name.c_str(), strsignal(g_signal), seconds);
        return 128 + g_signal;
    }
    std::fprintf(stderr, "tpx run: job '%s' %s after %.1f s (exit status %d)\n", job.name.c_str(),
                 code == 0 ? "finished" : "failed", seconds, code);
    return code == 0 ? 0 : (code == kExitBadInput ? kExitBadInput : kExitRuntime);
}

}  // namespace tpx
