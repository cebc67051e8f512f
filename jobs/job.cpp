// What follows from a job beyond its validated fields (jobs/job.h).
#include "jobs/job.h"

#include <algorithm>

namespace tpx {

std::vector<std::string> mpirun_binding(const Job& job) {
    const int per_host = job.parallel.ranks_per_node > 0 ? job.parallel.ranks_per_node : job.world() / std::max(1, job.parallel.nodes);
    for (const std::string& a : job.launch.extra_args)
        for (const char* own : {"--bind-to", "-bind-to", "--map-by", "-map-by", "--cpus-per-rank", "--cpus-per-proc", "binding_policy"})
            if (a.find(own) != std::string::npos) return {};
    if (per_host > 2) return {};
    return {"--bind-to", "none"};
}

}  // namespace tpx
