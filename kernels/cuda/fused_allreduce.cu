// The fused all-reduce of a batch-1 decode step, host side (ExchangeIn in ops.h is the
// protocol, fused_allreduce.cuh its device side): gemv_push launches the GEMV that pushes a
// rank's part, exchange_in describes an exchange to the summing GEMV (gemv_fused with
// GemvNorm::sum), exchange_advance moves the epoch past a forward's exchanges.
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/fused_allreduce.cuh"
#include "kernels/cuda/gemv.cuh"

namespace tpx::cuda {
namespace {

__global__ void exchange_advance_kernel(uint32_t* epoch, uint32_t calls) {
    pdl_entry();  // see common.cuh: every kernel before it, and so every reader of the epoch, has finished
    if (threadIdx.x == 0) *epoch += calls;
}

}  // namespace

#ifdef TPX_PROBE
void probe_set_fused_allreduce(const ProbeSink& s) { probe_set_here(s); }
#endif

ExchangeIn exchange_in(const OneShotPeers& p, uint32_t seq) {
    ExchangeIn e;
    e.ll = p.ll[p.rank];
    e.world = p.world;
    e.units = p.ll_units;
    e.epoch = p.counters + kOneShotBlocks + 1;
    e.seq = seq;
    e.gave_up = p.counters + kOneShotBlocks;
    e.error = p.error;
    e.timeout_ns = p.timeout_ns;
    return e;
}

void exchange_advance(const OneShotPeers& p, uint32_t calls, Launch at) {
    TPX_CHECK(p.world > 1 && p.counters, "exchange_advance: no exchange buffers");
    launch(exchange_advance_kernel, 1, 32, 0, at, p.counters + kOneShotBlocks + 1, calls);
    CUDA_CHECK(cudaGetLastError());
}

bool gemv_push_applies(int64_t K, int64_t N, const bf16* x, const bf16* w, const OneShotPeers& p) {
    return p.world > 1 && p.ll[p.rank] && N % 2 == 0 && N <= 2 * p.ll_units && gemv_applies({1, K, N}, x, w);
}

void gemv_push(const GemvPushArgs& a, const OneShotPeers& p, Launch at) {
    const int64_t K = a.K, N = a.N;
    TPX_CHECK(gemv_push_applies(K, N, a.x, a.w, p), "gemv_push: needs exchange buffers of at least N = " + std::to_string(N) +
                                                        " elements, N even, K a multiple of 8, x and W 16-byte aligned");
    const int ks = gemv_split_for(K, *at.config);
    if (ks == 4) launch_split<4, true>(K, N, a.x, a.w, a.bias, nullptr, p, a.seq, at);
    else if (ks == 2) launch_split<2, true>(K, N, a.x, a.w, a.bias, nullptr, p, a.seq, at);
    else launch_split<1, true>(K, N, a.x, a.w, a.bias, nullptr, p, a.seq, at);
}

}  // namespace tpx::cuda
