// One line per message on stderr, written whole so that lines of different ranks do not mix.
#include "common/log.h"

#include <unistd.h>

#include <cstdio>
#include <mutex>

namespace tpx {
namespace {

Identity make_identity() {
    Identity id;
    char buf[256] = {0};
    if (gethostname(buf, sizeof(buf) - 1) == 0) id.host = buf;
    else id.host = "unknown-host";
    return id;
}

Identity& mutable_identity() {
    static Identity id = make_identity();
    return id;
}

const LogLevel g_level = LogLevel::kInfo;
std::mutex g_mutex;

const char* level_name(LogLevel level) {
    switch (level) {
        case LogLevel::kDebug: return "debug";
        case LogLevel::kInfo: return "info";
        case LogLevel::kWarn: return "warning";
        case LogLevel::kError: return "error";
    }
    return "?";
}

}  // namespace

std::string human_bytes(double bytes) {
    const char* units[] = {"B", "KB", "MB", "GB", "TB"};
    int u = 0;
    while (bytes >= 1000 && u < 4) bytes /= 1000, ++u;
    char buf[32];
    std::snprintf(buf, sizeof(buf), u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
    return buf;
}

void set_identity(int rank, int world) {
    mutable_identity().rank = rank;
    mutable_identity().world = world;
}

const Identity& identity() { return mutable_identity(); }

std::string where() {
    const Identity& id = identity();
    if (id.rank < 0) return id.host;
    return "rank " + std::to_string(id.rank) + " (" + id.host + ")";
}

void log_line(LogLevel level, const std::string& message) {
    if (level < g_level) return;
    std::string line = "[tpx " + where() + "] " + level_name(level) + ": " + message + "\n";
    std::lock_guard<std::mutex> lock(g_mutex);
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
}

}  // namespace tpx
