// A rank's GPU: the device chosen from its local rank, the compute stream, and NCCL over the
// world (when there is more than one rank). The collective timeout is the job's
// backend.collective_timeout_s, as the MPI communicator's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "worker/nccl_comm.h"

namespace tpx {

class MpiCommunicator;

struct GpuContext {
    GpuContext(MpiCommunicator& mpi, const KernelConfig& tuning);  // timeout_s: mpi's
    ~GpuContext();
    int device = 0;
    cudaStream_t stream = nullptr;
    double timeout_s = 120;
    std::unique_ptr<NcclComm> nccl;
};

// Bytes of device memory in use (total minus free), for the transforms' memory change.
int64_t device_memory_in_use();
// Free bytes on this rank's device, or -1 when CUDA cannot say.
int64_t device_free_memory();

}  // namespace tpx

namespace tpx {
struct DeviceRates;
// Measured on the current device: a 1 GiB device-to-device copy (read + write bytes per
// second) and a bf16 8192^3 GEMM (FLOP/s), for the benchmark's rooflines.
DeviceRates measure_device_rates(cudaStream_t stream);
}  // namespace tpx
