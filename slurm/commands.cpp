// Running Slurm's commands and reading their answers.
#include "slurm/commands.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "common/error.h"

namespace tpx {

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
