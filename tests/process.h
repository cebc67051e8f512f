// Running a command from a test and capturing what it printed and how it ended.
// Multi-rank tests use it to launch real mpirun jobs, so it also reports the wall time.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// Where the tests find the fixtures, the binaries and the sources: the build's paths, unless
// the environment names others (the GPU machine runs the tests from a copy elsewhere).
namespace tpx_test {
inline const char* env_or(const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return v && *v ? v : fallback;
}
}  // namespace tpx_test
#ifdef TPX_TEST_DATA_DEFAULT
#define TPX_TEST_DATA tpx_test::env_or("TPX_TEST_DATA", TPX_TEST_DATA_DEFAULT)
#define TPX_BIN_DIR tpx_test::env_or("TPX_BIN_DIR", TPX_BIN_DIR_DEFAULT)
#define TPX_SOURCE_DIR tpx_test::env_or("TPX_SOURCE_DIR", TPX_SOURCE_DIR_DEFAULT)
#endif

namespace tpx_test {

struct ProcessResult {
    int exit_code = -1;  // the exit status; 128 + N when killed by signal N
    std::string out;
    std::string err;
    double seconds = 0;
};

inline std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline std::string temp_dir() {
    char tmpl[] = "/tmp/tpx-test-XXXXXX";
    const char* d = mkdtemp(tmpl);
    return d ? std::string(d) : std::string("/tmp");
}

// Runs `command` under /bin/sh with `stdin_text` as its input.
inline ProcessResult run_process(const std::string& command, const std::string& stdin_text = "") {
    std::string dir = temp_dir();
    std::string in = dir + "/in", out = dir + "/out", err = dir + "/err";
    std::ofstream(in) << stdin_text;
    std::string full = "( " + command + " ) <" + in + " >" + out + " 2>" + err;
    auto t0 = std::chrono::steady_clock::now();
    int status = std::system(full.c_str());
    ProcessResult r;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = read_text(out);
    r.err = read_text(err);
    std::system(("rm -rf " + dir).c_str());
    return r;
}

inline std::string tpx_bin(const char* name) { return std::string(TPX_BIN_DIR) + "/" + name; }

}  // namespace tpx_test

namespace tpx_test {

// A process started in the background (its own process group), output to files. It gets SIGTERM
// when the test process ends, however that ends (a ctest timeout, a closed pipe): a server or a
// job it started never outlives the test.
struct Background {
    pid_t pid = -1;
    std::string out_path, err_path;
    std::chrono::steady_clock::time_point started;
};

inline Background start_background(const std::string& command) {
    Background b;
    std::string dir = temp_dir();
    b.out_path = dir + "/out";
    b.err_path = dir + "/err";
    b.started = std::chrono::steady_clock::now();
    const pid_t parent = getpid();
    b.pid = fork();
    if (b.pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);  // the test ended before the line above
        std::string full = "exec " + command + " >" + b.out_path + " 2>" + b.err_path + " </dev/null";
        execl("/bin/sh", "sh", "-c", full.c_str(), (char*)nullptr);
        _exit(127);
    }
    return b;
}

// Waits up to `timeout_s`; returns the exit code (128 + signal), or -1 on timeout (after
// which the whole process group is killed).
inline int wait_background(Background& b, double timeout_s) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
        pid_t r = waitpid(b.pid, &status, WNOHANG);
        if (r == b.pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(20000);
    }
    kill(-b.pid, SIGKILL);
    waitpid(b.pid, &status, 0);
    return -1;
}

// Pids of live processes whose command line contains `needle` (zombies excluded).
inline std::vector<int> pids_matching(const std::string& needle) {
    std::vector<int> pids;
    for (const auto& e : std::filesystem::directory_iterator("/proc")) {
        std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        int pid = std::stoi(name);
        if (pid == getpid()) continue;
        std::string cmdline = read_text("/proc/" + name + "/cmdline");
        for (char& c : cmdline)
            if (c == '\0') c = ' ';
        std::string stat = read_text("/proc/" + name + "/stat");
        size_t paren = stat.rfind(')');
        bool zombie = paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
        if (!zombie && cmdline.find(needle) != std::string::npos) pids.push_back(pid);
    }
    return pids;
}

// The value of `key` in a process's environment ("" if absent or unreadable).
inline std::string env_of(int pid, const std::string& key) {
    std::string env = read_text("/proc/" + std::to_string(pid) + "/environ");
    size_t at = 0;
    while (at < env.size()) {
        size_t end = env.find('\0', at);
        if (end == std::string::npos) end = env.size();
        std::string entry = env.substr(at, end - at);
        if (entry.rfind(key + "=", 0) == 0) return entry.substr(key.size() + 1);
        at = end + 1;
    }
    return "";
}

}  // namespace tpx_test
