// What the launchers read of the device once per process (whether it takes programmatic
// dependent launch, the SM count) and the process's kernel settings. See common.cuh.
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {

namespace {
KernelConfig g_config;
}  // namespace

void set_kernel_config(const KernelConfig& config) { g_config = config; }
const KernelConfig& kernel_config() { return g_config; }

bool pdl_enabled() {
    static const bool capable = [] {
        int device = 0, major = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
        return major >= 9;
    }();
    return capable && g_config.pdl;
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
