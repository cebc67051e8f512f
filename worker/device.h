// Which GPU a rank drives: its local rank on the host (MPI's shared-memory split), checked
// against OMPI_COMM_WORLD_LOCAL_RANK and SLURM_LOCALID when present and against the devices
// visible to the process. Every mismatch is an error naming the rank and both values.
#pragma once

namespace tpx {

int local_rank();
// Sets and returns the device for this rank.
int select_device();

}  // namespace tpx
