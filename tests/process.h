// Running a command from a test and capturing what it printed and how it ended.
// Multi-rank tests use it to launch real mpirun jobs, so it also reports the wall time.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

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
