// Shared by the .cu files: the launch check and block reductions.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "common/cuda_check.h"
#include "kernels/cuda/ops.h"

#define TPX_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

namespace tpx::cuda {

inline unsigned blocks_for(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

// Programmatic dependent launch (sm_90): every kernel here is started by launch(), which lets the
// GPU launch it, and its blocks take free SMs, while the kernel before it on the stream is still
// draining; in a captured graph the two become one programmatic edge. So every kernel here
// calls pdl_entry() before it writes anything or reads what the kernel before it may write (a
// kernel may read weights before it, [backend.tuning] gemv_early): it waits for the grids before
// it to finish, their writes visible, then lets the next kernel launch (after the wait, so that
// at most one grid waits beside the one running). Off (ordinary launches) with backend.tuning.pdl = false.
__device__ __forceinline__ void pdl_entry() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

bool pdl_enabled(const KernelConfig& config);  // config.pdl and the device is sm_90 or newer
int sm_count();      // the current device's multiprocessors (read once)
// The dynamic shared memory a block of the current device may opt into, less 1 KB for the
// kernels' static shared memory (read once).
size_t optin_smem();
size_t max_streamed_window();  // the device's largest L2 access-policy window (read once; 0: none)

__device__ __forceinline__ uint64_t global_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

#ifdef TPX_PROBE
// ProbeRec stamps (ops.h): each translation unit has its own sink, set by probe_set.
static __device__ ProbeSink probe_sink;
inline void probe_set_here(const ProbeSink& s) { CUDA_CHECK(cudaMemcpyToSymbol(probe_sink, &s, sizeof s)); }
void probe_set_linear(const ProbeSink& s);
void probe_set_attention(const ProbeSink& s);
void probe_set_fused_allreduce(const ProbeSink& s);
void probe_set_quant_ring(const ProbeSink& s);
__device__ inline void probe_put(unsigned tag, unsigned k, const unsigned long long* t) {
    if (threadIdx.x != 0 || !probe_sink.rec) return;
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    const unsigned i = atomicAdd(probe_sink.n, 1u);
    if (i >= probe_sink.cap) return;
    ProbeRec& r = probe_sink.rec[i];
    for (int j = 0; j < 5; ++j) r.t[j] = t[j];
    r.tag = tag, r.block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z), r.smid = smid, r.k = k;
}
struct ProbeEnd {  // stamps t[4] and writes the record on every path out of the kernel
    unsigned long long* t;
    unsigned tag, k;
    __device__ ~ProbeEnd() {
        t[4] = global_ns();
        probe_put(tag, k, t);
    }
};
#define TPX_PROBE_DECL unsigned long long probe_t[5] = {0, 0, 0, 0, 0}
#define TPX_PROBE_MARK(i) (probe_t[i] = global_ns())
#define TPX_PROBE_END(tag, k) ProbeEnd probe_end{probe_t, (unsigned)(tag), (unsigned)(k)}
#define TPX_PROBE_PARAM , unsigned long long* probe_t
#define TPX_PROBE_ARG , probe_t
#else
#define TPX_PROBE_DECL
#define TPX_PROBE_MARK(i)
#define TPX_PROBE_END(tag, k)
#define TPX_PROBE_PARAM
#define TPX_PROBE_ARG
#endif

// A wait for rank `rank` past its timeout (the one-shot all-reduce, the fused one's sum): the
// host-mapped *error names the first rank missed (the host's sync reports it), and *gave_up
// makes later calls stop waiting (the job is ending; dozens of timeouts would hold the stream).
__device__ __forceinline__ void give_up_on(int rank, int* error, uint32_t* gave_up) {
    atomicCAS(error, 0, rank + 1);
    atomicExch(gave_up, 1u);
}

__device__ inline uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared, asynchronous; zeros when !valid (src is then not read).
__device__ inline void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
// Until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ inline void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Bytes a kernel reads once (a decode GEMV's weights): launched with an L2 access-policy window
// that streams them (evict-first), so that they do not push out of L2 what the kernels after it
// read again (activations, scales, code; docs/PERF.md). The window is cut to the device's largest.
struct Streamed {
    const void* base = nullptr;
    size_t bytes = 0;
};

// `cluster` > 0: thread-block clusters of that many blocks along x (sm_90). On at.stream, with
// programmatic dependent launch where at.config allows it, and `streamed`'s window.
template <typename... Params, typename... Args>
void launch_streamed(void (*kernel)(Params...), dim3 grid, int cluster, dim3 block, size_t smem, const Launch& at, Streamed streamed,
                     Args&&... args) {
    cudaLaunchAttribute attrs[3] = {};
    unsigned n = 0;
    if (streamed.base && streamed.bytes && max_streamed_window()) {
        attrs[n].id = cudaLaunchAttributeAccessPolicyWindow;
        cudaAccessPolicyWindow& w = attrs[n++].val.accessPolicyWindow;
        w.base_ptr = const_cast<void*>(streamed.base);
        w.num_bytes = std::min(streamed.bytes, max_streamed_window());
        w.hitRatio = 1.0f;
        w.hitProp = cudaAccessPropertyStreaming;
        w.missProp = cudaAccessPropertyStreaming;
    }
    if (pdl_enabled(*at.config)) {
        attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attrs[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster > 0) {
        attrs[n].id = cudaLaunchAttributeClusterDimension;
        attrs[n++].val.clusterDim = {(unsigned)cluster, 1, 1};
    }
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = at.stream;
    config.attrs = attrs;
    config.numAttrs = n;
    CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

template <typename... Params, typename... Args>
void launch_cluster(void (*kernel)(Params...), dim3 grid, int cluster, dim3 block, size_t smem, const Launch& at, Args&&... args) {
    launch_streamed(kernel, grid, cluster, block, smem, at, Streamed{}, std::forward<Args>(args)...);
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, const Launch& at, Args&&... args) {
    launch_cluster(kernel, grid, 0, block, smem, at, std::forward<Args>(args)...);
}

// Every pointer on a 16-byte boundary (the vector kernels' uint4 loads and stores).
inline bool aligned16(std::initializer_list<const void*> ptrs) {
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) & 15) return false;
    return true;
}

// Eight bf16 in 16 bytes, to and from fp32.
__device__ inline void unpack8(const uint4& v, float* f) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 p = __bfloat1622float2(h[i]);
        f[2 * i] = p.x, f[2 * i + 1] = p.y;
    }
}
__device__ inline uint4 pack8(const float* f) {
    uint4 v;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return v;
}

// RoPE's rotation of the pair of dims (i, i + head_dim / 2) = (a, b) by an angle of cosine c and
// sine s, as every kernel that rotates computes it: the rounding spelled out (one product, then a
// fused multiply-add), so that they agree bit for bit whatever the compiler would contract.
__device__ __forceinline__ float rope_lo(float a, float b, float c, float s) { return __fmaf_rn(a, c, -__fmul_rn(b, s)); }
__device__ __forceinline__ float rope_hi(float a, float b, float c, float s) { return __fmaf_rn(b, c, __fmul_rn(a, s)); }

// SiLU as every kernel computes it (SwiGLU's kernels, the GEMVs' SwiGLU epilogue, MoE): the fast
// exponential and division (__expf within 2 + 1.2 |x| ulp; __fdividef 0 past 2^126, where SiLU is
// 0 to bf16's precision anyway: both far below the bf16 result's 2^-8), so that the SwiGLU that
// also quantizes its output (w8a8) costs about what the bf16 one did (docs/PERF.md, 2026-12-04).
__device__ inline float silu(float x) { return __fdividef(x, 1.0f + __expf(-x)); }
// v rounded to bf16 (to nearest even) and back: the value a bf16 store keeps.
__device__ inline float round_bf16(float v) { return __bfloat162float(__float2bfloat16(v)); }

struct SumOp {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Op>
__device__ inline float warp_reduce(float v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ inline float warp_sum(float v) { return warp_reduce(v, SumOp{}); }

// q . k over an aligned group of kLanes lanes (a power of two), 8 elements a lane, summed in
// butterfly order: every lane of the group gets the whole product (the decode attention kernels'
// scores). Every lane of the warp must call it.
template <int kLanes>
__device__ __forceinline__ float lane_group_dot8(const float (&q)[8], const float (&k)[8]) {
    float d = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) d += q[e] * k[e];
#pragma unroll
    for (int o = kLanes / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
    return d;
}

// Reduction over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
template <typename Op>
__device__ inline float block_reduce(float v, Op op, float identity) {
    __shared__ float part[32];
    __shared__ float total;
    v = warp_reduce(v, op);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float w = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : identity;
        w = warp_reduce(w, op);
        if (threadIdx.x == 0) total = w;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}
__device__ inline float block_sum(float v) { return block_reduce(v, SumOp{}, 0.0f); }
__device__ inline float block_max(float v) { return block_reduce(v, MaxOp{}, -INFINITY); }

}  // namespace tpx::cuda
