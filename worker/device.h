// Which GPU a rank drives: its local rank on the host (worker/topology.h), checked against the
// devices visible to the process; a rank without a device is an error naming both counts.
#pragma once

namespace tpx {

// Sets and returns the device for this rank.
int select_device();

}  // namespace tpx
