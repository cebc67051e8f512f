// Building the mpirun command line.
#include "launcher/mpirun.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "common/error.h"
#include "common/file.h"
#include "common/path.h"
#include "jobs/emit.h"
#include "jobs/hostfile.h"
#include "jobs/outputs.h"
#include "jobs/parse.h"

namespace fs = std::filesystem;

namespace tpx {

LaunchHost this_host() {
    LaunchHost h;
    h.cores = (int)std::max(1u, std::thread::hardware_concurrency());
    h.root = geteuid() == 0;
    for (char** e = environ; *e; ++e) {
        std::string entry = *e;
        std::string name = entry.substr(0, entry.find('='));
        for (const char* prefix : {"NCCL_", "CUDA_", "TPX_"})
            if (name.rfind(prefix, 0) == 0) h.env.push_back(name);
    }
    std::sort(h.env.begin(), h.env.end());
    return h;
}

std::vector<RankPlace> rank_map(const Job& job) {
    std::vector<std::string> hosts;
    for (const std::string& h : job.launch.hosts) hosts.push_back(h.substr(0, h.find(':')));
    if (hosts.empty() && !job.launch.hostfile.empty())
        for (const HostfileHost& h : read_hostfile(job.launch.hostfile)) hosts.push_back(h.name);
    if (hosts.empty()) hosts.push_back("localhost");
    std::vector<RankPlace> map;
    int per = job.parallel.ranks_per_node;
    const int tp = job.parallel.tp;
    for (int r = 0; r < job.world(); ++r)
        map.push_back({r, hosts[std::min<size_t>((size_t)(r / per), hosts.size() - 1)], r % per, r / tp, r % tp, job.parallel.pp > 1});
    return map;
}

std::string format_rank_map(const std::vector<RankPlace>& map) {
    std::string s;
    for (size_t i = 0; i < map.size();) {
        size_t j = i;
        while (j + 1 < map.size() && map[j + 1].host == map[i].host) ++j;
        auto span = [](size_t a, size_t b) { return a == b ? " " + std::to_string(a) : "s " + std::to_string(a) + "-" + std::to_string(b); };
        s += (s.empty() ? "" : " | ") + map[i].host + ": rank";
        if (!map[i].pipeline) s += span(i, j);
        for (size_t a = i; map[i].pipeline && a <= j;) {  // runs of one stage on this host
            size_t b = a;
            while (b + 1 <= j && map[b + 1].stage == map[a].stage) ++b;
            const std::string tp = map[a].tp_rank == map[b].tp_rank ? " " + std::to_string(map[a].tp_rank)
                                                                    : "s " + std::to_string(map[a].tp_rank) + "-" + std::to_string(map[b].tp_rank);
            s += (a == i ? "" : ", rank") + span(a, b) + " (stage " + std::to_string(map[a].stage) + ", tp rank" + tp + ")";
            a = b + 1;
        }
        i = j + 1;
    }
    return s;
}

bool in_slurm_allocation() {
    const char* id = std::getenv("SLURM_JOB_ID");
    return id != nullptr && *id != '\0';
}

void check_launch_hosts(const Job& job, bool in_allocation) {
    check_interface_here(job, in_allocation);
    if (job.parallel.nodes == 1 || in_allocation || !job.launch.hosts.empty() || !job.launch.hostfile.empty()) return;
    throw JobError(job.file + ": parallel.nodes = " + std::to_string(job.parallel.nodes) +
                   ", but launch.hosts and launch.hostfile are empty and this is no Slurm allocation: mpirun would start all " +
                   std::to_string(job.world()) + " ranks on this host; list the nodes in launch.hosts (or a launch.hostfile), run "
                   "inside an allocation (salloc), or submit the job (tpx submit)");
}

std::vector<std::string> mpirun_command(const Job& job, const std::string& worker, const std::vector<std::string>& worker_args,
                                        const LaunchHost& host) {
    std::vector<std::string> cmd = {job.launch.mpirun, "-np", std::to_string(job.world())};
    bool several_hosts = !job.launch.hosts.empty() || !job.launch.hostfile.empty();
    if (!several_hosts && job.world() > host.cores) cmd.push_back("--oversubscribe");
    if (host.root) cmd.push_back("--allow-run-as-root");
    if (!job.launch.hosts.empty()) {
        std::string list;
        for (const std::string& h : job.launch.hosts) list += (list.empty() ? "" : ",") + h;
        cmd.insert(cmd.end(), {"--host", list});
    }
    if (!job.launch.hostfile.empty()) cmd.insert(cmd.end(), {"--hostfile", job.launch.hostfile});
    if (several_hosts) cmd.insert(cmd.end(), {"--map-by", "ppr:" + std::to_string(job.parallel.ranks_per_node) + ":node"});
    const std::vector<std::string> binding = mpirun_binding(job);
    cmd.insert(cmd.end(), binding.begin(), binding.end());
    if (!job.launch.rsh_agent.empty()) cmd.insert(cmd.end(), {"--mca", "plm_rsh_agent", job.launch.rsh_agent});
    const std::string& net = job.launch.interface;
    if (!net.empty()) {
        cmd.insert(cmd.end(), {"--mca", "btl_tcp_if_include", net, "--mca", "oob_tcp_if_include", net});
        // NCCL takes interface names, not subnets.
        if (net.find('/') == std::string::npos) cmd.insert(cmd.end(), {"-x", "NCCL_SOCKET_IFNAME=" + net});
    }
    std::vector<std::string> env = host.env;
    env.insert(env.end(), job.launch.env.begin(), job.launch.env.end());
    for (const std::string& name : env) cmd.insert(cmd.end(), {"-x", name});
    cmd.insert(cmd.end(), job.launch.extra_args.begin(), job.launch.extra_args.end());
    cmd.push_back(worker);
    cmd.insert(cmd.end(), worker_args.begin(), worker_args.end());
    return cmd;
}

void check_interface_here(const Job& job, bool in_allocation) {
    const std::string& net = job.launch.interface;
    if (net.empty() || in_allocation || !job.launch.hosts.empty() || !job.launch.hostfile.empty()) return;
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) return;  // nothing to judge by
    std::vector<std::string> names;
    bool found = false;
    const size_t slash = net.find('/');
    in_addr subnet{};
    int bits = -1;
    if (slash != std::string::npos) {
        const std::string prefix = net.substr(slash + 1);
        if (inet_pton(AF_INET, net.substr(0, slash).c_str(), &subnet) != 1 || prefix.empty() || prefix.size() > 2 ||
            prefix.find_first_not_of("0123456789") != std::string::npos || std::stoi(prefix) > 32) {
            freeifaddrs(list);
            throw JobError(job.file + ": launch.interface = \"" + net + "\" is not an interface name or an IPv4 subnet (a.b.c.d/n)");
        }
        bits = std::stoi(prefix);
    }
    const uint32_t mask = bits <= 0 ? 0u : ~0u << (32 - bits);
    for (ifaddrs* a = list; a; a = a->ifa_next) {
        if (!a->ifa_name) continue;
        if (std::find(names.begin(), names.end(), a->ifa_name) == names.end()) names.push_back(a->ifa_name);
        if (bits < 0) found = found || net == a->ifa_name;
        else if (a->ifa_addr && a->ifa_addr->sa_family == AF_INET) {
            const uint32_t ip = ntohl(reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr);
            found = found || (ip & mask) == (ntohl(subnet.s_addr) & mask);
        }
    }
    freeifaddrs(list);
    if (found) return;
    std::string have;
    for (const std::string& n : names) have += (have.empty() ? "" : ", ") + n;
    throw JobError(job.file + ": launch.interface = \"" + net + "\": " +
                   (bits < 0 ? "this host has no such interface" : "no IPv4 address of this host is in that subnet") +
                   ", and every rank runs here (its interfaces: " + have + ")");
}

std::string worker_binary() {
    const fs::path folder = program_folder();
    return folder.empty() ? "tpx-worker" : (folder / "tpx-worker").string();
}

std::string shell_quote(const std::string& w) {
    if (!w.empty() && w.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_./=:,+@%") == std::string::npos)
        return w;
    std::string out = "'";
    for (char c : w) {
        if (c == '\'') out += "'\\''";
        else out += c;
    }
    return out + "'";
}

std::string shell_join(const std::vector<std::string>& words) {
    std::string s;
    for (const std::string& w : words) s += (s.empty() ? "" : " ") + shell_quote(w);
    return s;
}

RanksJobFile::RanksJobFile(const Job& job, const std::string& job_path) {
    path_ = absolute_path(job_path);
    if (!job_file_is_stream(job_path)) return;
    // Under a new name (write_new_private_file): a link planted at a name known beforehand would
    // have the copy written over the file it leads to, a FIFO hand the job, api_key included, to
    // its reader. 0600: the ranks run as this user. (Not named as tpx submit's copies,
    // NAME-ID.tpx.toml, which may share the folder.)
    namespace fs = std::filesystem;
    const char* where = " (for several nodes it goes where every host reads it: run.output's folder, or the job's when run.output is a device)";
    const std::string what = "the ranks' copy of the job read from a pipe: ", tail = job.parallel.nodes > 1 ? where : "";
    try {
        std::error_code ec;
        const fs::path folder = job.parallel.nodes > 1 ? fs::path(job_files_folder(job)) : fs::temp_directory_path(ec);
        if (ec) throw Error("no temporary folder (TMPDIR): " + ec.message());
        path_ = write_new_private_file(folder.string(), "tpx-job-" + file_safe(job.name) + "-" + std::to_string(::getpid()), ".toml",
                                       emit_job_toml(job, Secrets::kWritten));
    } catch (const Error& e) {
        throw Error(what + e.what() + tail, e.exit_code());
    }
    copy_ = true;
}

RanksJobFile::~RanksJobFile() {
    std::error_code ec;
    if (copy_) std::filesystem::remove(path_, ec);
}

}  // namespace tpx
