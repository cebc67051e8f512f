// Where a rank sits: its local rank on the host (MPI's shared-memory split), and, when srun
// started the ranks, a cross-check of Slurm's SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS
// against MPI's rank, local rank and world. A mismatch is an error naming both values.
#pragma once

namespace tpx {

int local_rank();
void check_srun_environment(int rank, int world);

}  // namespace tpx
