// The mpirun command line for a job, as a pure function of the job (tested without running
// it): world size, --oversubscribe when the ranks exceed this host's cores (single host),
// --allow-run-as-root only as root, hosts or hostfile, the job's extra args, the worker.
#pragma once

#include <string>
#include <vector>

#include "jobs/job.h"

namespace tpx {

struct LaunchHost {
    int cores = 1;      // cores of this host
    bool root = false;  // running as root
    std::vector<std::string> env;  // NCCL_*, CUDA_*, TPX_* variables set here (passed on with -x)
};
LaunchHost this_host();

// A job of several nodes that mpirun started here would run on this host alone: refused
// (JobError, naming the keys) unless it lists its hosts (launch.hosts or hostfile) or
// `in_allocation` (a Slurm allocation, SLURM_JOB_ID set: mpirun takes its nodes). Checks
// launch.interface too (check_interface_here).
void check_launch_hosts(const Job& job, bool in_allocation);
// Whether this process runs inside a Slurm allocation (SLURM_JOB_ID set, and not empty).
bool in_slurm_allocation();

// The job file the ranks are given: the job's own, or for a job read from a stream (a pipe, which
// the ranks cannot read again) a resolved copy, written here and removed when this goes unless
// kept (--dry-run prints a command naming it). The copy lies in the temporary folder for one
// node; for several, in job_files_folder (jobs/outputs.h), where the other hosts read it; under a
// new name of its own (tpx-job-NAME-PID-XXXXXX.toml), 0600.
class RanksJobFile {
public:
    RanksJobFile(const Job& job, const std::string& job_path);
    ~RanksJobFile();
    RanksJobFile(const RanksJobFile&) = delete;
    RanksJobFile& operator=(const RanksJobFile&) = delete;
    const std::string& path() const { return path_; }
    void keep() { copy_ = false; }

private:
    std::string path_;
    bool copy_ = false;
};

std::vector<std::string> mpirun_command(const Job& job, const std::string& worker, const std::vector<std::string>& worker_args,
                                        const LaunchHost& host = this_host());

// Where each rank runs: ranks in blocks of ranks_per_node per host (one TP group on as few
// hosts as possible), local ranks 0..n-1 on each.
struct RankPlace {
    int rank;
    std::string host;
    int local_rank;
    int stage = 0, tp_rank = 0;  // rank = stage x tp + tp_rank
    bool pipeline = false;       // the job has pp > 1: the map names stages
};
std::vector<RankPlace> rank_map(const Job& job);
// "h1: ranks 0-1 | h2: ranks 2-3"; with pp > 1 each run of a stage is named:
// "h1: ranks 0-1 (stage 0, tp ranks 0-1) | h2: ranks 2-3 (stage 1, tp ranks 0-1)"
std::string format_rank_map(const std::vector<RankPlace>& map);

// Where every rank runs on this host (no launch.hosts or launch.hostfile, and not inside a Slurm
// allocation, whose nodes mpirun takes), launch.interface must be one of its interfaces, or a
// subnet holding one of its IPv4 addresses: mpirun would otherwise print a warning, ignore it
// and run (an option that did nothing). JobError if not.
void check_interface_here(const Job& job, bool in_allocation);

// The tpx-worker next to the running tpx binary.
std::string worker_binary();

// Words joined with POSIX shell quoting where needed.
std::string shell_join(const std::vector<std::string>& words);
std::string shell_quote(const std::string& word);

}  // namespace tpx
