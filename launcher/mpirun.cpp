// Building the mpirun command line.
#include "launcher/mpirun.h"

#include <unistd.h>

#include <filesystem>
#include <thread>

namespace fs = std::filesystem;

namespace tpx {

LaunchHost this_host() {
    LaunchHost h;
    h.cores = (int)std::max(1u, std::thread::hardware_concurrency());
    h.root = geteuid() == 0;
    return h;
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
    cmd.insert(cmd.end(), job.launch.extra_args.begin(), job.launch.extra_args.end());
    cmd.push_back(worker);
    cmd.insert(cmd.end(), worker_args.begin(), worker_args.end());
    return cmd;
}

std::string worker_binary() {
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (ec) return "tpx-worker";
    return (self.parent_path() / "tpx-worker").string();
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

}  // namespace tpx
