// Logging that prefixes every line with the rank and host it comes from.
// With 64 ranks a message without its rank is useless, so the process's identity is set once
// (set_identity, right after MPI starts) and every log line and check failure carries it.
#pragma once

#include <sstream>
#include <string>

namespace tpx {

struct Identity {
    int rank = -1;   // -1 before MPI is up (the launcher, tools)
    int world = 0;
    std::string host;
};

void set_identity(int rank, int world);
const Identity& identity();
// "rank 3 (node07)" inside a worker, "node07" elsewhere.
std::string where();

enum class LogLevel { kDebug, kInfo, kWarn, kError };
void log_line(LogLevel level, const std::string& message);

// "1.47 MB", "17.64 GB": decimal units, as disks and HF's sizes are quoted.
std::string human_bytes(double bytes);

template <typename... Args>
std::string cat(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    return os.str();
}

template <typename... Args> void log_info(const Args&... a) { log_line(LogLevel::kInfo, cat(a...)); }
template <typename... Args> void log_warn(const Args&... a) { log_line(LogLevel::kWarn, cat(a...)); }
template <typename... Args> void log_error(const Args&... a) { log_line(LogLevel::kError, cat(a...)); }
template <typename... Args> void log_debug(const Args&... a) { log_line(LogLevel::kDebug, cat(a...)); }

}  // namespace tpx
