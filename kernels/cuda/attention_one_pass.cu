// Decode attention in one pass ([backend.tuning] attention_one_pass): a block for Gb query heads
// of a KV head at one token; each warp streams its chunks of K and V rows through its own ring in
// shared memory (a lane reads only what it copied: no barrier) and keeps each head's running max,
// exp-sum and weighted V sum, rescaled once a chunk; the warps' results are combined at the end.
// It may also do the step's RoPE and KV-cache write (AttentionRope).
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/attention_one_pass.h"
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kChunkBytes = 4096;  // a chunk: K rows, then V rows, of kChunkKeys keys
constexpr int kStages = 3;         // chunks in flight a warp
static_assert(kStages * kChunkBytes == kWarpRingBytes, "the warp's ring");
// A block's warps W: 8 (two blocks an SM), or 4 (four an SM) where the grid has more blocks than
// two an SM, so that a grid of up to four an SM runs in one wave.
constexpr int kMaxGb = 4, kMaxHeadDim = 256;

// Lane (sub, part) holds dims [8 part, 8 part + 8) of key sub of each round of kKeys keys; a chunk
// is kRounds rounds. Its piece u * 32 + lane (16 bytes) of a chunk's K rows is round u's key row
// at those dims, and so of V's: the lane's copies are its reads.
template <int HD>
struct ChunkLanes {
    static constexpr int kLanes = HD / 8, kKeys = 32 / kLanes, kChunkKeys = kChunkBytes / (4 * HD), kRounds = kChunkKeys / kKeys;
    static_assert(kRounds == 4 && kKeys * kLanes == 32, "a chunk is 4 rounds of a warp's keys");
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = (threadIdx.x & 31) / kLanes, part = (threadIdx.x & 31) % kLanes;
};

// The key (index among the token's visible keys) of chunk c's round u for this lane.
template <int HD>
__device__ __forceinline__ int64_t chunk_key(const ChunkLanes<HD>& L, int64_t c, int u) {
    return c * ChunkLanes<HD>::kChunkKeys + L.sub + ChunkLanes<HD>::kKeys * u;
}

// Each head's running max (log2 units), exp-sum and weighted V sum over the warp's keys so far
// (a lane: its round's keys at its 8 dims).
template <int Gb>
struct Running {
    float m[Gb], l[Gb], acc[Gb][8];
    __device__ Running() {
#pragma unroll
        for (int g = 0; g < Gb; ++g) {
            m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
        }
    }
};

// Chunk c (in the slot at `from`) into r: its scores, one rescale a head, the weighted V rows.
template <int HD, int Gb>
__device__ __forceinline__ void add_chunk(const ChunkLanes<HD>& L, const char* from, int64_t c, int64_t n, const float (&qf)[Gb][8],
                                          Running<Gb>& r) {
    using Lanes = ChunkLanes<HD>;
    float sc[Gb][Lanes::kRounds];
#pragma unroll
    for (int u = 0; u < Lanes::kRounds; ++u) {
        float kf[8];
        unpack8(*reinterpret_cast<const uint4*>(from + (u * 32 + L.lane) * 16), kf);
        const bool in = chunk_key(L, c, u) < n;
#pragma unroll
        for (int g = 0; g < Gb; ++g) {
            const float d = lane_group_dot8<Lanes::kLanes>(qf[g], kf);
            sc[g][u] = in ? d : -INFINITY;
        }
    }
#pragma unroll
    for (int g = 0; g < Gb; ++g) {
        float cm = sc[g][0];
#pragma unroll
        for (int u = 1; u < Lanes::kRounds; ++u) cm = fmaxf(cm, sc[g][u]);
#pragma unroll
        for (int o = 16; o >= Lanes::kLanes; o >>= 1) cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, o));
        const float mn = fmaxf(r.m[g], cm);  // finite: the chunk's first key is visible
        const float corr = exp2f(r.m[g] - mn);
        r.m[g] = mn, r.l[g] *= corr;
#pragma unroll
        for (int e = 0; e < 8; ++e) r.acc[g][e] *= corr;
#pragma unroll
        for (int u = 0; u < Lanes::kRounds; ++u) {
            sc[g][u] = exp2f(sc[g][u] - mn);  // 0 past n
            r.l[g] += sc[g][u];
        }
    }
#pragma unroll
    for (int u = 0; u < Lanes::kRounds; ++u) {
        float vf[8];
        unpack8(*reinterpret_cast<const uint4*>(from + kChunkBytes / 2 + (u * 32 + L.lane) * 16), vf);  // zeros past n
#pragma unroll
        for (int g = 0; g < Gb; ++g)
#pragma unroll
            for (int e = 0; e < 8; ++e) r.acc[g][e] += sc[g][u] * vf[e];
    }
}

// The warps' results combined through `ring` (every warp past its ring) into out[g * HD + e], the
// block's Gb heads.
template <int HD, int Gb, int W>
__device__ __forceinline__ void combine_warps(const ChunkLanes<HD>& L, char* ring, Running<Gb>& r, bf16* out) {
    using Lanes = ChunkLanes<HD>;
    // The lanes of a warp's rounds' keys (sub) added: m is the warp's already.
#pragma unroll
    for (int g = 0; g < Gb; ++g)
#pragma unroll
        for (int o = 16; o >= Lanes::kLanes; o >>= 1) {
            r.l[g] += __shfl_xor_sync(0xffffffffu, r.l[g], o);
#pragma unroll
            for (int e = 0; e < 8; ++e) r.acc[g][e] += __shfl_xor_sync(0xffffffffu, r.acc[g][e], o);
        }
    __syncthreads();  // every warp past its ring: the results take its place
    float* part_acc = reinterpret_cast<float*>(ring);  // [W][Gb][HD]
    float* part_ml = part_acc + W * Gb * HD;            // [W][Gb][2]: max, exp-sum
    if (L.sub == 0)
#pragma unroll
        for (int g = 0; g < Gb; ++g)
#pragma unroll
            for (int e = 0; e < 8; ++e) part_acc[(L.warp * Gb + g) * HD + L.part * 8 + e] = r.acc[g][e];
    if (L.lane == 0)
#pragma unroll
        for (int g = 0; g < Gb; ++g) part_ml[(L.warp * Gb + g) * 2] = r.m[g], part_ml[(L.warp * Gb + g) * 2 + 1] = r.l[g];
    __syncthreads();
    combine_parts<HD, Gb, W>(part_acc, part_ml, out);
}

// The own row's pieces into its chunk's slot, where the lane holds them (round u of the chunk; -1:
// none).
template <int kRounds>
__device__ __forceinline__ void put_own(const OwnRow& o, int u, char* slot, int lane) {
    if (u < 0) return;
    *reinterpret_cast<uint4*>(slot + (u * 32 + lane) * 16) = o.k;
    *reinterpret_cast<uint4*>(slot + ((u + kRounds) * 32 + lane) * 16) = o.v;
}

// kRope: q, k and v before RoPE (OnePassRope): the block rotates its q rows and the token's own K
// row, which the KV head's first block writes into the caches with the token's V row; without, q
// is rotated and the caches hold the token's row already.
template <int HD, int Gb, int W, bool kRope>
__global__ void __launch_bounds__(W * 32, 16 / W)
    attention_one_pass_kernel(cpu::AttentionShape s, int64_t t0, const int32_t* slot, const int32_t* pos, const bf16* q, bf16* k_cache,
                              bf16* v_cache, bf16* out, bool early, OnePassRope rp) {
    using Lanes = ChunkLanes<HD>;
    static_assert(!kRope || W * 32 >= HD / 2, "a thread a RoPE frequency");
    extern __shared__ __align__(16) char ring[];  // W x kStages chunks; at the end the warps' results
    const Lanes L;
    const int64_t kv_width = s.kv_heads * HD;
    if (!early) pdl_entry();  // see common.cuh; with early, the cached rows are read before it
    const DecodeToken<HD, Gb> tok(s, t0, slot, pos);
    const int64_t t = tok.t, h0 = tok.h0, kvh = tok.kvh, p = tok.p, n = tok.n;
    bf16* kbase = k_cache + tok.row0 + L.part * 8;
    bf16* vbase = v_cache + tok.row0 + L.part * 8;
    const int64_t chunks = (n + Lanes::kChunkKeys - 1) / Lanes::kChunkKeys;
    const int mine = chunks > L.warp ? (int)((chunks - L.warp + W - 1) / W) : 0;
    auto slot_of = [&](int i) { return ring + ((int64_t)L.warp * kStages + i % kStages) * kChunkBytes; };
    // The warp's i-th chunk into its slot; with skip_own, not the token's own row (position p),
    // which the lanes holding it put in from registers (OwnRow).
    auto copy = [&](int i, bool skip_own) {
        if (i >= mine) return;
        const int64_t c = L.warp + (int64_t)i * W;
        char* to = slot_of(i);
#pragma unroll
        for (int r = 0; r < 2 * Lanes::kRounds; ++r) {
            const int64_t j = chunk_key(L, c, r % Lanes::kRounds);
            if (skip_own && j == n - 1) continue;
            const bf16* from = (r < Lanes::kRounds ? kbase : vbase) + min(j, n - 1) * kv_width;
            cp_async16(to + (r * 32 + L.lane) * 16, from, j < n);
        }
    };
    const bool skip_own = early || kRope;  // the own row loaded after the wait (kRope: made here)
    for (int i = 0; i < kStages; ++i) {
        copy(i, skip_own);
        cp_async_commit();
    }
    float co[8], sn[8];  // kRope: the angles of the lane's dims
    if constexpr (kRope) rope_angles<HD>(p, rope_freq<HD>(rp.inv_freq), L.part, co, sn);
    if (early) pdl_entry();
    const int64_t own_chunk = (n - 1) / Lanes::kChunkKeys;
    const int own_i = (int)(own_chunk / W);
    OwnRow own;
    int own_u = -1;  // the own row's round in its chunk where this lane holds a piece of it
#pragma unroll
    for (int u = 0; u < Lanes::kRounds; ++u)
        if (skip_own && own_chunk % W == L.warp && chunk_key(L, own_chunk, u) == n - 1) own_u = u;
    // Every read of the kernel before's output first, then the stores (which might alias them).
    uint4 q_raw[Gb][2];
#pragma unroll
    for (int g = 0; g < Gb; ++g) {
        const bf16* q_row = q + t * rp.q_stride + (h0 + g) * HD;
        if constexpr (kRope) load_pair<HD>(q_row, L.part, q_raw[g]);
        else q_raw[g][0] = *reinterpret_cast<const uint4*>(q_row + L.part * 8);
    }
    if (own_u >= 0) {
        bf16 *own_k = kbase + (n - 1) * kv_width, *own_v = vbase + (n - 1) * kv_width;
        OwnRowRaw raw;
        load_own_row<HD, kRope>(raw, own_k, own_v, rp.k + t * rp.k_stride + kvh * HD, rp.v + t * rp.v_stride + kvh * HD, L.part);
        make_own_row<HD, kRope>(own, raw, own_k, own_v, L.part, tok.writer(s), co, sn);
    }
    if (own_i < kStages) put_own<Lanes::kRounds>(own, own_u, slot_of(own_i), L.lane);
    float qf[Gb][8];
    const float scale = rsqrtf((float)HD) * 1.4426950408889634f;  // log2(e) / sqrt(HD)
#pragma unroll
    for (int g = 0; g < Gb; ++g) {
        uint4 v = q_raw[g][0];
        if constexpr (kRope) v = rotate8<HD>(q_raw[g], L.part, co, sn);  // rounded to bf16, as rope() stores it
        unpack8(v, qf[g]);
#pragma unroll
        for (int i = 0; i < 8; ++i) qf[g][i] *= scale;
    }
    Running<Gb> run;
    for (int i = 0; i < mine; ++i) {
        cp_async_wait<kStages - 1>();
        const int64_t c = L.warp + (int64_t)i * W;
        add_chunk<HD, Gb>(L, slot_of(i), c, n, qf, run);
        __syncwarp();  // the slot's reads before the copy into it (the same lanes: keeps the compiler's order)
        copy(i + kStages, skip_own);
        if (i + kStages == own_i) put_own<Lanes::kRounds>(own, own_u, slot_of(own_i), L.lane);
        cp_async_commit();
    }
    cp_async_wait_all();
    combine_warps<HD, Gb, W>(L, ring, run, out + (t * s.heads + h0) * HD);
}

static_assert((kMaxGb * kMaxHeadDim + kMaxGb * 2) * (int)sizeof(float) <= kStages * kChunkBytes,
              "a warp's results (sums, max and exp-sum a head) fit in its part of the ring");

template <int HD, int Gb, int W, bool kRope>
void launch_one_pass(const AttentionArgs& a, int64_t t0, int64_t t1, bool early, const Launch& at) {
    const auto kernel = attention_one_pass_kernel<HD, Gb, W, kRope>;
    static const bool raised = [&] {  // once a process (and instance): one device each
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ring_bytes<W>()));
        return true;
    }();
    (void)raised;
    launch(kernel, dim3((unsigned)(t1 - t0), (unsigned)(a.shape.heads / Gb)), W * 32, ring_bytes<W>(), at, a.shape, t0, a.slot, a.pos, a.q,
           a.k_cache, a.v_cache, a.out, early, one_pass_rope(a, kRope));
    TPX_LAUNCH_CHECK();
}

template <int HD, int W, bool kRope>
void launch_one_pass_of(int64_t Gb, const AttentionArgs& a, int64_t t0, int64_t t1, bool early, const Launch& at) {
    if (Gb == 4) launch_one_pass<HD, 4, W, kRope>(a, t0, t1, early, at);
    else if (Gb == 2) launch_one_pass<HD, 2, W, kRope>(a, t0, t1, early, at);
    else launch_one_pass<HD, 1, W, kRope>(a, t0, t1, early, at);
}

template <int HD, bool kRope>
void launch_one_pass_warps(int64_t Gb, bool four_warps, const AttentionArgs& a, int64_t t0, int64_t t1, bool early, const Launch& at) {
    if (four_warps) launch_one_pass_of<HD, 4, kRope>(Gb, a, t0, t1, early, at);
    else launch_one_pass_of<HD, 8, kRope>(Gb, a, t0, t1, early, at);
}

}  // namespace

bool one_pass_takes(const AttentionArgs& a, int64_t tokens, const KernelConfig& config) {
    const int64_t hd = a.shape.head_dim;
    if (!config.attention_one_pass || tokens <= 0) return false;
    return a.rope.inv_freq ? hd == 64 || hd == 128 : hd == 64 || hd == 128 || hd == 256;
}

OnePassGrid one_pass_grid(const cpu::AttentionShape& s, int64_t tokens, const KernelConfig& config) {
    // The most query heads a block (kMaxGb, 2 or 1, dividing G) that still give every SM a block;
    // one (a block a query head) with attention_gqa = false.
    const int64_t G = s.heads / s.kv_heads;
    OnePassGrid g;
    for (int64_t c : {(int64_t)kMaxGb, (int64_t)2})
        if (config.attention_gqa && G % c == 0 && tokens * (s.heads / c) >= sm_count()) {
            g.heads_a_block = c;
            break;
        }
    g.four_warps = tokens * (s.heads / g.heads_a_block) > 2 * sm_count();  // more blocks than two an SM
    return g;
}

bool try_attention_one_pass(const AttentionArgs& a, int64_t t0, int64_t t1, bool early, Launch at) {
    const int64_t hd = a.shape.head_dim, tokens = t1 - t0;
    if (!one_pass_takes(a, tokens, *at.config)) return false;
    const OnePassGrid grid = one_pass_grid(a.shape, tokens, *at.config);
    if (at.config->attention_mma && (hd == 64 || hd == 128)) {
        launch_attention_mma(grid, a, t0, t1, early, at);
        return true;
    }
    const int64_t Gb = grid.heads_a_block;
    const bool four_warps = grid.four_warps;
    if (a.rope.inv_freq && hd == 64) launch_one_pass_warps<64, true>(Gb, four_warps, a, t0, t1, early, at);
    else if (a.rope.inv_freq) launch_one_pass_warps<128, true>(Gb, four_warps, a, t0, t1, early, at);
    else if (hd == 64) launch_one_pass_warps<64, false>(Gb, four_warps, a, t0, t1, early, at);
    else if (hd == 128) launch_one_pass_warps<128, false>(Gb, four_warps, a, t0, t1, early, at);
    else launch_one_pass_warps<256, false>(Gb, four_warps, a, t0, t1, early, at);
    return true;
}

}  // namespace tpx::cuda
