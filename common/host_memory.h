// How much memory this host can still give a job: the smaller of the kernel's MemAvailable and
// what the process's cgroup (a container's or a Slurm job's limit) has left. Read before launch
// and by each host's first rank before it loads, so that a job too large is refused with numbers.
#pragma once

#include <cstdint>

namespace tpx {

// Bytes, or -1 when it cannot be read (not Linux): the caller then skips its check.
int64_t available_host_memory();

}  // namespace tpx
