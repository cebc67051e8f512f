// The weight stream of the tensor-core GEMVs of a few tokens (gemv_mma.cu for bf16 weights,
// quant_gemv_ring.cu for FP8) and of the batch GEMM (batch_gemm.cu): warp tiles of 32 rows
// through a ring of whole 128-byte lines in shared memory, the grid's shape, the split sums and
// the epilogue.
#pragma once

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemv_epilogue.cuh"
#include "kernels/cuda/mma.cuh"

namespace tpx::cuda::ring {

constexpr int kThreads = 256, kWarps = kThreads / 32;
constexpr int kSets = 2;                       // row sets of 16 a warp tile
constexpr int kLine = 128;                     // bytes of each row a step
constexpr int kWBytes = 16 * kSets * kLine;    // a step's weights in a ring slot
constexpr int kStages = 4;                     // ring slots a warp: three steps in flight while one is multiplied
constexpr int64_t kStep = kLine / 2;           // bf16 columns a step

template <GemvEpilogue E>
constexpr int64_t kTileItems = E == GemvEpilogue::kNone ? 32 : 16;

// The weight row of a warp tile's row r (0..31: set r / 16, its row r % 16; the last item's
// where past the end).
template <GemvEpilogue E>
__device__ inline int64_t tile_row(int64_t tile, int r, int64_t items, int64_t pair, int64_t half) {
    const int s = r >> 4, i = r & 15;
    if (E == GemvEpilogue::kNone) return min(tile * kTileItems<E> + 16 * s + i, items - 1);
    int64_t two[2];
    item_rows<E>(min(tile * kTileItems<E> + i, items - 1), pair, half, two);
    return two[s];
}

// A warp takes a tile of 32 weight rows (two sets of 16: kNone two tiles of 16 items, with an
// epilogue 16 items whose two rows are the sets) and streams it in steps of one 128-byte line of
// each row through a ring of kStages slots in shared memory, by cp.async of whole lines (loads
// of part lines stream slower: docs/PERF.md), chunks XOR-swizzled by the row so that ldmatrix
// reads them without bank conflicts. The lane's share of a step: copy i (0..7) is row
// 4i + lane / 8, 16-byte chunk lane % 8 of its line, stored at chunk (lane % 8) ^ (row % 8) of
// the row's 128 bytes in the slot.
static_assert(16 * kSets == 8 * 4 && kLine == 8 * 16, "8 copies a lane of 4 rows x 8 chunks cover the tile's 32 lines");
struct LineCopies {
    const char* src[8];
    int dst[8];
    int q;
    template <GemvEpilogue E>
    __device__ void init(const void* w, int64_t row_bytes, int64_t tile, int64_t items, int64_t pair, int64_t half) {
        q = threadIdx.x & 7;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int r = 4 * i + ((threadIdx.x & 31) >> 3);
            src[i] = static_cast<const char*>(w) + tile_row<E>(tile, r, items, pair, half) * row_bytes + q * 16;
            dst[i] = r * kLine + ((q ^ (r & 7)) << 4);
        }
    }
    // Step `step` (bytes [step * 128, + 128) of each row, zeros past row_bytes) into `slot`.
    __device__ void copy(char* slot, int64_t step, int64_t row_bytes) const {
        const int64_t at = step * kLine;
#pragma unroll
        for (int i = 0; i < 8; ++i) cp_async16(slot + dst[i], src[i] + at, at + q * 16 < row_bytes);
    }
};

// The ring's first kStages - 1 steps in flight: their weights (copy_w(n)) with `early` before
// the wait for the kernel before (which writes no weights: see gemv.cuh's FirstLoads), their x
// (copy_x(n)) after it; cp.async group n holds step n's x (and, with early, group 0 those
// steps' weights).
template <typename CopyW, typename CopyX>
__device__ __forceinline__ void start_ring(bool early, const CopyW& copy_w, const CopyX& copy_x) {
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
}

// The byte offset of row `row`'s 16-byte chunk `chunk` in a slot (the copies' swizzle).
__device__ inline int line_chunk(int row, int chunk) { return row * kLine + ((chunk ^ (row & 7)) << 4); }

// A step of a warp's 32 weight rows (w: a slot's lines, swizzled) by 8 NT tokens' x (x: their
// lines, swizzled the same way, token r at row r) into acc[nt][set]: 4 slices of 16 columns, each
// row set's A and each n-tile's B by ldmatrix (lane's matrix m = lane / 8, its row lane % 8; A:
// rows + 8 for odd m, the slice's second chunk for m >= 2; B, two slices a load: chunk + m).
template <int NT>
__device__ inline void multiply_step(const char* w, const char* x, float (&acc)[NT][kSets][4]) {
    const int lane = threadIdx.x & 31, m = lane >> 3, rr = lane & 7;
#pragma unroll
    for (int j2 = 0; j2 < 2; ++j2) {  // slices 2 j2 and 2 j2 + 1
        uint32_t b[NT][4];            // per n-tile: b0, b1 of slice 2 j2, then of slice 2 j2 + 1
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) ldmatrix_x4(b[nt], x + line_chunk(8 * nt + rr, 4 * j2 + m));
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
            const int j = 2 * j2 + jj;
#pragma unroll
            for (int s = 0; s < kSets; ++s) {
                uint32_t af[4];
                ldmatrix_x4(af, w + line_chunk(16 * s + rr + 8 * (m & 1), 2 * j + (m >> 1)));
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mma_bf16_16816(acc[nt][s], af, b[nt][2 * jj], b[nt][2 * jj + 1]);
            }
        }
    }
}

// The block shape: blocks of tpb tiles, tpb = tiles / SMs rounded up (8, and more waves, past 8),
// and as many warps a tile (split, a power of two) as 8 warps a block allow, so that up to 8
// tiles an SM the grid is one wave of at most one block an SM and a tile's steps are spread over
// as many warps as fit. With two_an_sm (the caller's blocks of `split` warps fit twice on an
// SM), more tiles than SMs and at most twice as many take one tile a block instead (tpb 2 would
// leave SMs idle): every SM streams, up to two blocks on one. Either way the split depends on the
// tile count only, so that a row's sums are added in the same order whatever the epilogue (fused
// and unfused paths agree bit for bit).
struct Grid {
    unsigned blocks;
    int warps, split;
};
inline Grid grid_for(int64_t tiles, bool two_an_sm = false) {
    const int tpb = (int)std::min<int64_t>(kWarps, (tiles + sm_count() - 1) / sm_count());
    int split = 1;
    while (tpb * split * 2 <= kWarps) split *= 2;
    if (tpb == 2 && two_an_sm) return {(unsigned)tiles, split, split};
    return {(unsigned)((tiles + tpb - 1) / tpb), tpb * split, split};
}

// The tile's warps' sums (split > 1) added in kpart order into the first warp's acc, through
// `part` (the block's rings, every warp past its own: a barrier first). False where this warp
// has nothing to write (not its tile's first warp, or no tile). Every thread must call it.
__device__ inline bool add_split_sums(float* part, float (&acc)[kSets][4], int split, bool valid) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (split == 1) return valid;
    auto at = [&](int v, int s, int i) -> float& { return part[((v * kSets + s) * 4 + i) * 32 + lane]; };
#pragma unroll
    for (int s = 0; s < kSets; ++s)
#pragma unroll
        for (int i = 0; i < 4; ++i) at(warp, s, i) = acc[s][i];
    __syncthreads();
    if (!valid || warp % split != 0) return false;
#pragma unroll
    for (int s = 0; s < kSets; ++s)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            acc[s][i] = 0.0f;
            for (int v = warp; v < warp + split; ++v) acc[s][i] += at(v, s, i);
        }
    return true;
}

// What write_tile applies besides the sums: a scale per token (nullptr: 1), the token of the
// tile's first mma column, and for kNone a matrix added to the outputs (nullptr: none).
struct TileExtras {
    const float* xscale = nullptr;
    int64_t t0 = 0;
    const bf16* add = nullptr;
};

// The lane's outputs of a tile: acc[s][2h + e] is row set s at g + 8h, token t0 + 2c + e, times
// xscale[t], plus add[t, row] for kNone; token t's outputs by write_item (y n wide for kNone).
template <GemvEpilogue E>
__device__ inline void write_tile(int64_t T, int64_t n, const bf16* bias, bf16* y, const GemvRopeKv& rope, int64_t tile, int64_t items,
                                  int64_t pair, const float (&acc)[kSets][4], const TileExtras& ex = TileExtras{}) {
    const float* xscale = ex.xscale;
    const bf16* add = ex.add;
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int64_t t = ex.t0 + 2 * c + e;
            if (t >= T) continue;
            const float k = xscale ? xscale[t] : 1.0f;
            if (E == GemvEpilogue::kNone) {
#pragma unroll
                for (int s = 0; s < kSets; ++s) {
                    const int64_t item = tile * kTileItems<E> + 16 * s + g + 8 * h;
                    const int64_t row[1] = {item};
                    float sum[1] = {acc[s][2 * h + e] * k};
                    if (add && item < items) sum[0] += __bfloat162float(add[t * n + item]);
                    if (item < items) write_item<E>(item, row, sum, t, n, pair, bias, y, rope);
                }
            } else {
                const int64_t item = tile * kTileItems<E> + g + 8 * h, half = rope.head_dim / 2;
                const int64_t two[2] = {tile_row<E>(tile, g + 8 * h, items, pair, half), tile_row<E>(tile, 16 + g + 8 * h, items, pair, half)};
                const float sums[2] = {acc[0][2 * h + e] * k, acc[1][2 * h + e] * k};
                if (item < items) write_item<E>(item, two, sums, t, n, pair, bias, y, rope);
            }
        }
}

}  // namespace tpx::cuda::ring
