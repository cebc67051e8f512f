// Reading an Open MPI hostfile as Open MPI 4.1's mpirun does (orte/util/hostfile's rules, each
// case checked with `mpirun --display-allocation` here), and checking a job's nodes and ranks
// against it.
#include "jobs/hostfile.h"

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>

#include "common/error.h"
#include "common/path.h"
#include "jobs/job.h"

namespace tpx {
namespace {

// A slot count as mpirun reads it: digits only (no sign), at most 9 of them; nullopt otherwise.
std::optional<long> parse_slot_count(const std::string& text) {
    if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    return std::stol(text);
}

// A host as the lines so far leave it.
struct Host {
    HostfileHost out;
    long max_slots = 0;  // 0: none
    bool given = false;  // slots known: given, or counted by a repeated line
};

// One line's words after the host name: "key=value", "key = value" as mpirun's lexer takes them.
std::vector<std::string> settings_of(std::istringstream& words) {
    std::vector<std::string> out;
    for (std::string w; words >> w;) {
        if (!out.empty() && (w == "=" || w.front() == '=' || out.back().back() == '=')) out.back() += w;
        else out.push_back(w);
    }
    return out;
}

// Applies a line's settings to `h`. A repeated host has one slot more and its count known, so a
// slots= there is a second definition.
void apply_line(Host& h, bool repeated, const std::vector<std::string>& settings, const std::string& path, int number) {
    auto fail = [&](const std::string& why) { throw JobError(at(path, number, 0, why)); };
    if (repeated) {
        ++h.out.slots;
        h.given = true;
    }
    bool got_count = false, got_max = false;
    for (const std::string& s : settings) {
        const size_t eq = s.find('=');
        const std::string key = s.substr(0, eq), value = eq == std::string::npos ? "" : s.substr(eq + 1);
        const bool slots = key == "slots", max = key == "max_slots" || key == "max-slots";
        if (!slots && !max) continue;  // other keys (user, port, ...) are mpirun's to judge
        const std::optional<long> n = parse_slot_count(value);
        if (!n) fail(key + " = \"" + value + "\" is not a number of slots");
        if (slots) {
            if (h.given)
                fail("host " + h.out.name + " has its slots given twice (list a host once with slots=N, or once a slot; line " +
                     std::to_string(h.out.line) + ")");
            h.out.slots += *n;
            h.given = got_count = true;
            if (h.max_slots != 0 && h.max_slots < h.out.slots) h.max_slots = h.out.slots;
        } else {
            if (*n < h.out.slots)
                fail("host " + h.out.name + ": max_slots = " + std::to_string(*n) + " is less than its slots = " + std::to_string(h.out.slots));
            h.max_slots = *n;
            got_max = true;
        }
    }
    if (repeated || got_count) return;
    if (got_max && !h.given) {
        h.out.slots = h.max_slots;
        h.given = true;
    } else {
        ++h.out.slots;  // not given: mpirun counts the host's cores instead
    }
}

}  // namespace

std::vector<HostfileHost> read_hostfile(const std::string& path) {
    if (!is_regular(path)) throw JobError(path + ": not a regular file");
    std::ifstream in(path);
    if (!in) throw JobError(path + ": cannot be read");
    std::vector<Host> hosts;
    int number = 0;
    for (std::string text; std::getline(in, text);) {
        ++number;
        std::istringstream words(text.substr(0, text.find('#')));
        std::string name;
        if (!(words >> name)) continue;
        // A host name, an address ([v6] too) or user@host: anything else is not a hostfile line
        // (a JSON line, a path), which mpirun would take as a host to reach.
        if (name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_:@[]%") != std::string::npos)
            throw JobError(at(path, number, 0, "\"" + name + "\" is not a host name"));
        auto it = std::find_if(hosts.begin(), hosts.end(), [&](const Host& h) { return h.out.name == name; });
        const bool repeated = it != hosts.end();
        if (!repeated) {
            hosts.push_back({{name, number, 0}, 0, false});
            it = hosts.end() - 1;
        }
        apply_line(*it, repeated, settings_of(words), path, number);
    }
    std::vector<HostfileHost> out;
    for (const Host& h : hosts) out.push_back({h.out.name, h.out.line, h.given ? h.out.slots : -1});
    return out;
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
        if (hosts[n].slots >= 0 && hosts[n].slots < per)
            throw JobError(key_at + "launch.hostfile " + at(path, hosts[n].line, 0, "host " + hosts[n].name + " has " +
                                                                 std::to_string(hosts[n].slots) + " slot" + (hosts[n].slots == 1 ? "" : "s") +
                                                                 ", fewer than the " + std::to_string(per) +
                                                                 " ranks a node runs (parallel.ranks_per_node)"));
}

bool tpx_sets_mpirun_option(const std::string& arg) {
    for (const char* own : {"-np", "-n", "--np", "--n", "-c", "-N", "--npernode", "-npernode", "--ppr", "-ppr", "-H", "--host", "-host",
                            "--hostfile", "-hostfile", "--machinefile", "-machinefile", "--default-hostfile", "-default-hostfile", "--app",
                            "-app"})
        if (arg == own || arg.rfind(std::string(own) + "=", 0) == 0) return true;
    return false;
}

}  // namespace tpx
