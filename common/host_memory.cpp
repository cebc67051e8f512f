// /proc/meminfo and the cgroup v2 (or v1) limit of this process.
#include "common/host_memory.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

namespace tpx {
namespace {

// A cgroup file's number, or -1 for "max", a missing file or anything else.
int64_t read_number(const std::string& path) {
    std::ifstream in(path);
    std::string s;
    if (!(in >> s) || s == "max") return -1;
    try {
        return (int64_t)std::stoull(s);
    } catch (...) {
        return -1;
    }
}

// Room left under this process's cgroup limit, or -1 when there is none.
int64_t cgroup_room() {
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("0::", 0) == 0) {  // cgroup v2
            std::string dir = "/sys/fs/cgroup" + line.substr(3);
            int64_t max = read_number(dir + "/memory.max"), cur = read_number(dir + "/memory.current");
            if (max > 0 && cur >= 0) return std::max<int64_t>(0, max - cur);
        }
    }
    int64_t max = read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes");  // cgroup v1
    int64_t cur = read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes");
    if (max > 0 && max < (int64_t(1) << 60) && cur >= 0) return std::max<int64_t>(0, max - cur);
    return -1;
}

}  // namespace

int64_t available_host_memory() {
    std::ifstream in("/proc/meminfo");
    std::string key;
    int64_t kb = -1;
    for (std::string line; std::getline(in, line);) {
        std::istringstream ls(line);
        if (ls >> key && key == "MemAvailable:") {
            ls >> kb;
            break;
        }
    }
    if (kb < 0) return -1;
    int64_t avail = kb * 1024, room = cgroup_room();
    return room >= 0 ? std::min(avail, room) : avail;
}

}  // namespace tpx
