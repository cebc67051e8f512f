// What the launchers read of the device once per process: whether it takes programmatic
// dependent launch, the SM count, the largest L2 access-policy window and the shared memory a
// block may opt into. See common.cuh.
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {

bool pdl_enabled(const KernelConfig& config) {
    static const bool capable = [] {
        int device = 0, major = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
        return major >= 9;
    }();
    return capable && config.pdl;
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

size_t max_streamed_window() {
    static const size_t limit = [] {
        int device = 0, bytes = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxAccessPolicyWindowSize, device));
        return (size_t)bytes;
    }();
    return limit;
}

size_t optin_smem() {
    static const size_t limit = [] {
        int device = 0, optin = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
        return (size_t)optin - 1024;  // less the kernels' static shared memory: the whole opt-in is refused
    }();
    return limit;
}

#ifdef TPX_PROBE
void probe_set(const ProbeSink& sink) {
    probe_set_linear(sink);
    probe_set_attention(sink);
    probe_set_fused_allreduce(sink);
    probe_set_quant_ring(sink);
}
#endif

}  // namespace tpx::cuda
