// Device selection.
#include "worker/device.h"

#include <cstdlib>
#include <string>

#include "common/cuda_check.h"
#include "worker/topology.h"

namespace tpx {

int select_device() {
    int lr = local_rank(), count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) count = 0;
    if (lr >= count) {
        const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
        throw Error("local rank " + std::to_string(lr) + " needs CUDA device " + std::to_string(lr) + " but " + std::to_string(count) +
                        " device(s) are visible (CUDA_VISIBLE_DEVICES=" + (visible ? visible : "unset") +
                        (e != cudaSuccess ? std::string(", ") + cudaGetErrorString(e) : std::string()) + ")",
                    kExitBadInput);
    }
    CUDA_CHECK(cudaSetDevice(lr));
    return lr;
}

}  // namespace tpx
