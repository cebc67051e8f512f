// Running Slurm's commands and reading their answers.
#include "slurm/commands.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "common/error.h"

namespace tpx {

CommandResult run_command(const std::vector<std::string>& argv) {
    char out_tmpl[] = "/tmp/tpx-cmd-out-XXXXXX", err_tmpl[] = "/tmp/tpx-cmd-err-XXXXXX";
    int out_fd = mkstemp(out_tmpl), err_fd = mkstemp(err_tmpl);
    if (out_fd < 0 || err_fd < 0) throw Error(std::string("cannot create a temp file: ") + std::strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out_fd, 1);
        dup2(err_fd, 2);
        std::vector<char*> args;
        for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        execvp(args[0], args.data());
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    auto slurp = [](const char* path) {
        std::ifstream in(path);
        std::stringstream ss;
        ss << in.rdbuf();
        std::remove(path);
        return ss.str();
    };
    close(out_fd);
    close(err_fd);
    CommandResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = slurp(out_tmpl);
    r.err = slurp(err_tmpl);
    if (r.exit_code == 127 && r.err.empty()) r.err = argv[0] + ": command not found (is Slurm installed and on PATH?)";
    return r;
}

namespace {

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

[[noreturn]] void fail(const std::string& what, const CommandResult& r) {
    throw Error(what + ": " + trim(r.err.empty() ? r.out : r.err), kExitRuntime);
}

}  // namespace

std::string submit_script(const std::string& script) {
    CommandResult r = run_command({"sbatch", "--parsable", script});
    if (r.exit_code != 0) fail("sbatch refused the job", r);
    std::string id = trim(r.out);
    return id.substr(0, id.find(';'));  // "id;cluster" on federated clusters
}

SlurmJobState query_job(const std::string& id) {
    CommandResult r = run_command({"scontrol", "show", "job", id});
    if (r.exit_code != 0) fail("job " + id, r);
    auto field = [&](const char* key) {
        std::smatch m;
        std::regex re(std::string("(?:^|\\s)") + key + "=([^\\n]*?)(?=\\s+[A-Za-z:]+=|\\n|$)");
        return std::regex_search(r.out, m, re) ? m[1].str() : std::string();
    };
    auto line = [&](const char* key) {  // fields that hold a whole line (paths may have spaces)
        std::smatch m;
        std::regex re(std::string("\\n\\s*") + key + "=([^\\n]*)");
        return std::regex_search(r.out, m, re) ? m[1].str() : std::string();
    };
    SlurmJobState s;
    s.id = id;
    s.raw_state = field("JobState");
    s.exit_code = field("ExitCode");
    s.elapsed = field("RunTime");
    s.nodes = field("NodeList");
    s.stdout_path = line("StdOut");
    s.stderr_path = line("StdErr");
    const std::string& st = s.raw_state;
    if (st == "PENDING" || st == "CONFIGURING" || st == "REQUEUED" || st == "SUSPENDED") s.state = "pending";
    else if (st == "RUNNING" || st == "COMPLETING") s.state = "running";
    else if (st == "COMPLETED") s.state = "completed";
    else if (st == "CANCELLED") s.state = "cancelled";
    else s.state = "failed";  // FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE, PREEMPTED
    return s;
}

void cancel_job(const std::string& id) {
    CommandResult r = run_command({"scancel", id});
    if (r.exit_code != 0 || !r.err.empty()) fail("scancel " + id, r);
}

}  // namespace tpx
