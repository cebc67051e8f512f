// What the launchers read of the device once per process: whether launch() asks for
// programmatic dependent launch (the compute capability, TPX_PDL), and the SM count. See
// common.cuh.
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

int sm_count() {
    static const int n = [] {
        int device = 0, sms = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
        return sms;
    }();
    return n;
}

#ifdef TPX_PROBE
void probe_set(const ProbeSink& sink) {
    probe_set_linear(sink);
    probe_set_attention(sink);
}
#endif

}  // namespace tpx::cuda
