// The decode GEMV of 2 to kGemvMaxTokens tokens on tensor cores (linear()'s route for that many
// rows, and gemv_fused with tokens > 1), with SwiGLU or RoPE + the KV-cache write for every token.
#include "kernels/cuda/gemv_mma.h"

#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/weight_ring.cuh"

namespace tpx::cuda {
namespace {

using namespace ring;
constexpr int kSlot = kWBytes + (int)kGemvMaxTokens * kLine;  // a step's weights, then its x
// The step's x: 8 rows (the mma's n), two copies a lane of 16 bytes (4 rows x 8 chunks a copy).
static_assert(kGemvMaxTokens == 8 && kLine == 8 * 16, "copy_x and the mma's n assume 8 tokens and 8 chunks a line");

struct MmaArgs {
    int64_t T = 0, K = 0, N = 0;
    const bf16* x = nullptr;  // [T, K]
    const bf16* w = nullptr;
    const bf16* bias = nullptr;
    bf16* y = nullptr;
    GemvRopeKv rope;
};

// Shared memory: each warp's ring (slot n of warp w at (n warps + w) kSlot); the warps'
// partial sums [warp][set][4][lane] floats reuse it at the end.
inline size_t smem_bytes(int warps) { return (size_t)warps * kStages * kSlot; }

// y = x W^T (+ bias) over `items` work items (item_rows) for every token, in one pass over the
// weights, and the epilogue (gemv_epilogue.cuh; no norm: the norm before it is a kernel of its
// own, see docs/GPU.md). mma.sync m16n8k16, bf16 in, fp32 sums, the tokens as the mma's n. The
// weights stream through weight_ring.cuh's ring, a step being 64 columns (a 128-byte line of each
// of the warp tile's 32 rows), read back by ldmatrix; the step's x of every token (8 rows x 128
// bytes, zeros past T) comes into the same slot, swizzled the same way. kTileItems<E> items a
// warp tile, split warps a tile, the block's warps a whole number of tiles.
template <GemvEpilogue E>
__global__ void __launch_bounds__(kThreads) gemv_mma_kernel(MmaArgs a, int64_t items, int64_t pair, int split, bool early) {
    extern __shared__ __align__(128) char ring_base[];
    const int64_t K = a.K, T = a.T, steps = (K + kStep - 1) / kStep;
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kpart = warp % split;  // this warp's steps: kpart, kpart + split, ...
    const int64_t tile = (int64_t)blockIdx.x * (warps / split) + warp / split, half = a.rope.head_dim / 2;
    const bool valid = tile * kTileItems<E> < items;
    const int64_t mine = valid ? (steps - kpart + split - 1) / split : 0;
    LineCopies lines;
    lines.init<E>(a.w, K * 2, tile, items, pair, half);
    auto copy_w = [&](int64_t n) {  // the weights of the warp's n-th step into slot n % kStages
        if (n < mine) lines.copy(ring_base + ((n % kStages) * warps + warp) * kSlot, kpart + n * split, K * 2);
    };
    auto copy_x = [&](int64_t n) {  // its x: tokens lane / 8 and 4 + lane / 8, chunk lane % 8
        if (n >= mine) return;
        const int64_t col = (kpart + n * split) * kStep;
        char* slot = ring_base + ((n % kStages) * warps + warp) * kSlot + kWBytes;
        const int q = lane & 7;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int t = (lane >> 3) + 4 * j;
            cp_async16(slot + line_chunk(t, q), a.x + (t < T ? t : 0) * K + col + q * 8, t < T && col + q * 8 < K);
        }
    };
    start_ring(early, copy_w, copy_x);
    float acc[1][kSets][4] = {};
    for (int64_t n = 0; n < mine; ++n) {
        copy_w(n + kStages - 1);
        copy_x(n + kStages - 1);
        cp_async_commit();
        cp_async_wait<kStages - 1>();
        __syncwarp();
        const char* slot = ring_base + ((n % kStages) * warps + warp) * kSlot;
        multiply_step<1>(slot, slot + kWBytes, acc);
        __syncwarp();
    }
    cp_async_wait_all();
    if (add_split_sums(reinterpret_cast<float*>(ring_base), acc[0], split, valid))
        write_tile<E>(a.T, a.N, a.bias, a.y, a.rope, tile, items, pair, acc[0]);
}

template <GemvEpilogue E>
void launch_mma(const MmaArgs& a, int64_t items, int64_t pair, Launch at) {
    const auto kernel = gemv_mma_kernel<E>;
    static const bool raised = [&] {  // once a process: one device each
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes(kWarps)));
        return true;
    }();
    (void)raised;
    // Whether blocks of 4 warps (grid_for's split where tiles come two a block) fit twice on an
    // SM: then grid_for gives such tiles one a block (the 8B's fused QKV, 192 tiles: docs/PERF.md).
    static const bool two_an_sm = [&] {
        int per_sm = 0;
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps / 2 * 32, smem_bytes(kWarps / 2)));
        return per_sm >= 2;
    }();
    const Grid g = grid_for((items + kTileItems<E> - 1) / kTileItems<E>, two_an_sm);
    // The weights stream through L2 once: evict-first (docs/PERF.md), so that they do not push
    // out what the kernels around them read.
    const Streamed weights{a.w, (size_t)a.N * (size_t)a.K * sizeof(bf16)};
    launch_streamed(kernel, g.blocks, 0, (unsigned)(g.warps * 32), smem_bytes(g.warps), at, weights, a, items, pair, g.split,
                    at.config->gemv_early);
    TPX_LAUNCH_CHECK();
}

}  // namespace

bool gemv_mma_applies(int64_t tokens, int64_t K, const bf16* w) {
    return tokens >= 2 && tokens <= kGemvMaxTokens && K % 8 == 0 && aligned16({w}) && smem_bytes(kWarps) <= optin_smem();
}

void gemv_mma(const GemvFusedArgs& f, int64_t items, int64_t pair, const GemvRopeKv& rk, Launch at) {
    MmaArgs a;
    a.T = f.tokens, a.K = f.K, a.N = f.N, a.x = f.x, a.w = f.w, a.bias = f.bias, a.y = f.y, a.rope = rk;
    if (f.epilogue == GemvEpilogue::kNone) launch_mma<GemvEpilogue::kNone>(a, items, pair, at);
    else if (f.epilogue == GemvEpilogue::kSwiglu) launch_mma<GemvEpilogue::kSwiglu>(a, items, pair, at);
    else launch_mma<GemvEpilogue::kRopeKv>(a, items, pair, at);
}

}  // namespace tpx::cuda
