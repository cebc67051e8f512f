// Error types shared by every layer, and the exit code each one maps to.
// jobs/sharding/loader throw these with the file, key, tensor and numbers involved; the entry
// points (tpx, tpx-worker) catch once at the top and turn them into a message and an exit code.
#pragma once

#include <stdexcept>
#include <string>

namespace tpx {

enum ExitCode : int {
    kExitOk = 0,
    kExitRuntime = 1,  // a failure while doing the work (I/O, a library call, a peer rank)
    kExitBadInput = 2, // a bad job file, bad arguments or a bad checkpoint: fix the input
};

// Base of every error tpx raises on purpose; what() is the whole user-facing message.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message, int exit_code = kExitRuntime)
        : std::runtime_error(message), exit_code_(exit_code) {}
    int exit_code() const { return exit_code_; }

private:
    int exit_code_;
};

// The user's job file or command line is wrong. Messages start with "FILE:LINE:COL: ".
class JobError : public Error {
public:
    explicit JobError(const std::string& message) : Error(message, kExitBadInput) {}
};

// A failed CUDA/cuBLAS/NCCL/MPI call or broken invariant; the message names rank and host.
class CheckError : public Error {
public:
    explicit CheckError(const std::string& message) : Error(message, kExitRuntime) {}
};

// "file:line:col: message", or "file: message" when the position is unknown (line <= 0).
std::string at(const std::string& file, long line, long col, const std::string& message);

}  // namespace tpx
