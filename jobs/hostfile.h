// An Open MPI hostfile (launch.hostfile) read as mpirun reads it: one host a line, optional
// `slots=N` and `max_slots=N` (`max-slots`), `#` comments. The job is checked against it before
// any launch: enough hosts for parallel.nodes, and enough slots on each for ranks_per_node,
// where the file says (a host without slots gets its core count from mpirun, unknown here).
#pragma once

#include <string>
#include <vector>

namespace tpx {

struct Job;

struct HostfileHost {
    std::string name;
    int line = 0;    // where the host first appears
    long slots = 0;  // 0: not given (mpirun counts the host's cores); else capped by max_slots
};

// The distinct hosts in the order they first appear; a host's lines add up as mpirun's do.
// Throws JobError("FILE:LINE: ...") for a line mpirun would refuse: no host, a slots value that
// is not a positive integer, slots given twice for one host.
std::vector<HostfileHost> read_hostfile(const std::string& path);

// JobError naming the job's launch.hostfile key and the hostfile's line when the job's nodes
// do not fit the hosts listed.
void check_hostfile(const Job& job, const std::string& key_at);

}  // namespace tpx
