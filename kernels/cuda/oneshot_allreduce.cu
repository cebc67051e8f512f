// The one-shot all-reduce over CUDA IPC for small messages (decode activations): one kernel,
// no NCCL proxy, one flag exchange per block. See ops.h (OneShotPeers) for the protocol; the
// fused all-reduce, which shares its peers' mappings and counters, is fused_allreduce.cu.
#include <cstdint>

#include "common/cuda_check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace tpx::cuda {

namespace {

__device__ __forceinline__ void store_release_sys(uint32_t* p, uint32_t v) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t* p) {
    uint32_t v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// Block b owns vectors [b * per, (b + 1) * per) of the message on every rank, so it needs only
// the peers' blocks b: one flag each way per pair of blocks. Every block takes part in every
// call (even with no vectors), so all blocks' counters, and the buffer parity, agree.
__global__ void __launch_bounds__(kOneShotThreads) oneshot_all_reduce_kernel(const uint4* in, uint4* out,
                                                                            int64_t vecs, OneShotPeers p) {
    pdl_entry();  // see common.cuh
    __shared__ uint32_t call;
    const int b = blockIdx.x;
    if (threadIdx.x == 0) call = p.counters[b] + 1;
    __syncthreads();
    const uint32_t parity = call & 1;
    const int64_t per = (vecs + kOneShotBlocks - 1) / kOneShotBlocks;
    const int64_t begin = min(vecs, b * per), end = min(vecs, begin + per);
    const int64_t slot = (int64_t)p.capacity / 8;  // vectors per (parity, source) slot

    // 1. Push this rank's part into every peer's buffer, in this rank's slot.
    for (int64_t v = begin + threadIdx.x; v < end; v += blockDim.x) {
        uint4 x = in[v];
        for (int r = 0; r < p.world; ++r)
            if (r != p.rank) reinterpret_cast<uint4*>(p.data[r])[(parity * p.world + p.rank) * slot + v] = x;
    }
    // 2. Raise this block's flag at every peer, then wait for every peer's.
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence_system();
        for (int r = 0; r < p.world; ++r)
            if (r != p.rank) store_release_sys(p.flags[r] + b * kOneShotMaxRanks + p.rank, call);
        const uint64_t start = global_ns();
        // After one give-up (give_up_on) later calls do not wait again.
        const bool failed = *reinterpret_cast<volatile uint32_t*>(p.counters + kOneShotBlocks) != 0;  // device memory: cheap
        for (int r = 0; r < p.world && !failed; ++r) {
            if (r == p.rank) continue;
            const uint32_t* flag = p.flags[p.rank] + b * kOneShotMaxRanks + r;
            while ((int32_t)(load_acquire_sys(flag) - call) < 0) {
                if (global_ns() - start > p.timeout_ns) {
                    give_up_on(r, p.error, p.counters + kOneShotBlocks);
                    break;
                }
            }
        }
        p.counters[b] = call;
    }
    __syncthreads();
    // 3. Sum the world's parts in rank order (the same bits on every rank).
    const uint4* mine = reinterpret_cast<const uint4*>(p.data[p.rank]);
    for (int64_t v = begin + threadIdx.x; v < end; v += blockDim.x) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int r = 0; r < p.world; ++r) {
            uint4 x = r == p.rank ? in[v] : __ldcg(&mine[(parity * p.world + r) * slot + v]);
            float f[8];
            unpack8(x, f);
            for (int i = 0; i < 8; ++i) acc[i] += f[i];
        }
        out[v] = pack8(acc);
    }
}

}  // namespace

bool oneshot_all_reduce_applies(const bf16* in, const bf16* out, size_t n, const OneShotPeers& p) {
    return p.world > 1 && n <= p.capacity && n % 8 == 0 && aligned16({in, out});
}

void oneshot_all_reduce(const bf16* in, bf16* out, size_t n, const OneShotPeers& p, Launch at) {
    TPX_CHECK(oneshot_all_reduce_applies(in, out, n, p), "one-shot all-reduce of " + std::to_string(n) + " elements does not apply");
    launch(oneshot_all_reduce_kernel, kOneShotBlocks, kOneShotThreads, 0, at, reinterpret_cast<const uint4*>(in), reinterpret_cast<uint4*>(out),
                                                                             (int64_t)(n / 8), p);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace tpx::cuda
