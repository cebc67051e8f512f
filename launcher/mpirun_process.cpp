// The mpirun child of `tpx run` and `tpx serve` (see mpirun_process.h). mpirun's stderr comes
// through a pipe, passed on as it comes, so that tpx sees when the job is failing
// (says_job_failed) and can end an mpirun that does not end on its own; its stdout through
// another, so that a failed write of it is tpx's to report (relay_stdout).
#include "launcher/mpirun_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "common/error.h"

namespace tpx {
namespace {

pid_t g_child = -1;
volatile sig_atomic_t g_signal = 0;  // the signal that interrupted the run, if any
volatile sig_atomic_t g_signals = 0;  // how many arrived
int g_drain_signal = 0;

void forward_signal(int sig) {
    g_signal = sig;
    ++g_signals;
    if (g_child <= 0) return;
    // The first one drains, when asked to (`tpx serve`): run_mpirun's loop delivers it
    // (deliver_drain). mpirun ends the job on SIGTERM; a hang-up of tpx's terminal means the same.
    if (g_drain_signal != 0 && g_signals == 1) return;
    kill(g_child, sig == SIGHUP || g_drain_signal != 0 ? SIGTERM : sig);
}

// Whether process `pid` has a handler for `sig` (/proc/PID/status, SigCgt).
bool catches(pid_t pid, int sig) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("SigCgt:", 0) == 0) return (std::strtoull(line.c_str() + 7, nullptr, 16) >> (sig - 1)) & 1ull;
    return false;
}

// Whether process `pid` is rank 0 of its job (OMPI_COMM_WORLD_RANK in /proc/PID/environ, as
// mpirun started it).
bool is_rank_zero(pid_t pid) {
    std::ifstream environ("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
    for (std::string var; std::getline(environ, var, '\0');)
        if (var.rfind("OMPI_COMM_WORLD_RANK=", 0) == 0) return var == "OMPI_COMM_WORLD_RANK=0";
    return false;
}

// The ranks on this host that the drain signal reached, and whether rank 0 (the one that acts on
// it) is among this host's ranks.
struct Drain {
    std::set<pid_t> signalled;
    bool rank0_here = false;
};

// A process's parent and command name (/proc/PID/stat: "pid (comm) state ppid ...", comm may
// hold spaces and parentheses, so read from the last ')').
struct Process {
    pid_t pid = 0, ppid = 0;
    std::string comm;
};
std::vector<Process> processes() {
    std::vector<Process> all;
    DIR* proc = opendir("/proc");
    for (dirent* e; proc && (e = readdir(proc));) {
        const pid_t pid = (pid_t)std::atoi(e->d_name);
        if (pid <= 0) continue;
        std::ifstream stat(std::string("/proc/") + e->d_name + "/stat");
        std::string line;
        if (!std::getline(stat, line)) continue;
        const size_t open = line.find('('), close = line.rfind(')');
        if (open == std::string::npos || close == std::string::npos || close < open) continue;
        std::istringstream rest(line.substr(close + 1));
        std::string state;
        Process p;
        p.pid = pid, p.comm = line.substr(open + 1, close - open - 1);
        if (rest >> state >> p.ppid) all.push_back(p);
    }
    if (proc) closedir(proc);
    return all;
}

// Whether `pid` descends from `ancestor` within a few generations (tpx, a `[launch] mpirun`
// wrapper or two, mpirun, the rank).
bool descends_from(pid_t pid, pid_t ancestor, const std::map<pid_t, pid_t>& parent) {
    for (int up = 0; up < 6; ++up) {
        const auto at = parent.find(pid);
        if (at == parent.end() || at->second <= 1) return false;
        if ((pid = at->second) == ancestor) return true;
    }
    return false;
}

// The drain signal straight to the ranks on this host: tpx-worker processes that descend from
// tpx (mpirun's children; a wrapper's mpirun's, or those of an mpirun whose wrapper ended, which
// tpx inherits: end_leftovers); rank 0 drains and tells the others. mpirun's own forwarding is
// not relied on: on the GPU machine (Open MPI 4.1.6, the same binaries) mpirun caught SIGUSR1 and
// passed nothing on (docs/PERF.md, 2026-12-03 fourth session). A rank gets it once it has its
// handler (a rank just started would die of it), and once: `drain.signalled` holds those sent it;
// `drain.rank0_here` records whether rank 0 was among them (its environment's
// OMPI_COMM_WORLD_RANK).
void deliver_drain(int sig, Drain& drain) {
    const std::vector<Process> all = processes();
    std::map<pid_t, pid_t> parent;
    for (const Process& p : all) parent[p.pid] = p.ppid;
    for (const Process& p : all) {
        if (p.comm != "tpx-worker" || !descends_from(p.pid, getpid(), parent)) continue;
        // A rank's environment is read until it is sent the signal (each pass of the drain's loop
        // would read them all again otherwise).
        if (!drain.rank0_here && !drain.signalled.count(p.pid) && is_rank_zero(p.pid)) drain.rank0_here = true;
        if (!drain.signalled.count(p.pid) && catches(p.pid, sig) && kill(p.pid, sig) == 0) drain.signalled.insert(p.pid);
    }
}

// SIGTERM to each of `left`, SIGKILL to those still running 3 s later, each reaped; `watched`'s
// wait status (one of them, or 0: none) into *status.
void end_processes(std::set<pid_t> left, pid_t watched = 0, int* status = nullptr) {
    auto reap = [&](pid_t pid, int options) {
        int st = 0;
        const pid_t got = waitpid(pid, &st, options);
        if (got == pid && pid == watched && status) *status = st;
        return got;
    };
    for (pid_t pid : left) kill(pid, SIGTERM);
    for (int i = 0; i < 30 && !left.empty(); ++i) {
        for (auto it = left.begin(); it != left.end();) {
            const pid_t got = reap(*it, WNOHANG);
            it = got == 0 || (got < 0 && errno == EINTR) ? std::next(it) : left.erase(it);
        }
        if (!left.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (pid_t pid : left) {
        kill(pid, SIGKILL);
        while (reap(pid, 0) < 0 && errno == EINTR) {
        }
    }
}

// What mpirun's process left behind once it ended: a wrapper (`[launch] mpirun`) that ran mpirun
// as its child and ended first (a signal reached it alone) leaves mpirun, and an mpirun that was
// killed leaves its ranks. tpx, a child subreaper while mpirun runs, inherits them and ends them
// (SIGTERM first: mpirun ends its ranks).
void end_leftovers() {
    std::set<pid_t> left;
    for (const Process& p : processes())
        if (p.ppid == getpid()) left.insert(p.pid);
    end_processes(left);
}

// Open MPI's own noise after a rank's MPI_Abort (the rank's message came before it), which
// reads like a second, unrelated failure.
bool is_mpi_noise(const std::string& line) { return line.find("ORTE_ERROR_LOG") != std::string::npos; }

// A line of mpirun's stderr that says the job is failing: Open MPI's runtime reporting a lost
// or failed daemon or process, or an MPI_Abort (a rank's error ends in one), or a rank's non-zero
// exit (its "Per user-direction" line comes at once; "mpirun noticed" about 2 s later).
bool says_job_failed(const std::string& line) {
    for (const char* mark : {"ORTE was unable", "ORTE has lost", "ORTE daemon has unexpectedly", "PRTE has lost", "mpirun noticed that",
                             "MPI_ABORT was invoked", "Per user-direction, the job has been aborted"})
        if (line.find(mark) != std::string::npos) return true;
    return false;
}

// mpirun's line for a rank that a signal ended ("mpirun noticed that process rank 1 with PID 0 on
// node vm exited on signal 9 (Killed).") as tpx's own "rank R (HOST): ..." line, which the
// ranks' messages share; "" for any other line.
std::string rank_signal_message(const std::string& line, const std::string& who) {
    const std::string mark = "mpirun noticed that process rank ";
    const size_t at = line.find_first_not_of(" \t");
    if (at == std::string::npos || line.compare(at, mark.size(), mark) != 0) return "";  // mpirun's own line, not a rank's quoting it
    std::istringstream in(line.substr(at + mark.size()));
    std::string rank, with, pid_word, pid, on, node_word, host, exited, on2, signal_word, sig;
    if (!(in >> rank >> with >> pid_word >> pid >> on >> node_word >> host >> exited >> on2 >> signal_word >> sig) || with != "with" ||
        node_word != "node" || signal_word != "signal")
        return "";
    std::string rest;
    std::getline(in, rest);
    while (!rest.empty() && (rest.back() == '.' || rest.back() == '\n' || rest.back() == '\r' || rest.back() == ' ')) rest.pop_back();
    while (!rest.empty() && rest.front() == ' ') rest.erase(0, 1);
    return who + ": rank " + rank + " (" + host + "): ended by signal " + sig + (rest.empty() ? "" : " " + rest) + "\n";
}

// How long mpirun may take to end once the job is failing before tpx ends it: Open MPI 4.1's
// mpirun can sit for a minute or more after a host dies (its runtime waits on the lost daemon;
// tests/test_multinode.cpp), while a failure it handles ends every rank within a second or two.
constexpr double kMpirunGraceSeconds = 10;


// mpirun's stderr as the relay thread passes it on; shared with that thread, which may outlive
// run_mpirun (see its end).
struct Relay {
    std::string who;  // how tpx's lines begin (MpirunSettings::name)
    std::atomic<bool> failing{false}, drained{false};
    std::atomic<int64_t> failing_since{0};  // steady_clock ticks of the first failure mark
};

// Passes fd's bytes on to stderr until it closes, and marks the job failing at its first line
// that says so (says_job_failed).
void relay_stderr(Relay& state_ref, int fd) {
    using Clock = std::chrono::steady_clock;
    Relay* state = &state_ref;
    // Bytes are passed on as they come (a live progress line ends in '\r', not '\n');
    // whole lines are looked at for failure marks and Open MPI's noise.
    std::string pending;
    // Open MPI's box after a rank's MPI_Abort ("MPI_ABORT was invoked on rank 0 ... NOTE: invoking
    // MPI_ABORT causes Open MPI to kill all MPI processes ..." between two rules) only repeats that
    // the rank failed, whose message came before it: a rule is held until the next line says
    // whether such a box opens, and the box is dropped (still marking the job failing).
    std::string rule;
    bool in_abort_box = false;
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
            const bool is_rule = line.size() > 20 && line.find_first_not_of('-') == line.size() - 1;
            if (in_abort_box || (!rule.empty() && line.find("MPI_ABORT was invoked") != std::string::npos)) {
                in_abort_box = !(in_abort_box && is_rule);
                rule.clear();
                if (!state->failing) {
                    state->failing_since = Clock::now().time_since_epoch().count();
                    state->failing = true;
                }
                continue;
            }
            if (!rule.empty()) {
                std::fwrite(rule.data(), 1, rule.size(), stderr);
                rule.clear();
            }
            if (is_rule) {
                rule = line;
                continue;
            }
            std::fwrite(line.data(), 1, line.size(), stderr);
            const std::string signalled = rank_signal_message(line, state->who);
            if (!signalled.empty()) std::fwrite(signalled.data(), 1, signalled.size(), stderr);
            if (!state->failing && says_job_failed(line)) {
                state->failing_since = Clock::now().time_since_epoch().count();
                state->failing = true;
            }
        }
        pending.erase(0, start);
        std::fflush(stderr);
    }
    if (!rule.empty()) std::fwrite(rule.data(), 1, rule.size(), stderr);
    if (!pending.empty() && !is_mpi_noise(pending)) std::fwrite(pending.data(), 1, pending.size(), stderr);
    std::fflush(stderr);
    close(fd);
    state->drained = true;
}

// Passes fd's bytes on to tpx's standard output until it closes. A write that fails (a full disk,
// a reader gone: SIGPIPE is held for this thread) marks stdout's error, which tpx's exit reports
// (launcher/main.cpp); what follows is read and dropped, so that mpirun is not stopped by it.
void relay_stdout(std::atomic<bool>& drained, int fd) {
    sigset_t pipe_signal;
    sigemptyset(&pipe_signal);
    sigaddset(&pipe_signal, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
    char buf[4096];
    for (ssize_t n; (n = read(fd, buf, sizeof(buf))) != 0;) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        if (!std::ferror(stdout) && std::fwrite(buf, 1, (size_t)n, stdout) == (size_t)n) std::fflush(stdout);
    }
    const timespec now{0, 0};
    while (sigtimedwait(&pipe_signal, nullptr, &now) == SIGPIPE) {
    }
    close(fd);
    drained = true;
}

// The child's side of run_mpirun's fork: mpirun with stdout and stderr into the pipes, signals
// let in again.
[[noreturn]] void exec_mpirun(char** argv, const char* name, pid_t parent, bool drain, const std::vector<int>& stops,
                              const int (&out_pipe)[2], const int (&err_pipe)[2], const sigset_t& old_mask) {
    // tpx's handlers are not the child's (one would remove tpx's temporary files): the defaults,
    // as mpirun will have, before the signals are let in.
    for (int sig : stops) signal(sig, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);  // (tpx serve ignores it: launcher/serve_command.cpp)
    if (drain) {
        // A process group of its own (set before signals are let in; the parent sets it too),
        // so that a signal to tpx's group (a terminal's Ctrl-C, `timeout`) reaches tpx alone,
        // which drains the ranks: mpirun given SIGINT itself ends the job and exits 1 after
        // the ranks drained. No terminal input for it then (a read from a background group
        // would stop it): the ranks read none.
        setpgid(0, 0);
        const int null = open("/dev/null", O_RDONLY);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            close(null);
        }
    }
    sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    // Should tpx die without a word (SIGKILL), the kernel sends mpirun SIGTERM, and mpirun
    // ends the ranks; tpx may already be gone before this line, hence the check after it.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(128 + SIGTERM);
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(err_pipe[1], STDERR_FILENO);
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) close(fd);
    execvp(argv[0], argv);
    std::fprintf(stderr, "%s: cannot start %s: %s\n", name, argv[0], std::strerror(errno));
    _exit(127);
}

// mpirun's two pipes, read ends.
struct MpirunPipes {
    int out = -1, err = -1;
};

// Forks mpirun (exec_mpirun, g_child) with its stdout and stderr into pipes, and sets forward_signal
// for `stops` (the handlers before into `previous`, which run_mpirun gives back at its end).
MpirunPipes start_mpirun(char** argv, const char* name, bool drain, const std::vector<int>& stops, std::vector<struct sigaction>& previous) {
    // mpirun's stderr comes through a pipe, passed on line by line, so that tpx sees when the
    // job is failing (says_job_failed) and can end an mpirun that does not end on its own.
    int err_pipe[2];
    if (pipe(err_pipe) != 0) throw Error(std::string("pipe failed: ") + std::strerror(errno));
    // Its stdout through tpx too: a failed write of it (run.output = "/dev/stdout" on a full
    // disk) is tpx's failure, not lost in mpirun's forwarding, which ignores it.
    int out_pipe[2];
    if (pipe(out_pipe) != 0) {
        const int err = errno;
        close(err_pipe[0]), close(err_pipe[1]);
        throw Error(std::string("pipe failed: ") + std::strerror(err));
    }
    // Signals that arrive between fork and the handlers being set are held, then forwarded.
    sigset_t block, old_mask;
    sigemptyset(&block);
    for (int sig : stops) sigaddset(&block, sig);
    sigprocmask(SIG_BLOCK, &block, &old_mask);
    const pid_t parent = getpid();
    g_child = fork();
    if (g_child < 0) {
        const int err = errno;
        for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) close(fd);
        sigprocmask(SIG_SETMASK, &old_mask, nullptr);
        throw Error(std::string("fork failed: ") + std::strerror(err));
    }
    if (g_child == 0) exec_mpirun(argv, name, parent, drain, stops, out_pipe, err_pipe, old_mask);
    close(err_pipe[1]);
    close(out_pipe[1]);
    if (drain) setpgid(g_child, g_child);  // (either side may come first)
    // tpx's own handlers (common/temporaries.h) while mpirun runs, given back at the end.
    previous.resize(stops.size());
    struct sigaction forward = {};
    forward.sa_handler = forward_signal;
    sigfillset(&forward.sa_mask);  // (one handler at a time: g_signals counts every signal)
    for (size_t i = 0; i < stops.size(); ++i) sigaction(stops[i], &forward, &previous[i]);
    sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    return {out_pipe[0], err_pipe[0]};
}

}  // namespace

std::string mpirun_status_note(int mpirun_code, int exit_code) {
    if (mpirun_code == exit_code) return "";
    std::string note = "; mpirun's " + std::to_string(mpirun_code);
    if (mpirun_code > 128 && mpirun_code < 128 + NSIG)  // mpirun, or a rank it reports, ended by a signal
        note += ": signal " + std::to_string(mpirun_code - 128) + ", " + strsignal(mpirun_code - 128);
    return note;
}

MpirunOutcome run_mpirun(std::vector<std::string> cmd, const MpirunSettings& settings) {
    const char* name = settings.name.c_str();
    g_drain_signal = settings.drain_signal;
    g_signal = 0;
    g_signals = 0;
    std::vector<char*> argv;
    for (std::string& s : cmd) argv.push_back(s.data());
    argv.push_back(nullptr);
    auto t0 = std::chrono::steady_clock::now();
    // A drained job (`tpx serve`) takes its drain signal sent to tpx itself as SIGTERM, rather
    // than dying of it and leaving mpirun to end the ranks without their drain.
    std::vector<int> stops = {SIGINT, SIGTERM, SIGHUP};
    if (settings.drain_signal != 0) stops.push_back(settings.drain_signal);
    std::vector<struct sigaction> previous;
    prctl(PR_SET_CHILD_SUBREAPER, 1);  // (end_leftovers)
    const MpirunPipes pipes = start_mpirun(argv.data(), name, settings.drain_signal != 0, stops, previous);
    using Clock = std::chrono::steady_clock;
    auto state = std::make_shared<Relay>();
    state->who = settings.name;
    std::thread relay([state, fd = pipes.err] { relay_stderr(*state, fd); });
    auto out_drained = std::make_shared<std::atomic<bool>>(false);
    std::thread out_relay([out_drained, fd = pipes.out] { relay_stdout(*out_drained, fd); });
    int status = 0;
    auto end_mpirun = [&] { end_processes({g_child}, g_child, &status); };
    std::unique_ptr<Clock::time_point> drain_start;
    Drain drain;                   // which ranks the drain signal reached
    bool mpirun_drained = false;   // mpirun sent it (rank 0 not on this host)
    bool second_seen = false, failing_before_second = false;
    for (;;) {
        if (g_signals >= 2 && !second_seen) second_seen = true, failing_before_second = state->failing;
        pid_t done = waitpid(g_child, &status, WNOHANG);
        if (done == g_child || (done < 0 && errno != EINTR)) break;
        if (state->failing &&
            std::chrono::duration<double>(Clock::now() - Clock::time_point(Clock::duration(state->failing_since.load()))).count() >
                kMpirunGraceSeconds) {
            std::fprintf(stderr, "%s: the job failed, and mpirun had not ended %g s later; ending it\n", name, kMpirunGraceSeconds);
            end_mpirun();
            break;
        }
        // (Also past a second signal, which sent mpirun SIGTERM: one right behind the first, before
        // this loop came round, would otherwise leave rank 0 taking calls until mpirun ends it.)
        if (settings.drain_signal != 0 && g_signals >= 1) {
            if (!drain_start) drain_start = std::make_unique<Clock::time_point>(Clock::now());
            // Each local rank as it comes to catch the signal; with rank 0 not seen here after
            // rank0_wait_s (on another host), mpirun, to pass it on. Not once rank 0 has been seen
            // here: its ranks may have drained and ended by then, and an mpirun that forwards no
            // signal would die of it (exit 138 where the job had drained cleanly).
            deliver_drain(settings.drain_signal, drain);
            if (!drain.rank0_here && !mpirun_drained &&
                std::chrono::duration<double>(Clock::now() - *drain_start).count() > settings.rank0_wait_s) {
                kill(g_child, settings.drain_signal);
                mpirun_drained = true;
            }
            // The ranks had drain_s to finish, and a few seconds more to stop.
            if (std::chrono::duration<double>(Clock::now() - *drain_start).count() > settings.drain_s + 5) {
                std::fprintf(stderr, "%s: the job had not ended %g s after %s; ending it\n", name, settings.drain_s + 5,
                             strsignal(g_signal));
                end_mpirun();
                break;
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    g_child = -1;
    end_leftovers();
    prctl(PR_SET_CHILD_SUBREAPER, 0);
    for (size_t i = 0; i < stops.size(); ++i) sigaction(stops[i], &previous[i], nullptr);
    // The pipe ends when mpirun's children (rsh or ssh clients to other hosts) let go of it too;
    // one stuck on a dead host may hold it for minutes, so the rest of its output is not waited for.
    for (int i = 0; i < 20 && !(state->drained && *out_drained); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (state->drained) relay.join();
    else relay.detach();
    if (*out_drained) out_relay.join();
    else out_relay.detach();
    MpirunOutcome outcome;
    outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    outcome.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    outcome.signal = g_signal;
    outcome.signals = g_signals;
    outcome.failing = second_seen ? failing_before_second : state->failing.load();
    return outcome;
}

}  // namespace tpx
