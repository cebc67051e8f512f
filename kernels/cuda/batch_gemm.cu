// The decode GEMM of kGemvMaxTokens + 1 to kBatchGemmMaxTokens tokens on tensor cores
// ([backend.tuning] batch_gemm): linear()'s route for that many rows, gemv_fused's with SwiGLU or
// RoPE + the KV-cache write, and linear_add's with the residual added. A row's sums are added in
// an order that depends on its tile count, K and the GPU only (launch_batch's split), so that the
// fused and unfused paths agree bit for bit and a token's outputs do not depend on the other
// tokens of its batch (of 9 to 64: fewer take other kernels).
#include "kernels/cuda/batch_gemm.h"

#include <cooperative_groups.h>

#include <algorithm>
#include <array>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/weight_ring.cuh"

namespace tpx::cuda {
namespace {

using namespace ring;
constexpr int kBlockWarps = 4, kBlockThreads = 32 * kBlockWarps;
constexpr int kBlockStages = kStages;
constexpr int kMaxSplit = 8;              // blocks a cluster (portable), each a share of the steps
constexpr int64_t kMinStepsPerBlock = 8;  // a split's steps a block on average, at least
static_assert(kBatchGemmMaxTokens == 8 * 8, "the stages hold up to 8 n-tiles of 8 tokens");

// A stage: each warp's 32 weight rows (a line each, as weight_ring.cuh's slot), then the step's x
// of 8 NT token rows (128 bytes each, swizzled as the weights, zeros past T).
template <int NT>
constexpr int kStageBytes = kBlockWarps * kWBytes + 8 * NT * kLine;
// The partial sums a block hands to its cluster, [warp][n-tile][set][4][lane] floats, in the stages' place.
template <int NT>
constexpr int kPartFloats = kBlockWarps * NT * kSets * 4 * 32;
template <int NT>
constexpr size_t kSmemBytes = std::max<size_t>(kBlockStages * kStageBytes<NT>, kPartFloats<NT> * sizeof(float));

struct BatchArgs {
    int64_t T = 0, K = 0, N = 0;
    const bf16* x = nullptr;  // [T, K]
    const bf16* w = nullptr;
    const bf16* bias = nullptr;
    const bf16* add = nullptr;  // kNone only: [T, N]
    bf16* y = nullptr;
    GemvRopeKv rope;
};

// The outputs of n-tile nt of the warp's tile (write_tile: the tokens 8 nt + 2c + e).
template <GemvEpilogue E>
__device__ inline void write_ntile(const BatchArgs& a, int64_t tile, int64_t items, int64_t pair, const float (&sum)[kSets][4], int nt) {
    write_tile<E>(a.T, a.N, a.bias, a.y, a.rope, tile, items, pair, sum, TileExtras{nullptr, 8 * nt, a.add});
}

// y = x W^T (+ bias, + add) for T tokens over `items` work items (item_rows), and the epilogue
// (gemv_epilogue.cuh), in one pass over the weights; mma.sync m16n8k16, bf16 in, fp32 sums, the
// tokens as the mma's n (8 NT of them, zeros past T). A block of 4 warps takes 4 consecutive warp
// tiles of weight_ring.cuh (128 weight rows, or 64 items of two rows), each warp copying its own
// rows' lines of a step and the block the step's x, into a ring of kBlockStages stages (cp.async,
// one barrier a step: every warp reads the whole x). The steps (64 columns each) are split over the
// `split` blocks of a cluster, each a consecutive share; their partial sums meet in shared
// memory, block r adding every block's sums of n-tiles r, r + split, ... in rank order (distributed
// shared memory) and writing those tokens' outputs (launch_batch's split: see the file's head).
template <GemvEpilogue E, int NT>
__global__ void __launch_bounds__(kBlockThreads, 2) batch_gemm_kernel(BatchArgs a, int64_t items, int64_t pair, int split, bool early) {
    extern __shared__ __align__(128) char smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rank = (int)(blockIdx.x % split);
    const int64_t tile = (int64_t)(blockIdx.x / split) * kBlockWarps + warp, K = a.K, T = a.T;
    const int64_t steps = (K + kStep - 1) / kStep, per = (steps + split - 1) / split;
    const int64_t first = min(steps, rank * per), mine = min(steps, first + per) - first;
    LineCopies lines;
    lines.init<E>(a.w, K * 2, tile, items, pair, a.rope.head_dim / 2);
    auto stage = [&](int64_t n) { return smem + (n % kBlockStages) * kStageBytes<NT>; };
    auto copy_w = [&](int64_t n) {
        if (n < mine) lines.copy(stage(n) + warp * kWBytes, first + n, K * 2);
    };
    auto copy_x = [&](int64_t n) {  // 64 NT chunks of 16 bytes: NT / 2 a thread
        if (n >= mine) return;
        const int64_t col = (first + n) * kStep;
        char* xs = stage(n) + kBlockWarps * kWBytes;
#pragma unroll
        for (int j = 0; j < NT / 2; ++j) {
            const int c = threadIdx.x + kBlockThreads * j, t = c >> 3, q = c & 7;
            const bool in = t < T && col + q * 8 < K;
            cp_async16(xs + line_chunk(t, q), a.x + (in ? t * K + col + q * 8 : 0), in);
        }
    };
    start_ring(early, copy_w, copy_x);
    float acc[NT][kSets][4] = {};
    for (int64_t n = 0; n < mine; ++n) {
        cp_async_wait<kBlockStages - 2>();
        __syncthreads();  // step n arrived for every thread; every warp is past step n - 1, whose stage is refilled now
        copy_w(n + kBlockStages - 1);
        copy_x(n + kBlockStages - 1);
        cp_async_commit();
        multiply_step<NT>(stage(n) + warp * kWBytes, stage(n) + kBlockWarps * kWBytes, acc);
    }
    cp_async_wait_all();
    if (split == 1) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) write_ntile<E>(a, tile, items, pair, acc[nt], nt);
        return;
    }
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    float* part = reinterpret_cast<float*>(smem);
    auto at = [&](int nt, int s, int i) { return (((warp * NT + nt) * kSets + s) * 4 + i) * 32 + lane; };
    __syncthreads();  // every warp past its last step: the stages become the partial sums
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int s = 0; s < kSets; ++s)
#pragma unroll
            for (int i = 0; i < 4; ++i) part[at(nt, s, i)] = acc[nt][s][i];
    cluster.sync();  // every block's sums stored
    for (int nt = rank; nt < NT; nt += split) {
        float sum[kSets][4] = {};
        for (int r = 0; r < split; ++r) {
            const float* from = cluster.map_shared_rank(part, r);
#pragma unroll
            for (int s = 0; s < kSets; ++s)
#pragma unroll
                for (int i = 0; i < 4; ++i) sum[s][i] += from[at(nt, s, i)];
        }
        write_ntile<E>(a, tile, items, pair, sum, nt);
    }
    cluster.sync();  // no block leaves while another may still read its sums
}

// Clusters of `split` blocks of the widest instance (64 tokens: the most shared memory; every
// instance fits two blocks an SM by its registers) the GPU holds at once. A cluster's blocks
// share one GPC, so fewer clusters fit than the SMs' block slots suggest (docs/PERF.md,
// nineteenth session: a grid of more ran its last clusters as a second wave). Read once a process.
int resident_clusters(int split) {
    static const std::array<int, kMaxSplit + 1> counts = [] {
        std::array<int, kMaxSplit + 1> n{};
        const auto kernel = batch_gemm_kernel<GemvEpilogue::kNone, 8>;
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemBytes<8>));
        for (int s = 2; s <= kMaxSplit; ++s) {
            cudaLaunchAttribute cluster{};
            cluster.id = cudaLaunchAttributeClusterDimension;
            cluster.val.clusterDim = {(unsigned)s, 1, 1};
            cudaLaunchConfig_t config{};
            config.gridDim = dim3((unsigned)s);
            config.blockDim = dim3(kBlockThreads);
            config.dynamicSmemBytes = kSmemBytes<8>;
            config.attrs = &cluster;
            config.numAttrs = 1;
            const cudaError_t err = cudaOccupancyMaxActiveClusters(&n[s], kernel, &config);
            if (err == cudaErrorInvalidClusterSize) {  // a size this GPU cannot cluster: not taken
                (void)cudaGetLastError();
                n[s] = 0;
            } else {
                CUDA_CHECK(err);
            }
        }
        return n;
    }();
    return counts.at(split);
}

template <GemvEpilogue E, int NT>
void launch_batch(const BatchArgs& a, int64_t items, int64_t pair, Launch at) {
    const auto kernel = batch_gemm_kernel<E, NT>;
    constexpr size_t smem = kSmemBytes<NT>;
    static const bool raised = [&] {  // once a process (one device each) and instance
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        return true;
    }();
    (void)raised;
    // Tiles of 128 rows (kNone: N / 128; with an epilogue items / 64: the same count); the steps
    // split over a cluster of the most blocks (up to 8) for which every cluster is resident at
    // once (one wave, within two blocks an SM: what 64 tokens' stages allow) and the blocks keep
    // kMinStepsPerBlock steps on average. The same for every instance, so that the split depends
    // on the tiles, K and the GPU only.
    const int64_t tiles = ((items + kTileItems<E> - 1) / kTileItems<E> + kBlockWarps - 1) / kBlockWarps;
    const int64_t steps = (a.K + kStep - 1) / kStep;
    int split = 1;
    for (int s = kMaxSplit; s > 1; --s) {
        if (steps >= s * kMinStepsPerBlock && tiles <= resident_clusters(s)) {
            split = s;
            break;
        }
    }
    // The weights stream through L2 once: evict-first (docs/PERF.md), as the decode GEMVs'.
    const Streamed weights{a.w, (size_t)a.N * (size_t)a.K * sizeof(bf16)};
    launch_streamed(kernel, (unsigned)(tiles * split), split > 1 ? split : 0, kBlockThreads, smem, at, weights, a, items, pair, split,
                    at.config->gemv_early);
    TPX_LAUNCH_CHECK();
}

template <GemvEpilogue E>
void launch_for_tokens(const BatchArgs& a, int64_t items, int64_t pair, Launch at) {
    if (a.T <= 16) launch_batch<E, 2>(a, items, pair, at);
    else if (a.T <= 32) launch_batch<E, 4>(a, items, pair, at);
    else launch_batch<E, 8>(a, items, pair, at);
}

}  // namespace

bool batch_gemm_applies(int64_t tokens, int64_t K, const bf16* w) {
    return tokens > kGemvMaxTokens && tokens <= kBatchGemmMaxTokens && K % 8 == 0 && aligned16({w}) && kSmemBytes<8> <= optin_smem();
}

void batch_gemm(const GemvFusedArgs& f, int64_t items, int64_t pair, const GemvRopeKv& rk, const bf16* add, Launch at) {
    BatchArgs a;
    a.T = f.tokens, a.K = f.K, a.N = f.N, a.x = f.x, a.w = f.w, a.bias = f.bias, a.add = add, a.y = f.y, a.rope = rk;
    TPX_CHECK(batch_gemm_applies(f.tokens, f.K, f.w) && aligned16({f.x}) && (!add || f.epilogue == GemvEpilogue::kNone),
              "batch_gemm: " + std::to_string(f.tokens) + " tokens of K = " + std::to_string(f.K) + ", N = " + std::to_string(f.N) +
                  (add ? " with an added matrix and epilogue " + std::to_string((int)f.epilogue) : std::string()) +
                  ": needs " + std::to_string(kGemvMaxTokens + 1) + " to " + std::to_string(kBatchGemmMaxTokens) +
                  " tokens, K a multiple of 8, 16-byte aligned operands and an added matrix only without an epilogue");
    if (f.epilogue == GemvEpilogue::kNone) launch_for_tokens<GemvEpilogue::kNone>(a, items, pair, at);
    else if (f.epilogue == GemvEpilogue::kSwiglu) launch_for_tokens<GemvEpilogue::kSwiglu>(a, items, pair, at);
    else launch_for_tokens<GemvEpilogue::kRopeKv>(a, items, pair, at);
}

}  // namespace tpx::cuda
