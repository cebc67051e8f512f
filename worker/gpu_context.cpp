// GPU context setup.
#include "worker/gpu_context.h"

#include <cstdlib>
#include <exception>

#include "common/cuda_check.h"
#include "common/log.h"
#include "worker/device.h"
#include "worker/mpi_comm.h"

namespace tpx {

GpuContext::GpuContext(MpiCommunicator& mpi) {
    device = select_device();
    if (const char* t = std::getenv("TPX_COLLECTIVE_TIMEOUT_S")) timeout_s = std::atof(t);
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    if (mpi.world() > 1) nccl = std::make_unique<NcclComm>(mpi, stream, timeout_s);
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    log_debug("GPU ", device, ": ", prop.name);
}

GpuContext::~GpuContext() {
    if (std::uncaught_exceptions()) {
        if (nccl) nccl->abort();  // never blocks, unlike destroying a communicator mid-collective
        return;
    }
    nccl.reset();
    if (stream) cudaStreamDestroy(stream);
}

int64_t device_memory_in_use() {
    size_t free_b = 0, total = 0;
    if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return 0;
    return (int64_t)(total - free_b);
}

}  // namespace tpx
