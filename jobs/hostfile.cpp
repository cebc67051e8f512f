// Reading an Open MPI hostfile and checking a job's nodes and ranks against it.
#include "jobs/hostfile.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "jobs/job.h"

namespace tpx {
namespace {

// A positive count as mpirun reads it, or 0 when `text` is not one.
long count_of(const std::string& text) {
    if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos) return 0;
    return std::stol(text);
}

struct Line {
    std::string host;
    long slots = 0, max_slots = 0;  // 0: not given
};

Line parse_line(std::string text, const std::string& path, int number) {
    text = text.substr(0, text.find('#'));
    // "slots = 4" is "slots=4" to mpirun's lexer.
    for (size_t eq; (eq = text.find(" =")) != std::string::npos || (eq = text.find("= ")) != std::string::npos;)
        text.erase(text[eq] == ' ' ? eq : eq + 1, 1);
    std::istringstream words(text);
    Line l;
    if (!(words >> l.host)) return l;
    if (l.host.find('=') != std::string::npos) throw JobError(at(path, number, 0, "\"" + l.host + "\" is not a host name"));
    for (std::string w; words >> w;) {
        const size_t eq = w.find('=');
        const std::string key = w.substr(0, eq), value = eq == std::string::npos ? "" : w.substr(eq + 1);
        long* into = key == "slots" ? &l.slots : key == "max_slots" || key == "max-slots" ? &l.max_slots : nullptr;
        if (!into) continue;  // other keys (user, port, ...) are mpirun's to judge
        *into = count_of(value);
        if (*into == 0) throw JobError(at(path, number, 0, key + " = \"" + value + "\" is not a positive number of slots"));
    }
    return l;
}

}  // namespace

std::vector<HostfileHost> read_hostfile(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw JobError(path + ": cannot be read");
    std::vector<HostfileHost> hosts;
    std::vector<long> caps;  // max_slots a host, 0 when none
    std::vector<bool> slots_given;
    int number = 0;
    for (std::string text; std::getline(in, text);) {
        const Line l = parse_line(text, path, ++number);
        if (l.host.empty()) continue;
        auto it = std::find_if(hosts.begin(), hosts.end(), [&](const HostfileHost& h) { return h.name == l.host; });
        if (it == hosts.end()) {
            hosts.push_back({l.host, number, l.slots});
            caps.push_back(l.max_slots);
            slots_given.push_back(l.slots > 0);
            continue;
        }
        const size_t i = (size_t)(it - hosts.begin());
        if (l.slots > 0 && slots_given[i])
            throw JobError(at(path, number, 0, "host " + l.host + " has its slots given twice (also on line " + std::to_string(it->line) + ")"));
        if (l.slots > 0) it->slots = l.slots, slots_given[i] = true;
        if (l.max_slots > 0) caps[i] = l.max_slots;
    }
    for (size_t i = 0; i < hosts.size(); ++i)
        if (caps[i] > 0) hosts[i].slots = hosts[i].slots > 0 ? std::min(hosts[i].slots, caps[i]) : caps[i];
    return hosts;
}

void check_hostfile(const Job& job, const std::string& key_at) {
    const std::string& path = job.launch.hostfile;
    std::vector<HostfileHost> hosts;
    try {
        hosts = read_hostfile(path);
    } catch (const JobError& e) {
        throw JobError(key_at + "launch.hostfile " + e.what());
    }
    const int nodes = job.parallel.nodes, per = job.parallel.ranks_per_node;
    if ((int)hosts.size() < nodes)
        throw JobError(key_at + "launch.hostfile " + path + " lists " + std::to_string(hosts.size()) + " host" +
                       (hosts.size() == 1 ? "" : "s") + " but parallel.nodes = " + std::to_string(nodes));
    for (int n = 0; n < nodes; ++n)
        if (hosts[n].slots > 0 && hosts[n].slots < per)
            throw JobError(key_at + "launch.hostfile " + at(path, hosts[n].line, 0, "host " + hosts[n].name + " has " +
                                                                 std::to_string(hosts[n].slots) + " slot" + (hosts[n].slots == 1 ? "" : "s") +
                                                                 ", fewer than the " + std::to_string(per) +
                                                                 " ranks a node runs (parallel.ranks_per_node)"));
}

}  // namespace tpx
