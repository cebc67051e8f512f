// Whether launch() asks for programmatic dependent launch: read once per process (the device's
// compute capability, TPX_PDL). See common.cuh.
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {

bool pdl_enabled() {
    static const bool on = [] {
        const char* env = std::getenv("TPX_PDL");
        if (env && std::strcmp(env, "0") == 0) return false;
        int device = 0, major = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
        return major >= 9;
    }();
    return on;
}

}  // namespace tpx::cuda
