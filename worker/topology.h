// Where a rank sits: its local rank on the host (MPI's shared-memory split), and, when srun
// started the ranks, a cross-check of Slurm's SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS
// against MPI's rank, local rank and world. A mismatch is an error naming both values.
#pragma once

#include <vector>

namespace tpx {

int local_rank();
// The world ranks that share this host (MPI's shared-memory split), in rank order. Collective.
std::vector<int> ranks_on_this_host();
void check_srun_environment(int rank, int world);

}  // namespace tpx
