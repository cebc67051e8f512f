// A `tpx serve` of a job file written here, started in a process group of its own on a port of
// its own choosing, waited for until its log says `wait_for`, ended with its process group
// (test_serve, test_refit).
#pragma once

#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "process.h"

namespace tpx_test {

class ServeProcess {
public:
    // `job_text`: the whole job file; `flags`: more words for tpx serve; `env`: what `env` runs it
    // with: VAR=value words, and a command that runs it (prlimit) after them.
    ServeProcess(const std::string& job_text, const std::string& flags, const std::string& wait_for, const std::string& env = "") {
        dir_ = temp_dir();
        job_ = dir_ + "/job.toml";
        std::ofstream(job_) << job_text;
        proc_ = start_background((env.empty() ? "" : "env " + env + " ") + tpx_bin("tpx") + " serve " + job_ + " " + flags);
        static const std::regex listening("listening on http://127\\.0\\.0\\.1:([0-9]+)");
        for (int i = 0; i < 600; ++i) {
            std::string err = read_text(proc_.err_path);
            std::smatch m;
            if (std::regex_search(err, m, listening)) port_ = std::stoi(m[1]);
            if (port_ > 0 && err.find(wait_for) != std::string::npos) return;
            if (waitpid(proc_.pid, nullptr, WNOHANG) == proc_.pid) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        ADD_FAILURE() << "tpx serve did not get to '" << wait_for << "':\n" << read_text(proc_.err_path);
    }
    ~ServeProcess() {
        if (!ended_) wait_background(proc_, 0);  // kills the process group
        std::filesystem::remove_all(dir_);
    }
    ServeProcess(const ServeProcess&) = delete;
    ServeProcess& operator=(const ServeProcess&) = delete;

    std::string base() const { return "http://127.0.0.1:" + std::to_string(port_); }
    const std::string& job() const { return job_; }
    pid_t pid() const { return proc_.pid; }
    std::string err() const { return read_text(proc_.err_path); }
    int wait(double seconds) {
        ended_ = true;
        return wait_background(proc_, seconds);
    }

private:
    std::string dir_, job_;
    Background proc_;
    int port_ = 0;
    bool ended_ = false;
};

}  // namespace tpx_test
