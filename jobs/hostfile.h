// An Open MPI hostfile (launch.hostfile) read as Open MPI 4.1's mpirun reads it: one host a
// line, optional `slots=N` and `max_slots=N` (`max-slots`), `#` comments; a host's repeated lines
// add a slot each. The job is checked against it before any launch: enough hosts for
// parallel.nodes, and enough slots on each for ranks_per_node where the file fixes them (a host
// named once without slots gets its core count from mpirun, unknown here).
#pragma once

#include <string>
#include <vector>

namespace tpx {

struct Job;

struct HostfileHost {
    std::string name;
    int line = 0;    // where the host first appears
    long slots = 0;  // -1: not fixed by the file (mpirun counts the host's cores)
};

// The distinct hosts in the order they first appear. Throws JobError("FILE:LINE: ...") for what
// mpirun refuses: a line without a host, a count that is not a number, slots given on a host's
// repeated line (a second definition), max_slots below slots; JobError for a path that is not a
// regular file.
std::vector<HostfileHost> read_hostfile(const std::string& path);

// JobError naming the job's launch.hostfile key and the hostfile's line when the job's nodes
// do not fit the hosts listed.
void check_hostfile(const Job& job, const std::string& key_at);

// Whether an mpirun argument (launch.extra_args) gives what tpx sets itself from [parallel] and
// [launch]: the ranks' count, hosts, hostfile or placement per node (given again, mpirun starts
// another count of ranks, or on other hosts, than the plan's).
bool tpx_sets_mpirun_option(const std::string& arg);

}  // namespace tpx
