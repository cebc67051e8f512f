// Decode attention in one pass on tensor cores ([backend.tuning] attention_mma): the blocks of
// attention_one_pass.cu (a block for Gb query heads of a KV head at one token, the keys in chunks
// dealt round its warps), but a warp's chunk is 16 keys multiplied with mma.sync: the scores
// S^T = K Q^T (16 keys x 8 heads, Gb of them real) and O^T += V^T P^T (head_dim x 8 heads), bf16
// operands and fp32 sums, P rounded to bf16 for its product as flash attention rounds it. A
// chunk's K rows and then its V rows are each a unit of the warp's ring in shared memory (cp.async;
// rows in 16-byte pieces swizzled by the row, so that ldmatrix reads them without bank conflicts).
// Its instructions a key are a small part of the CUDA-core kernel's (dot products across lanes,
// an exp2 on every lane of a group; docs/PERF.md).
#include <cmath>

#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/attention_one_pass.h"
#include "kernels/cuda/mma.cuh"

namespace tpx::cuda {
namespace {

constexpr int kKeys = 16;  // keys a chunk

template <int HD>
struct MmaLayout {
    static constexpr int kPieces = HD / 8;                  // 16-byte pieces a row
    static constexpr int kUnitBytes = kKeys * HD * 2;       // a chunk's K (or V) rows
    static constexpr int kUnits = kWarpRingBytes / kUnitBytes;  // units in flight a warp
    static constexpr int kCopies = kKeys * kPieces / 32;    // pieces a lane copies a unit
    static_assert(kUnits >= 2 && kCopies >= 1, "head_dim 64 or 128");
};

// The byte offset of row r's piece c in a unit: pieces XOR-swizzled by r % 8.
template <int HD>
__device__ __forceinline__ int piece_at(int r, int c) {
    return r * HD * 2 + ((c ^ (r & 7)) << 4);
}

__device__ __forceinline__ uint32_t transpose8x8(uint32_t x) {
    uint32_t y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
}

// A warp's running state for the lane's heads 2 (lane % 4) and 2 (lane % 4) + 1: max (log2
// units), the exp-sum of the lane's keys, and O^T's fragments (dims 16 i + lane / 4 in o[i][0..1],
// + 8 in o[i][2..3]).
template <int HD>
struct MmaRunning {
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[HD / 16][4] = {};
    uint32_t p[2] = {0, 0};  // the last chunk's P^T, the B fragment of its V product
};

// The scores of the chunk whose K rows are in `unit` (keys key0 ..), the heads' rescale, and P.
template <int HD>
__device__ __forceinline__ void chunk_scores(const char* unit, const uint32_t (&qb)[HD / 16][2], int64_t key0, int64_t n, float scale,
                                             MmaRunning<HD>& r) {
    const int lane = threadIdx.x & 31, row = (lane & 7) + ((lane >> 3) & 1) * 8, half = lane >> 4;
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // keys lane / 4 (s[0..1]) and + 8 (s[2..3])
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) {
        uint32_t a[4];
        ldmatrix_x4(a, unit + piece_at<HD>(row, 2 * ks + half));
        mma_bf16_16816(s, a, qb[ks][0], qb[ks][1]);
    }
    const int64_t lo = key0 + lane / 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) s[j] = (j < 2 ? lo : lo + 8) < n ? s[j] * scale : -INFINITY;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float cm = fmaxf(s[h], s[h + 2]);
#pragma unroll
        for (int x = 4; x < 32; x <<= 1) cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, x));
        const float mn = fmaxf(r.m[h], cm);  // finite: the chunk's first key is visible
        const float corr = exp2f(r.m[h] - mn);
        r.m[h] = mn;
        s[h] = exp2f(s[h] - mn), s[h + 2] = exp2f(s[h + 2] - mn);  // 0 past n
        r.l[h] = r.l[h] * corr + s[h] + s[h + 2];
#pragma unroll
        for (int i = 0; i < HD / 16; ++i) r.o[i][h] *= corr, r.o[i][h + 2] *= corr;
    }
    r.p[0] = transpose8x8(pack_bf16(s[0], s[1]));
    r.p[1] = transpose8x8(pack_bf16(s[2], s[3]));
}

// O^T += V^T P^T for the chunk whose V rows are in `unit` (zeros past n).
template <int HD>
__device__ __forceinline__ void chunk_values(const char* unit, MmaRunning<HD>& r) {
    const int lane = threadIdx.x & 31, row = (lane & 7) + (lane >> 4) * 8, odd = (lane >> 3) & 1;
#pragma unroll
    for (int i = 0; i < HD / 16; ++i) {
        uint32_t a[4];
        ldmatrix_x4_trans(a, unit + piece_at<HD>(row, 2 * i + odd));
        mma_bf16_16816(r.o[i], a, r.p[0], r.p[1]);
    }
}

// The warp's results into the parts combine_parts reads (the ring's place: every warp past it).
template <int HD, int Gb, int W>
__device__ __forceinline__ void store_parts(MmaRunning<HD>& r, char* ring) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int x = 4; x < 32; x <<= 1) r.l[h] += __shfl_xor_sync(0xffffffffu, r.l[h], x);
    __syncthreads();
    float* part_acc = reinterpret_cast<float*>(ring);  // [W][Gb][HD]
    float* part_ml = part_acc + W * Gb * HD;            // [W][Gb][2]
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int g = 2 * (lane % 4) + h;
        if (g >= Gb) continue;
        float* acc = part_acc + (warp * Gb + g) * HD + lane / 4;
#pragma unroll
        for (int i = 0; i < HD / 16; ++i) acc[16 * i] = r.o[i][h], acc[16 * i + 8] = r.o[i][h + 2];
        if (lane < 4) part_ml[(warp * Gb + g) * 2] = r.m[h], part_ml[(warp * Gb + g) * 2 + 1] = r.l[h];
    }
    __syncthreads();
}

// The block's q rows (rotated with kRope, as attention_one_pass.cu rotates them) into qs, and a
// warp's B fragments of them: dims 16 ks + 2 (lane % 4) (+ 1) of head lane / 4 in qb[ks][0], + 8
// in qb[ks][1]; zeros for heads past Gb.
template <int HD, int Gb, bool kRope>
__device__ __forceinline__ void q_fragments(const uint4 (&raw)[2], const float (&co)[8], const float (&sn)[8], bf16* qs,
                                            uint32_t (&qb)[HD / 16][2]) {
    constexpr int P = HD / 8;
    if (threadIdx.x < Gb * P) {
        uint4 v = raw[0];
        if constexpr (kRope) v = rotate8<HD>(raw, threadIdx.x % P, co, sn);
        *reinterpret_cast<uint4*>(qs + threadIdx.x * 8) = v;
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, g = lane / 4;
    const bf16* row = qs + (g < Gb ? g : 0) * HD + 2 * (lane % 4);  // every lane reads inside qs
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) {
        qb[ks][0] = g < Gb ? *reinterpret_cast<const uint32_t*>(row + 16 * ks) : 0u;
        qb[ks][1] = g < Gb ? *reinterpret_cast<const uint32_t*>(row + 16 * ks + 8) : 0u;
    }
}

// As attention_one_pass_kernel (the same arguments, the same own-row rules), on tensor cores.
template <int HD, int Gb, int W, bool kRope>
__global__ void __launch_bounds__(W * 32, 16 / W)
    attention_mma_kernel(cpu::AttentionShape s, int64_t t0, const int32_t* slot, const int32_t* pos, const bf16* q, bf16* k_cache,
                         bf16* v_cache, bf16* out, bool early, OnePassRope rp) {
    using Layout = MmaLayout<HD>;
    static_assert(W * 32 >= HD / 2, "a thread a RoPE frequency");
    static_assert(Gb <= 8, "a query head a column of the m16n8 products");
    static_assert((Gb * HD + Gb * 2) * (int)sizeof(float) <= kWarpRingBytes, "a warp's results fit in its part of the ring");
    extern __shared__ __align__(16) char ring[];  // W x kWarpRingBytes; at the end the warps' results
    __shared__ __align__(16) bf16 qs[Gb * HD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t kv_width = s.kv_heads * HD;
    if (!early) pdl_entry();  // with early, cached rows may be read before it (below)
    const DecodeToken<HD, Gb> tok(s, t0, slot, pos);
    const int64_t t = tok.t, h0 = tok.h0, kvh = tok.kvh, n = tok.n;
    bf16* kbase = k_cache + tok.row0;
    bf16* vbase = v_cache + tok.row0;
    const int64_t chunks = (n + kKeys - 1) / kKeys;
    const int units = chunks > warp ? 2 * (int)((chunks - warp + W - 1) / W) : 0;  // the warp's chunks' K and V units
    auto slot_of = [&](int u) { return ring + warp * kWarpRingBytes + (u % Layout::kUnits) * Layout::kUnitBytes; };
    const bool skip_own = early || kRope;  // the own row put in from registers (kRope: made here)
    // The warp's unit u (chunk u / 2's K rows, or V rows) into its slot, a lane piece pc of rows
    // r0, r0 + kRowStep, ...; with skip_own, not the token's own row.
    constexpr int kRowStep = 32 / Layout::kPieces;
    const int pc = lane % Layout::kPieces, r0 = lane / Layout::kPieces;
    auto copy = [&](int u) {
        if (u >= units) return;
        const int64_t key0 = (warp + (int64_t)(u / 2) * W) * kKeys + r0;
        const bf16* from = (u % 2 ? vbase : kbase) + pc * 8;
        char* to = slot_of(u);
#pragma unroll
        for (int j = 0; j < Layout::kCopies; ++j) {
            const int64_t key = key0 + j * kRowStep;
            if (skip_own && key == n - 1) continue;
            cp_async16(to + piece_at<HD>(r0 + j * kRowStep, pc), from + min(key, n - 1) * kv_width, key < n);
        }
    };
    // The SM's memory pipe serves its requests about in order, so a small read queued behind the
    // ring's copies waits for them. early: the ring's first units go out before the wait, read
    // while the kernel before ends, where that kernel lets this one start early (the RoPE kernel,
    // a GEMV); with kRope the kernel before is the QKV product, which lets nothing start before
    // its end, so the small reads go first.
    const float freq = kRope ? rope_freq<HD>(rp.inv_freq) : 0.0f;
    const int ahead = early && !kRope ? Layout::kUnits : 0;
    int issued = 0;
    for (; issued < ahead; ++issued) {
        copy(issued);
        cp_async_commit();
    }
    if (early) pdl_entry();
    // The own row: key n - 1, row own_r of the owning warp's units own_u (K) and own_u + 1 (V),
    // its pieces held by lanes 0 .. kPieces - 1.
    const int64_t own_c = (n - 1) / kKeys;
    const int own_u = 2 * (int)(own_c / W), own_r = (int)((n - 1) % kKeys);
    const bool holds_own = skip_own && own_c % W == warp && lane < Layout::kPieces;
    bf16 *own_k = kbase + (n - 1) * kv_width + lane * 8, *own_v = vbase + (n - 1) * kv_width + lane * 8;
    // Every read of the kernel before's output first, then the stores (which might alias them).
    uint4 q_raw[2] = {};
    if (threadIdx.x < Gb * Layout::kPieces) {
        const bf16* q_row = q + t * rp.q_stride + (h0 + threadIdx.x / Layout::kPieces) * HD;
        if constexpr (kRope) load_pair<HD>(q_row, threadIdx.x % Layout::kPieces, q_raw);
        else q_raw[0] = *reinterpret_cast<const uint4*>(q_row + (threadIdx.x % Layout::kPieces) * 8);
    }
    OwnRowRaw own_raw;
    if (holds_own) load_own_row<HD, kRope>(own_raw, own_k, own_v, rp.k + t * rp.k_stride + kvh * HD, rp.v + t * rp.v_stride + kvh * HD, lane);
    for (; issued < Layout::kUnits; ++issued) {
        copy(issued);
        cp_async_commit();
    }
    float co[8], sn[8];  // kRope: the angles of this thread's 8 dims (threadIdx.x % kPieces)
    if constexpr (kRope) rope_angles<HD>(tok.p, freq, threadIdx.x % Layout::kPieces, co, sn);
    OwnRow own;
    if (holds_own) make_own_row<HD, kRope>(own, own_raw, own_k, own_v, lane, tok.writer(s), co, sn);
    auto put_own = [&](int u) {  // after unit u's copies: the own row's pieces of it, if it is one of the own units
        if (!holds_own || (u != own_u && u != own_u + 1)) return;
        *reinterpret_cast<uint4*>(slot_of(u) + piece_at<HD>(own_r, lane)) = u == own_u ? own.k : own.v;
    };
    for (int u = 0; u < Layout::kUnits; ++u) put_own(u);
    uint32_t qb[HD / 16][2];
    q_fragments<HD, Gb, kRope>(q_raw, co, sn, qs, qb);
    const float scale = rsqrtf((float)HD) * 1.4426950408889634f;  // log2(e) / sqrt(HD)
    MmaRunning<HD> run;
    for (int u = 0; u < units; ++u) {
        cp_async_wait<Layout::kUnits - 1>();
        __syncwarp();  // every lane's copies (and own-row stores) of the unit before anyone's ldmatrix
        if (u % 2 == 0) chunk_scores<HD>(slot_of(u), qb, (warp + (int64_t)(u / 2) * W) * kKeys, n, scale, run);
        else chunk_values<HD>(slot_of(u), run);
        __syncwarp();  // the slot's reads before the copies into it
        copy(u + Layout::kUnits);
        put_own(u + Layout::kUnits);
        cp_async_commit();
    }
    cp_async_wait_all();
    store_parts<HD, Gb, W>(run, ring);
    combine_parts<HD, Gb, W>(reinterpret_cast<const float*>(ring), reinterpret_cast<const float*>(ring) + W * Gb * HD,
                             out + (t * s.heads + h0) * HD);
}

template <int HD, int Gb, int W, bool kRope>
void launch_mma(const AttentionArgs& a, int64_t t0, int64_t t1, bool early, const Launch& at) {
    const auto kernel = attention_mma_kernel<HD, Gb, W, kRope>;
    static const bool raised = [&] {  // once a process (and instance): one device each
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ring_bytes<W>()));
        return true;
    }();
    (void)raised;
    launch(kernel, dim3((unsigned)(t1 - t0), (unsigned)(a.shape.heads / Gb)), W * 32, ring_bytes<W>(), at, a.shape, t0, a.slot, a.pos,
           a.q, a.k_cache, a.v_cache, a.out, early, one_pass_rope(a, kRope));
    TPX_LAUNCH_CHECK();
}

template <int HD, bool kRope>
void launch_mma_grid(const OnePassGrid& grid, const AttentionArgs& a, int64_t t0, int64_t t1, bool early, const Launch& at) {
    const int64_t Gb = grid.heads_a_block;
    if (grid.four_warps) {
        if (Gb == 4) launch_mma<HD, 4, 4, kRope>(a, t0, t1, early, at);
        else if (Gb == 2) launch_mma<HD, 2, 4, kRope>(a, t0, t1, early, at);
        else launch_mma<HD, 1, 4, kRope>(a, t0, t1, early, at);
    } else {
        if (Gb == 4) launch_mma<HD, 4, 8, kRope>(a, t0, t1, early, at);
        else if (Gb == 2) launch_mma<HD, 2, 8, kRope>(a, t0, t1, early, at);
        else launch_mma<HD, 1, 8, kRope>(a, t0, t1, early, at);
    }
}

}  // namespace

void launch_attention_mma(const OnePassGrid& grid, const AttentionArgs& a, int64_t t0, int64_t t1, bool early, const Launch& at) {
    const int64_t hd = a.shape.head_dim;
    TPX_CHECK(hd == 64 || hd == 128, "launch_attention_mma: head_dim " + std::to_string(hd) + " (64 or 128)");
    if (a.rope.inv_freq && hd == 64) launch_mma_grid<64, true>(grid, a, t0, t1, early, at);
    else if (a.rope.inv_freq) launch_mma_grid<128, true>(grid, a, t0, t1, early, at);
    else if (hd == 64) launch_mma_grid<64, false>(grid, a, t0, t1, early, at);
    else launch_mma_grid<128, false>(grid, a, t0, t1, early, at);
}

}  // namespace tpx::cuda
