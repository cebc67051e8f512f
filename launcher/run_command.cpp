// `tpx run`: validates the job, builds the mpirun command, starts it, streams its output and
// ends with the job's exit status. Signals to tpx (Ctrl-C) are passed on to mpirun, which
// ends the ranks.
#include <signal.h>
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

void forward_signal(int sig) {
    if (g_child > 0) kill(g_child, sig);
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
        "bench", po::value<std::string>(), "run the benchmark instead of the prompts; JSON to this file (tpx bench)");
    po::positional_options_description positional;
    positional.add("job", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx run JOB [--dry-run] [--dump-logits FILE.h5]", options, positional, vm)) return 0;

    std::string job_path = vm["job"].as<std::string>();
    Job job = load_job(job_path);
    resolve_transform_options(job);
    if (job.run.prompts.empty() && !vm.count("bench")) throw JobError(job.file + ": run.prompts is not set: there is nothing to run");
    check_plannable(job);
    std::vector<std::string> output_args;  // checked before anything is written or started
    for (const char* option : {"dump-logits", "bench"})
        if (vm.count(option)) output_args.insert(output_args.end(), {std::string("--") + option, output_file_arg(option, vm[option].as<std::string>())});
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
    if (pipe(err_pipe) != 0) throw Error(std::string("tpx run: pipe failed: ") + std::strerror(errno));
    g_child = fork();
    if (g_child < 0) throw Error(std::string("tpx run: fork failed: ") + std::strerror(errno));
    if (g_child == 0) {
        dup2(err_pipe[1], STDERR_FILENO);
        close(err_pipe[0]);
        close(err_pipe[1]);
        execvp(argv[0], argv.data());
        std::fprintf(stderr, "tpx run: cannot start %s: %s\n", argv[0], std::strerror(errno));
        _exit(127);
    }
    close(err_pipe[1]);
    signal(SIGINT, forward_signal);
    signal(SIGTERM, forward_signal);
    using Clock = std::chrono::steady_clock;
    // Shared with the relay thread, which may outlive this function (below).
    struct Relay {
        std::atomic<bool> failing{false}, drained{false};
        std::atomic<int64_t> failing_since{0};
    };
    auto state = std::make_shared<Relay>();
    std::thread relay([state, fd = err_pipe[0]] {
        FILE* in = fdopen(fd, "r");
        char* line = nullptr;
        size_t cap = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, in)) > 0) {
            std::fwrite(line, 1, (size_t)n, stderr);
            std::fflush(stderr);
            if (!state->failing && says_job_failed(std::string(line, (size_t)n))) {
                state->failing_since = Clock::now().time_since_epoch().count();
                state->failing = true;
            }
        }
        std::free(line);
        std::fclose(in);
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
    if (code == 127) throw Error("tpx run: could not start " + cmd[0] + " (is Open MPI installed? set [launch] mpirun)");
    std::fprintf(stderr, "tpx run: job '%s' %s after %.1f s (exit status %d)\n", job.name.c_str(),
                 code == 0 ? "finished" : "failed", seconds, code);
    return code == 0 ? 0 : (code == kExitBadInput ? kExitBadInput : kExitRuntime);
}

}  // namespace tpx
