// y = x W^T: the decode GEMVs (gemv.cuh at one row, gemv_mma.cu at 2 to 8, batch_gemm.cu at 9 to
// 64) with their neighbours
// fused in (gemv_fused), else cuBLAS: W[N, K] row-major is W^T column-major, so Y^T = W . X^T is
// one cublasGemmEx with op(W) = T, and the bias a separate row-broadcast kernel.
#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/batch_gemm.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/gemv_mma.h"

namespace tpx::cuda {
namespace {

__global__ void add_bias_kernel(int64_t tokens, int64_t n, const bf16* bias, bf16* y) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * n) return;
    y[i] = __float2bfloat16(__bfloat162float(y[i]) + __bfloat162float(bias[i % n]));
}

// Blocks of `kernel` resident on the whole GPU at once (its registers and shared memory allowing).
int resident_blocks(const void* kernel, int threads, size_t smem) {
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    return sm_count() * std::max(1, per_sm);
}

// With the norm, the grid is at most what fits on the GPU at once, so that the prologue is paid
// once per resident block, each block an equal range of the items (gemv_balance; false: every
// warp the same number of items). T = 512 (sum_wide, summing GEMVs only): each block reads the
// whole exchange, so half the blocks read half the bytes. docs/PERF.md has the forms compared.
template <GemvEpilogue E, bool kNorm, bool kSum = false, int T = kGemvThreads>
void launch_gemv(int64_t K, int64_t items, int64_t pair, const bf16* x, const bf16* w, const bf16* bias, bf16* y, const GemvNorm& nm,
                 const GemvRopeKv& rk, Launch at) {
    constexpr int kWarps = T / 32;
    unsigned blocks = blocks_for(items, kWarps);
    size_t smem = 0;
    const bool balanced = kNorm && at.config->gemv_balance;
    if (kNorm) {
        smem = (kSum ? 3 : 2) * (size_t)K * sizeof(bf16);  // x, the norm weight (and the residual)
        // Up to kGemvNormMaxK: past the 48 KiB a kernel gets without asking (with its static
        // shared memory, K = 12288 is past it even without the residual). Once a process: one device each.
        static const bool once = [] {
            CUDA_CHECK(cudaFuncSetAttribute(gemv_kernel<E, kNorm, kSum, T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)((kSum ? 3 : 2) * kGemvNormMaxK * sizeof(bf16))));
            return true;
        }();
        (void)once;
        const int resident = resident_blocks((const void*)gemv_kernel<E, kNorm, kSum, T>, T, smem);
        const int64_t warps = (int64_t)resident * kWarps;
        blocks = balanced ? std::min<unsigned>(blocks, resident) : blocks_for(items, (int)(kWarps * ((items + warps - 1) / warps)));
    }
    launch(gemv_kernel<E, kNorm, kSum, T>, blocks, T, smem, at, K, items, pair, x, w, bias, y, nm, rk, at.config->gemv_early, balanced);
    TPX_LAUNCH_CHECK();
}

}  // namespace

#ifdef TPX_PROBE
void probe_set_linear(const ProbeSink& s) { probe_set_here(s); }
#endif

bool gemv_applies(const cpu::LinearShape& s, const bf16* x, const bf16* w) {
    if (s.tokens > kGemvMaxTokens) return batch_gemm_applies(s.tokens, s.in, w) && aligned16({x});
    if (s.tokens > 1) return gemv_mma_applies(s.tokens, s.in, w) && aligned16({x});
    return s.tokens == 1 && s.in % 8 == 0 && aligned16({x, w});
}

bool gemv_route_allowed(int64_t tokens, const KernelConfig& config) {
    if (tokens == 1) return true;
    return tokens > kGemvMaxTokens ? config.batch_gemm && tokens <= kBatchGemmMaxTokens : tokens > 1 && config.gemv_mma;
}

bool linear_takes_gemv(const cpu::LinearShape& s, const bf16* x, const bf16* w, const KernelConfig& config) {
    return gemv_applies(s, x, w) && gemv_route_allowed(s.tokens, config);
}

bool gemv_fused_applies(int64_t K, const GemvNorm* norm, const bf16* w, int64_t tokens) {
    if (tokens < 1) return false;
    if (tokens > kGemvMaxTokens) return !norm && batch_gemm_applies(tokens, K, w);
    if (tokens > 1) return !norm && gemv_mma_applies(tokens, K, w);
    if (K % 8 != 0 || !aligned16({w})) return false;
    if (!norm) return true;
    if (norm->sum.ll && K > 2 * norm->sum.units) return false;
    return K <= kGemvNormMaxK && aligned16({norm->sum.ll ? nullptr : norm->x, norm->weight}) &&
           (!norm->residual || aligned16({norm->residual, norm->residual_out}));
}

void gemv_fused(const GemvFusedArgs& a, Launch at) {
    const int64_t K = a.K, N = a.N;
    const bf16 *x = a.x, *w = a.w, *bias = a.bias;
    bf16* y = a.y;
    const GemvNorm* norm = a.norm;
    const GemvEpilogue epi = a.epilogue;
    const GemvRopeKv* rope = a.rope;
    TPX_CHECK(gemv_fused_applies(K, norm, w, a.tokens) && (norm || aligned16({x})),
              "gemv_fused: " + std::to_string(a.tokens) + " tokens of K = " + std::to_string(K) + ", N = " + std::to_string(N) +
                  ": needs 1 to " + std::to_string(kBatchGemmMaxTokens) + " tokens, K a multiple of 8 (at most " + std::to_string(kGemvNormMaxK) +
                  " with the norm, which takes one token), operands 16-byte aligned and the shared memory the kernel needs");
    const GemvNorm nm = norm ? *norm : GemvNorm{};
    GemvRopeKv rk{};
    rk.head_dim = 2;
    int64_t items = N, pair = 0;
    if (epi == GemvEpilogue::kSwiglu) {
        TPX_CHECK(N % 2 == 0, "gemv_fused: SwiGLU needs an even output width");
        items = pair = N / 2;
    } else if (epi == GemvEpilogue::kRopeKv) {
        TPX_CHECK(rope != nullptr, "gemv_fused: RoPE epilogue without its parameters");
        rk = *rope;
        TPX_CHECK(rk.head_dim % 2 == 0 && N == (rk.heads + 2 * rk.kv_heads) * rk.head_dim,
                  "gemv_fused: RoPE epilogue: output width is not (heads + 2 kv_heads) x head_dim");
        items = N / 2;
    }
    if (N == 0) return;
    if (a.tokens > kGemvMaxTokens) return batch_gemm(a, items, pair, rk, nullptr, at);
    if (a.tokens > 1) return gemv_mma(a, items, pair, rk, at);
    auto go = [&](auto e) {
        constexpr GemvEpilogue E = decltype(e)::value;
        if (norm && norm->sum.ll && at.config->sum_wide) launch_gemv<E, true, true, 512>(K, items, pair, x, w, bias, y, nm, rk, at);
        else if (norm && norm->sum.ll) launch_gemv<E, true, true>(K, items, pair, x, w, bias, y, nm, rk, at);
        else if (norm) launch_gemv<E, true>(K, items, pair, x, w, bias, y, nm, rk, at);
        else launch_gemv<E, false>(K, items, pair, x, w, bias, y, nm, rk, at);
    };
    if (epi == GemvEpilogue::kNone) go(std::integral_constant<GemvEpilogue, GemvEpilogue::kNone>{});
    else if (epi == GemvEpilogue::kSwiglu) go(std::integral_constant<GemvEpilogue, GemvEpilogue::kSwiglu>{});
    else go(std::integral_constant<GemvEpilogue, GemvEpilogue::kRopeKv>{});
}

void gemm_ex(cublasHandle_t handle, const cpu::LinearShape& s, const bf16* x, const bf16* w, bf16* y, cudaStream_t stream) {
    const float alpha = 1.0f, beta = 0.0f;
    // cublasSetStream also puts the handle back on cuBLAS's own workspace pool (dropping one
    // given by cublasSetWorkspace): only when the stream changes.
    cudaStream_t current = nullptr;
    CUBLAS_CHECK(cublasGetStream(handle, &current));
    if (current != stream) CUBLAS_CHECK(cublasSetStream(handle, stream));
    CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)s.out, (int)s.tokens, (int)s.in, &alpha, w, CUDA_R_16BF, (int)s.in, x,
                              CUDA_R_16BF, (int)s.in, &beta, y, CUDA_R_16BF, (int)s.out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

bool linear_add(const LinearArgs& a, const bf16* add, Launch at) {
    const cpu::LinearShape& s = a.shape;
    if (a.route != LinearRoute::kAuto || s.tokens <= kGemvMaxTokens || !linear_takes_gemv(s, a.x, a.w, *at.config)) return false;
    GemvFusedArgs f{s.in, s.out, a.x, a.w, a.bias, a.y};
    f.tokens = s.tokens;
    batch_gemm(f, s.out, 0, GemvRopeKv{}, add, at);
    return true;
}

void linear(cublasHandle_t handle, const LinearArgs& a, Launch at) {
    const cpu::LinearShape& s = a.shape;
    const bf16 *x = a.x, *w = a.w, *bias = a.bias;
    bf16* y = a.y;
    const cudaStream_t stream = at.stream;
    TPX_CHECK(s.tokens >= 0 && s.in > 0 && s.out > 0, "linear: bad shape");
    if (s.tokens == 0) return;
    if (a.route == LinearRoute::kAuto && linear_takes_gemv(s, x, w, *at.config)) {
        if (s.tokens > 1) {
            GemvFusedArgs f{s.in, s.out, x, w, bias, y};
            f.tokens = s.tokens;
            return gemv_fused(f, at);
        }
        const int ks = gemv_split_for(s.in, *at.config);
        if (ks == 2 || ks == 4) {
            const OneShotPeers none;
            if (ks == 2) launch_split<2, false>(s.in, s.out, x, w, bias, y, none, 0u, at);
            else launch_split<4, false>(s.in, s.out, x, w, bias, y, none, 0u, at);
            return;
        }
        gemv_fused({s.in, s.out, x, w, bias, y}, at);
        return;
    }
    if (!a.tuner || !a.tuner->matmul(s, x, w, y, stream)) gemm_ex(handle, s, x, w, y, stream);
    if (bias) {
        launch(add_bias_kernel, blocks_for(s.tokens * s.out, 256), 256, 0, at, s.tokens, s.out, bias, y);
        TPX_LAUNCH_CHECK();
    }
}

}  // namespace tpx::cuda
