// The decode GEMV of 2 to kGemvMaxTokens tokens (linear()'s route for that many rows, and
// gemv_fused with tokens > 1): y = x W^T for every token in one pass over the weights, on
// tensor cores, with the batch-1 GEMV's epilogues for every token (SwiGLU, or RoPE + the
// KV-cache write: gemv_epilogue.cuh). The norm before it stays a kernel of its own: computed by
// every block for every token it cost more than the kernel (docs/PERF.md).
// mma.sync m16n8k16, bf16 in, fp32 sums, the tokens as the mma's n. A warp takes 32 weight rows
// (kNone: two tiles of 16 items; with an epilogue, 16 items whose two rows are the two sets of
// 16) and streams them through a ring of kStages steps in shared memory, 64 columns a step:
// cp.async copies of whole 128-byte lines (a warp's copy is 4 rows x 128 bytes), chunks
// XOR-swizzled by the row so that ldmatrix reads them without bank conflicts, three steps in
// flight while one is multiplied; the step's x of every token (8 rows x 128 bytes, zeros past
// T) comes into the same slot. One to 8 warps of a block share a tile's steps (split), their
// sums added in warp order in shared memory.
#include "kernels/cuda/gemv_mma.h"

#include <algorithm>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemv_epilogue.cuh"
#include "kernels/cuda/mma.cuh"

namespace tpx::cuda {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;
constexpr int kSets = 2;                                 // row sets of 16 a warp
constexpr int64_t kStep = 64;                            // columns a step: a 128-byte line of each row
constexpr int kStages = 4;                               // ring slots a warp
constexpr int kWBytes = 16 * kSets * 128;                // a step's weights in a ring slot
constexpr int kSlot = kWBytes + (int)kGemvMaxTokens * 128;  // then its x

struct MmaArgs {
    int64_t T = 0, K = 0, N = 0;
    const bf16* x = nullptr;  // [T, K]
    const bf16* w = nullptr;
    const bf16* bias = nullptr;
    bf16* y = nullptr;
    GemvRopeKv rope;
};

// Shared memory: each warp's ring (kStages slots; slot n of warp w at (n warps + w) kSlot); the
// warps' partial sums [warp][set][4][lane] floats reuse it at the end.
inline size_t smem_bytes(int warps) { return (size_t)warps * kStages * kSlot; }

// The device's opt-in shared memory a block, less the kernels' static shared memory.
size_t smem_limit() {
    static const size_t limit = [] {
        int device = 0, optin = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
        return (size_t)optin - 1024;
    }();
    return limit;
}

template <GemvEpilogue E>
constexpr int64_t kTileItems = E == GemvEpilogue::kNone ? 32 : 16;

// The weight row of a warp tile's row r (0..31: set r / 16, its row r % 16; the last item's where
// past the end).
template <GemvEpilogue E>
__device__ inline int64_t tile_row(int64_t tile, int r, int64_t items, int64_t pair, int64_t half) {
    const int s = r >> 4, i = r & 15;
    if (E == GemvEpilogue::kNone) return min(tile * kTileItems<E> + 16 * s + i, items - 1);
    int64_t two[2];
    item_rows<E>(min(tile * kTileItems<E> + i, items - 1), pair, half, two);
    return two[s];
}

// The lane's outputs of a tile: acc[s][2h + e] is row set s at g + 8h, token 2c + e.
template <GemvEpilogue E>
__device__ inline void write_tile(const MmaArgs& a, int64_t tile, int64_t items, int64_t pair, const float (&acc)[kSets][4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int64_t t = 2 * c + e;
            if (t >= a.T) continue;
            if (E == GemvEpilogue::kNone) {
#pragma unroll
                for (int s = 0; s < kSets; ++s) {
                    const int64_t item = tile * kTileItems<E> + 16 * s + g + 8 * h;
                    const int64_t row[1] = {item};
                    if (item < items) write_item<E>(item, row, &acc[s][2 * h + e], t, a.N, pair, a.bias, a.y, a.rope);
                }
            } else {
                const int64_t item = tile * kTileItems<E> + g + 8 * h, half = a.rope.head_dim / 2;
                const int64_t two[2] = {tile_row<E>(tile, g + 8 * h, items, pair, half), tile_row<E>(tile, 16 + g + 8 * h, items, pair, half)};
                const float sums[2] = {acc[0][2 * h + e], acc[1][2 * h + e]};
                if (item < items) write_item<E>(item, two, sums, t, a.N, pair, a.bias, a.y, a.rope);
            }
        }
}

// A ring slot's step into acc: 4 slices of 16 columns, each row set's A and the tokens' B by
// ldmatrix (lane's matrix m = lane / 8, its row lane % 8; A: rows + 8 for odd m, the slice's
// second chunk for m >= 2; B, two slices a load: chunk + m).
__device__ inline void mma_step(const char* slot, float (&acc)[kSets][4]) {
    const int lane = threadIdx.x & 31, m = lane >> 3, rr = lane & 7;
#pragma unroll
    for (int j2 = 0; j2 < 2; ++j2) {  // slices 2 j2 and 2 j2 + 1
        uint32_t b[4];               // b0, b1 of slice 2 j2, then of slice 2 j2 + 1
        const int xc = 4 * j2 + m;   // x chunk (8 columns) of this lane's matrix
        ldmatrix_x4(b, slot + kWBytes + rr * 128 + ((xc ^ rr) << 4));
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
            const int j = 2 * j2 + jj;
#pragma unroll
            for (int s = 0; s < kSets; ++s) {
                const int row = 16 * s + rr + 8 * (m & 1), chunk = 2 * j + (m >> 1);
                uint32_t af[4];
                ldmatrix_x4(af, slot + row * 128 + ((chunk ^ rr) << 4));
                mma_bf16_16816(acc[s], af, b[2 * jj], b[2 * jj + 1]);
            }
        }
    }
}

// y over `items` work items (item_rows), kTileItems a warp tile; split warps a tile, the block's
// warps (up to kWarps) a whole number of tiles.
template <GemvEpilogue E>
__global__ void __launch_bounds__(kThreads) gemv_mma_kernel(MmaArgs a, int64_t items, int64_t pair, int split, bool early) {
    extern __shared__ __align__(128) char ring_base[];
    const int64_t K = a.K, T = a.T, steps = (K + kStep - 1) / kStep;
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kpart = warp % split;  // this warp's steps: kpart, kpart + split, ...
    const int64_t tile = (int64_t)blockIdx.x * (warps / split) + warp / split, half = a.rope.head_dim / 2;
    const bool valid = tile * kTileItems<E> < items;
    const int64_t mine = valid ? (steps - kpart + split - 1) / split : 0;
    // Copy i (0..7) of a step: rows 4i + lane / 8, 16-byte chunk lane % 8 of the 128-byte line.
    const int q = lane & 7;
    const bf16* src[8];
    int dst[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int r = 4 * i + (lane >> 3);
        src[i] = a.w + tile_row<E>(tile, r, items, pair, half) * K + q * 8;
        dst[i] = r * 128 + ((q ^ (r & 7)) << 4);
    }
    auto copy_w = [&](int64_t n) {  // the weights of the warp's n-th step into slot n % kStages
        if (n >= mine) return;
        const int64_t col = (kpart + n * split) * kStep;
        char* slot = ring_base + ((n % kStages) * warps + warp) * kSlot;
#pragma unroll
        for (int i = 0; i < 8; ++i) cp_async16(slot + dst[i], src[i] + col, col + q * 8 < K);
    };
    auto copy_x = [&](int64_t n) {  // its x: tokens lane / 8 and 4 + lane / 8, chunk lane % 8
        if (n >= mine) return;
        const int64_t col = (kpart + n * split) * kStep;
        char* slot = ring_base + ((n % kStages) * warps + warp) * kSlot + kWBytes;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int t = (lane >> 3) + 4 * j;
            cp_async16(slot + t * 128 + ((q ^ t) << 4), a.x + (t < T ? t : 0) * K + col + q * 8, t < T && col + q * 8 < K);
        }
    };
    // The first steps' weights before the wait for the kernel before (it writes no weights),
    // their x after it: cp.async group n holds step n's x (and, with early, group 0 the three
    // steps' weights).
    if (early) {
#pragma unroll
        for (int n = 0; n < kStages - 1; ++n) copy_w(n);
    }
    pdl_entry();
#pragma unroll
    for (int n = 0; n < kStages - 1; ++n) {
        if (!early) copy_w(n);
        copy_x(n);
        cp_async_commit();
    }
    float acc[kSets][4] = {};
    for (int64_t n = 0; n < mine; ++n) {
        copy_w(n + kStages - 1);
        copy_x(n + kStages - 1);
        cp_async_commit();
        cp_async_wait<kStages - 1>();
        __syncwarp();
        mma_step(ring_base + ((n % kStages) * warps + warp) * kSlot, acc);
        __syncwarp();
    }
    cp_async_wait_all();
    __syncthreads();  // every warp past its ring: the partial sums take its bytes
    if (split > 1) {  // the tile's warps' sums, added in kpart order by its first warp
        float* part = reinterpret_cast<float*>(ring_base);
        auto at = [&](int v, int s, int i) -> float& { return part[((v * kSets + s) * 4 + i) * 32 + lane]; };
#pragma unroll
        for (int s = 0; s < kSets; ++s)
#pragma unroll
            for (int i = 0; i < 4; ++i) at(warp, s, i) = acc[s][i];
        __syncthreads();
        if (!valid || kpart != 0) return;
#pragma unroll
        for (int s = 0; s < kSets; ++s)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                acc[s][i] = 0.0f;
                for (int v = warp; v < warp + split; ++v) acc[s][i] += at(v, s, i);
            }
    }
    if (!valid) return;
    write_tile<E>(a, tile, items, pair, acc);
}

template <GemvEpilogue E>
void launch_mma(const MmaArgs& a, int64_t items, int64_t pair, Launch at) {
    const auto kernel = gemv_mma_kernel<E>;
    static const bool raised = [&] {  // once a process: one device each
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes(kWarps)));
        return true;
    }();
    (void)raised;
    // One wave: blocks of tpb tiles, tpb = tiles / SMs rounded up (8, and more waves, past 8),
    // and as many warps a tile (split, a power of two) as 8 warps a block allow, so that each SM
    // holds one block (its ring takes more than half the SM's shared memory) and a tile's steps
    // are spread over as many warps as fit. Both depend on the tile count only, so that a row's
    // sums are added in the same order whatever the epilogue (the fused and unfused paths agree
    // bit for bit).
    const int64_t tiles = (items + kTileItems<E> - 1) / kTileItems<E>;
    const int tpb = (int)std::min<int64_t>(kWarps, (tiles + sm_count() - 1) / sm_count());
    int split = 1;
    while (tpb * split * 2 <= kWarps) split *= 2;
    const int warps = tpb * split;
    launch(kernel, (unsigned)((tiles + tpb - 1) / tpb), (unsigned)(warps * 32), smem_bytes(warps), at, a, items, pair, split,
           at.config->gemv_early);
    TPX_LAUNCH_CHECK();
}

}  // namespace

bool gemv_mma_applies(int64_t tokens, int64_t K, const bf16* w) {
    return tokens >= 2 && tokens <= kGemvMaxTokens && K % 8 == 0 && aligned16({w}) && smem_bytes(kWarps) <= smem_limit();
}

void gemv_mma(const GemvFusedArgs& f, int64_t items, int64_t pair, const GemvRopeKv& rk, Launch at) {
    TPX_CHECK(!f.norm && gemv_mma_applies(f.tokens, f.K, f.w) && aligned16({f.x}),
              "gemv_fused: " + std::to_string(f.tokens) + " tokens need K a multiple of 8, operands 16-byte aligned and no norm");
    MmaArgs a;
    a.T = f.tokens, a.K = f.K, a.N = f.N, a.x = f.x, a.w = f.w, a.bias = f.bias, a.y = f.y, a.rope = rk;
    if (f.epilogue == GemvEpilogue::kNone) launch_mma<GemvEpilogue::kNone>(a, items, pair, at);
    else if (f.epilogue == GemvEpilogue::kSwiglu) launch_mma<GemvEpilogue::kSwiglu>(a, items, pair, at);
    else launch_mma<GemvEpilogue::kRopeKv>(a, items, pair, at);
}

}  // namespace tpx::cuda
