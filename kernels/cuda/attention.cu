// Attention over the bf16 KV cache. A first kernel writes every token's K and V into its slot.
// Long prompt segments then attend through a flash kernel (head_dim 64 or 128) or cuBLAS (other
// head sizes: S = Q K^T, masked softmax, O = P V, query rows in blocks so that only visible keys
// are multiplied); every other token (decode steps,
// short chunks) through a kernel with one block per (token, query head): scores for the visible
// positions into shared memory (fp32), a block-wide softmax, the weighted sum of V. Its vector
// form (head_dim 64, 128 or 256) reads K and V rows in 16-byte pieces, several keys in flight
// per warp; other head sizes take the scalar form.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <cooperative_groups.h>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kThreads = 256;

// Each token's K and V rows into its cache slot. T = bf16, or uint4 (eight elements at a time:
// widths, strides and pointers multiples of 8 elements, counted in uint4).
template <typename T>
__global__ void kv_write_kernel(int64_t kv_width, int64_t k_stride, int64_t v_stride, int64_t max_seq, const int32_t* slot, const int32_t* pos,
                                const T* k, const T* v, T* k_cache, T* v_cache) {
    pdl_entry();  // see common.cuh
    int64_t t = blockIdx.x;
    int64_t at = ((int64_t)slot[t] * max_seq + pos[t]) * kv_width;
    for (int64_t i = threadIdx.x; i < kv_width; i += blockDim.x) {
        k_cache[at + i] = k[t * k_stride + i];
        v_cache[at + i] = v[t * v_stride + i];
    }
}

constexpr int kWarps = kThreads / 32;

// scores[j] = exp(scores[j] - max) for j < n, over the whole block; returns their sum (0 for
// n = 0) and puts the max in *max_out if given. Its barriers also make every score visible to
// every warp.
__device__ float exp_scores(float* scores, int64_t n, float* max_out = nullptr) {
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, scores[j]);
    mx = block_max(mx);
    if (max_out) *max_out = mx;
    float sum = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        float e = expf(scores[j] - mx);
        scores[j] = e;
        sum += e;
    }
    return block_sum(sum);
}
constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256

// Warps split the visible keys: each warp scores its keys (lanes split head_dim, a warp sum per
// key), and after the block-wide softmax each warp accumulates p_j * v_j over its keys in
// registers (lane l holds dims l, l + 32, ...); the warps' partial sums meet in shared memory.
__global__ void attention_kernel(cpu::AttentionShape s, int64_t t0, const int32_t* slot, const int32_t* pos, const bf16* q,
                                 const bf16* k_cache, const bf16* v_cache, bf16* out) {
    pdl_entry();  // see common.cuh
    extern __shared__ float smem[];  // q (head_dim) | partial sums (kWarps x head_dim) | scores
    int64_t t = t0 + blockIdx.x, h = blockIdx.y;
    int64_t kv_width = s.kv_heads * s.head_dim, kvh = h / (s.heads / s.kv_heads);
    int64_t p = pos[t];
    int64_t first = s.sliding_window > 0 && p - s.sliding_window + 1 > 0 ? p - s.sliding_window + 1 : 0;
    int64_t n = p - first + 1;
    float* qs = smem;
    float* partial = smem + s.head_dim;
    float* scores = partial + kWarps * s.head_dim;
    const bf16* qh = q + (t * s.heads + h) * s.head_dim;
    for (int64_t i = threadIdx.x; i < s.head_dim; i += blockDim.x) qs[i] = __bfloat162float(qh[i]);
    __syncthreads();
    const bf16* kbase = k_cache + ((int64_t)slot[t] * s.max_seq + first) * kv_width + kvh * s.head_dim;
    const bf16* vbase = v_cache + ((int64_t)slot[t] * s.max_seq + first) * kv_width + kvh * s.head_dim;
    float scale = rsqrtf((float)s.head_dim);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int64_t j = warp; j < n; j += kWarps) {
        const bf16* kj = kbase + j * kv_width;
        float d = 0;
        for (int64_t i = lane; i < s.head_dim; i += 32) d += qs[i] * __bfloat162float(kj[i]);
        d = warp_sum(d);
        if (lane == 0) scores[j] = d * scale;
    }
    __syncthreads();
    float sum = exp_scores(scores, n);
    float acc[kMaxDimsPerLane];
#pragma unroll
    for (int d = 0; d < kMaxDimsPerLane; ++d) acc[d] = 0.0f;
    for (int64_t j = warp; j < n; j += kWarps) {
        float pj = scores[j];
        const bf16* vj = vbase + j * kv_width;
#pragma unroll
        for (int d = 0; d < kMaxDimsPerLane; ++d) {
            int64_t i = lane + 32 * d;
            if (i < s.head_dim) acc[d] += pj * __bfloat162float(vj[i]);
        }
    }
#pragma unroll
    for (int d = 0; d < kMaxDimsPerLane; ++d) {
        int64_t i = lane + 32 * d;
        if (i < s.head_dim) partial[warp * s.head_dim + i] = acc[d];
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < s.head_dim; i += blockDim.x) {
        float o = 0;
        for (int w = 0; w < kWarps; ++w) o += partial[w * s.head_dim + i];
        out[(t * s.heads + h) * s.head_dim + i] = __float2bfloat16(o / sum);
    }
}


constexpr int kUnroll = 4;

// The vector form: lane `part` of a key's kLanes lanes holds dims [8 part, 8 part + 8); a warp
// takes kKeys keys per step, kUnroll steps of loads in flight before their sums. `kbase` and
// `vbase` point at key 0's dims of this lane, rows kv_width apart.
template <int HD>
struct VecLanes {
    static constexpr int kLanes = HD / 8, kKeys = 32 / kLanes;
    int warp = threadIdx.x >> 5, sub = (threadIdx.x & 31) / kLanes, part = (threadIdx.x & 31) % kLanes;
};

// scores[j] = q . k_j / sqrt(HD) for j < n (q: this lane's 8 dims). `pre` holds the first
// step's loads u whose bit is set in `have` (attention_split_kernel's early loads).
template <int HD>
__device__ void score_keys(const bf16* q, const bf16* kbase, int64_t kv_width, int64_t n, float* scores, const uint4* pre = nullptr,
                           unsigned have = 0) {
    const VecLanes<HD> L;
    float qf[8];
    unpack8(*reinterpret_cast<const uint4*>(q + L.part * 8), qf);
    const float scale = rsqrtf((float)HD);
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[i] *= scale;
    const int64_t step = kWarps * L.kKeys;
    // The loop bounds are the same for the whole warp, so that every lane takes every shuffle.
    for (int64_t base = L.warp * L.kKeys; base < n; base += step * kUnroll) {
        uint4 kv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            int64_t j = base + L.sub + u * step;
            kv[u] = (have >> u) & 1 ? pre[u] : j < n ? *reinterpret_cast<const uint4*>(kbase + j * kv_width) : make_uint4(0, 0, 0, 0);
        }
        have = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            float kf[8], d = 0;
            unpack8(kv[u], kf);
#pragma unroll
            for (int i = 0; i < 8; ++i) d += qf[i] * kf[i];
#pragma unroll
            for (int o = L.kLanes / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            int64_t j = base + L.sub + u * step;
            if (L.part == 0 && j < n) scores[j] = d;
        }
    }
}

// Each warp's sum of weights[j] * v_j over its keys j < n into partial[warp * HD, + HD).
template <int HD>
__device__ void weigh_values(const bf16* vbase, int64_t kv_width, int64_t n, const float* weights, float* partial, const uint4* pre = nullptr,
                             unsigned have = 0) {
    const VecLanes<HD> L;
    const int64_t step = kWarps * L.kKeys;
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
    for (int64_t base = L.warp * L.kKeys; base < n; base += step * kUnroll) {
        uint4 vv[kUnroll];
        float pj[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            int64_t j = base + L.sub + u * step;
            bool in = j < n;
            vv[u] = (have >> u) & 1 ? pre[u] : in ? *reinterpret_cast<const uint4*>(vbase + j * kv_width) : make_uint4(0, 0, 0, 0);
            pj[u] = in ? weights[j] : 0.0f;
        }
        have = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            float vf[8];
            unpack8(vv[u], vf);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] += pj[u] * vf[i];
        }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int o = 16; o >= L.kLanes; o >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    if (L.sub == 0)
#pragma unroll
        for (int i = 0; i < 8; ++i) partial[L.warp * HD + L.part * 8 + i] = acc[i];
}

// The key rows of (token t, head h): where its visible keys start in the cache, and how many.
struct VisibleKeys {
    int64_t first, n;
};
__device__ inline VisibleKeys visible_keys(const cpu::AttentionShape& s, int64_t p) {
    const int64_t first = s.sliding_window > 0 && p - s.sliding_window + 1 > 0 ? p - s.sliding_window + 1 : 0;
    return {first, p - first + 1};
}

template <int HD>
__global__ void __launch_bounds__(kThreads) attention_vec_kernel(cpu::AttentionShape s, int64_t t0, const int32_t* slot, const int32_t* pos,
                                                                 const bf16* q, const bf16* k_cache, const bf16* v_cache, bf16* out) {
    pdl_entry();  // see common.cuh
    extern __shared__ float smem[];  // partial sums (kWarps x HD) | scores
    float* partial = smem;
    float* scores = smem + kWarps * HD;
    const int64_t t = t0 + blockIdx.x, h = blockIdx.y;
    const int64_t kv_width = s.kv_heads * HD, kvh = h / (s.heads / s.kv_heads);
    const VisibleKeys vk = visible_keys(s, pos[t]);
    const int64_t row0 = ((int64_t)slot[t] * s.max_seq + vk.first) * kv_width + kvh * HD + VecLanes<HD>().part * 8;
    score_keys<HD>(q + (t * s.heads + h) * HD, k_cache + row0, kv_width, vk.n, scores);
    __syncthreads();
    const float sum = exp_scores(scores, vk.n);
    weigh_values<HD>(v_cache + row0, kv_width, vk.n, scores, partial);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < HD; i += blockDim.x) {
        float o = 0;
        for (int w = 0; w < kWarps; ++w) o += partial[w * HD + i];
        out[(t * s.heads + h) * HD + i] = __float2bfloat16(o / sum);
    }
}

// attention_vec_kernel for the G query heads that share a KV head (GQA), one block for them
// all: each key's K and V rows are loaded once for the G heads instead of once per head (a
// batch-64 decode step read them 4 times over, at Llama-3-8B's 32 query and 8 KV heads). The
// same steps per head as attention_vec_kernel, in the same order, so the same bits.
template <int HD, int G>
__global__ void __launch_bounds__(kThreads) attention_gqa_kernel(cpu::AttentionShape s, int64_t t0, const int32_t* slot, const int32_t* pos,
                                                                 const bf16* q, const bf16* k_cache, const bf16* v_cache, bf16* out) {
    pdl_entry();  // see common.cuh
    extern __shared__ float smem[];  // partial sums (kWarps x G x HD) | scores (G x visible keys)
    float* partial = smem;
    float* scores = smem + kWarps * G * HD;
    __shared__ float sums[G];
    const VecLanes<HD> L;
    const int64_t t = t0 + blockIdx.x, kvh = blockIdx.y, h0 = kvh * G;
    const int64_t kv_width = s.kv_heads * HD;
    const VisibleKeys vk = visible_keys(s, pos[t]);
    const int64_t n = vk.n, row0 = ((int64_t)slot[t] * s.max_seq + vk.first) * kv_width + kvh * HD + L.part * 8;
    const bf16* kbase = k_cache + row0;
    const bf16* vbase = v_cache + row0;
    // Scores: as score_keys, G dot products a key.
    float qf[G][8];
    const float scale = rsqrtf((float)HD);
#pragma unroll
    for (int g = 0; g < G; ++g) {
        unpack8(*reinterpret_cast<const uint4*>(q + (t * s.heads + h0 + g) * HD + L.part * 8), qf[g]);
#pragma unroll
        for (int i = 0; i < 8; ++i) qf[g][i] *= scale;
    }
    const int64_t step = kWarps * L.kKeys;
    for (int64_t base = L.warp * L.kKeys; base < n; base += step * kUnroll) {
        uint4 kv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t j = base + L.sub + u * step;
            kv[u] = j < n ? *reinterpret_cast<const uint4*>(kbase + j * kv_width) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            float kf[8];
            unpack8(kv[u], kf);
            const int64_t j = base + L.sub + u * step;
#pragma unroll
            for (int g = 0; g < G; ++g) {
                float d = 0;
#pragma unroll
                for (int i = 0; i < 8; ++i) d += qf[g][i] * kf[i];
#pragma unroll
                for (int o = L.kLanes / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                if (L.part == 0 && j < n) scores[g * n + j] = d;
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const float sum = exp_scores(scores + g * n, n);
        if (threadIdx.x == 0) sums[g] = sum;
    }
    // Values: as weigh_values, G weighted sums a key.
    float acc[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
    for (int64_t base = L.warp * L.kKeys; base < n; base += step * kUnroll) {
        uint4 vv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t j = base + L.sub + u * step;
            vv[u] = j < n ? *reinterpret_cast<const uint4*>(vbase + j * kv_width) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t j = base + L.sub + u * step;
            float vf[8];
            unpack8(vv[u], vf);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float pj = j < n ? scores[g * n + j] : 0.0f;
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[g][i] += pj * vf[i];
            }
        }
    }
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int o = 16; o >= L.kLanes; o >>= 1) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
    if (L.sub == 0)
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
            for (int i = 0; i < 8; ++i) partial[(L.warp * G + g) * HD + L.part * 8 + i] = acc[g][i];
    __syncthreads();
    for (int64_t idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        const int64_t g = idx / HD, i = idx % HD;
        float o = 0;
        for (int w = 0; w < kWarps; ++w) o += partial[(w * G + g) * HD + i];
        out[(t * s.heads + h0 + g) * HD + i] = __float2bfloat16(o / sums[g]);
    }
}

// Flash-decoding for a few (token, head) pairs (batch-1 decode: 16 or 32 of them on 132 SMs):
// the visible keys of one pair split over the blocks of a thread-block cluster. Each block
// scores its share of the keys as attention_vec_kernel does, keeps their max and exp-sum and its
// weighted sum of V; block 0 of the cluster reads the others' through distributed shared memory
// and combines them. One kernel and no workspace; a block whose share is empty adds nothing.
//
// `early` (a forward of one token, whose earlier positions earlier forwards wrote): the first
// step's K and V rows of every key but the token's own are loaded before the kernel waits for
// the one before it (pdl_entry), so that they arrive while the qkv GEMV drains; the token's
// position and slot are then read before the wait too (step inputs, copied before the
// forward's first kernel). The one-token step at tp=1: -0.03 to -0.04 ms (docs/PERF.md).
template <int HD>
__global__ void __launch_bounds__(kThreads) attention_split_kernel(cpu::AttentionShape s, int64_t t0, const int32_t* slot, const int32_t* pos,
                                                                   const bf16* q, const bf16* k_cache, const bf16* v_cache, bf16* out,
                                                                   bool early) {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    extern __shared__ float smem[];  // weighted V sum (HD) | max, exp-sum | partial sums (kWarps x HD) | scores
    float* wsum = smem;
    float* stat = smem + HD;
    float* partial = stat + 2;
    float* scores = partial + kWarps * HD;
    const int split = (int)cluster.block_rank(), splits = (int)cluster.num_blocks();
    const int64_t t = t0 + blockIdx.z, h = blockIdx.y;
    const int64_t kv_width = s.kv_heads * HD, kvh = h / (s.heads / s.kv_heads);
    if (!early) pdl_entry();  // see common.cuh
    const int64_t p = pos[t];
    const VisibleKeys vk = visible_keys(s, p);
    const int64_t chunk = (vk.n + splits - 1) / splits, lo = min(vk.n, split * chunk), n = min(vk.n, lo + chunk) - lo;
    const int64_t row0 = ((int64_t)slot[t] * s.max_seq + vk.first + lo) * kv_width + kvh * HD + VecLanes<HD>().part * 8;
    uint4 kpre[kUnroll], vpre[kUnroll];
    unsigned have = 0;
    if (early) {
        const VecLanes<HD> L;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t j = L.warp * L.kKeys + L.sub + u * kWarps * L.kKeys;  // score_keys's first step
            if (j < n && vk.first + lo + j < p) {
                kpre[u] = *reinterpret_cast<const uint4*>(k_cache + row0 + j * kv_width);
                vpre[u] = *reinterpret_cast<const uint4*>(v_cache + row0 + j * kv_width);
                have |= 1u << u;
            }
        }
        pdl_entry();
    }
    score_keys<HD>(q + (t * s.heads + h) * HD, k_cache + row0, kv_width, n, scores, kpre, have);
    __syncthreads();
    float mx;
    const float sum = exp_scores(scores, n, &mx);  // an empty share: max -inf, sum 0
    weigh_values<HD>(v_cache + row0, kv_width, n, scores, partial, vpre, have);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < HD; i += blockDim.x) {
        float o = 0;
        for (int w = 0; w < kWarps; ++w) o += partial[w * HD + i];
        wsum[i] = o;
    }
    if (threadIdx.x == 0) stat[0] = mx, stat[1] = sum;
    cluster.sync();  // every block's wsum and stat written, visible to the cluster
    if (split == 0) {
        float m_all = -INFINITY;
        for (int r = 0; r < splits; ++r) m_all = fmaxf(m_all, cluster.map_shared_rank(stat, r)[0]);
        float l_all = 0;
        for (int r = 0; r < splits; ++r) {
            const float* st = cluster.map_shared_rank(stat, r);
            if (st[1] > 0) l_all += st[1] * expf(st[0] - m_all);
        }
        for (int64_t i = threadIdx.x; i < HD; i += blockDim.x) {
            float o = 0;
            for (int r = 0; r < splits; ++r) {
                const float* st = cluster.map_shared_rank(stat, r);
                if (st[1] > 0) o += cluster.map_shared_rank(wsum, r)[i] * expf(st[0] - m_all);
            }
            out[(t * s.heads + h) * HD + i] = __float2bfloat16(o / l_all);
        }
    }
    cluster.sync();  // the other blocks' shared memory stays until block 0 has read it
}


// Row i of head h of a block of query rows at positions p_first + i, over keys k_lo + j:
// P = softmax(S) where visible (causal, window), 0 elsewhere.
__global__ void masked_softmax_kernel(int64_t rows, int64_t n, int64_t p_first, int64_t k_lo, int64_t window, const float* S, bf16* P) {
    pdl_entry();  // see common.cuh
    int64_t i = blockIdx.x, h = blockIdx.y;
    const float* srow = S + (h * rows + i) * n;
    bf16* prow = P + (h * rows + i) * n;
    int64_t p = p_first + i;
    int64_t lo = (window > 0 && p - window + 1 > k_lo ? p - window + 1 : k_lo) - k_lo, hi = p - k_lo;  // visible j: [lo, hi]
    float mx = -INFINITY;
    for (int64_t j = lo + threadIdx.x; j <= hi; j += blockDim.x) mx = fmaxf(mx, srow[j]);
    mx = block_max(mx);
    float sum = 0;
    for (int64_t j = lo + threadIdx.x; j <= hi; j += blockDim.x) sum += expf(srow[j] - mx);
    float inv = 1.0f / block_sum(sum);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        prow[j] = __float2bfloat16(j >= lo && j <= hi ? expf(srow[j] - mx) * inv : 0.0f);
}

// Flash attention for long prompt segments (head_dim 64 or 128), after FlashAttention-2, on
// mma.sync.m16n8k16 (bf16 in, fp32 sums): one block of W warps per (16 W RT query rows, query
// head), each warp RT tiles of 16 rows, tiles of kFlashKeys keys. With one row tile a warp, Q
// stays in registers as A fragments for the whole kernel; with two, Q's fragments come from
// shared memory at each k-step (the registers hold two tiles' O and S instead), and every K and
// V fragment loaded feeds two MMAs. K and V of a tile come into shared memory by cp.async, two
// buffers: the next tile's copies run while this one is computed, one barrier a tile. S, the
// online softmax and P never leave the registers: the accumulator of S for keys 16k .. 16k + 15
// is, pair by pair, the A fragment of P for that k-step. Rows padded to D + 8 elements make
// every ldmatrix conflict free. Only tiles that cross the diagonal or the window's edge are
// masked. The row blocks run latest first across all heads (the longest blocks first: with
// the heads' row blocks in turn, each head's longest block started after the others' short
// ones, and a 2048-token prompt's last blocks ran on an almost idle GPU).
template <int D, int W, int N, int RT>
struct FlashSmem {
    static constexpr int kPad = D + 8;
    bf16 q[16 * W * RT * kPad];
    bf16 k[2][N * kPad];  // tile j in buffer j % 2
    bf16 v[2][N * kPad];
};

__device__ inline uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared, asynchronous; zeros when !valid (src is then not read).
__device__ inline void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Four 8x8 b16 matrices; lanes 8i .. 8i + 7 give the row addresses of matrix i.
__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// d += a b: a 16x16 (row), b 16x8 (col), d 16x8 fp32. Lane l holds d rows l / 4 (d[0], d[1]) and
// l / 4 + 8 (d[2], d[3]), columns 2 (l % 4) and 2 (l % 4) + 1.
__device__ inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ inline uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

template <int D, int W, int kFlashKeys, int RT>
__global__ void __launch_bounds__(32 * W, RT == 1 ? (kFlashKeys <= 32 ? 12 : 8) / W : 8 / W / RT * 2)
    flash_attention_kernel(int max_seq, int heads, int kv_heads, int window, AttentionSegment seg, const bf16* __restrict__ q,
                           const bf16* __restrict__ k_cache, const bf16* __restrict__ v_cache, bf16* __restrict__ out) {
    pdl_entry();  // see common.cuh
    using Smem = FlashSmem<D, W, kFlashKeys, RT>;
    constexpr int kRows = 16 * W * RT, kPad = Smem::kPad, kVec = D / 8;  // 16-byte pieces per row
    extern __shared__ __align__(128) unsigned char flash_raw[];
    Smem& sm = *reinterpret_cast<Smem*>(flash_raw);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.x, g = h / (heads / kv_heads);
    const int64_t qw = (int64_t)heads * D, kvw = (int64_t)kv_heads * D;
    const int r0 = (gridDim.y - 1 - blockIdx.y) * kRows, rows = min(kRows, (int)seg.count - r0);
    const int p_first = (int)seg.start + r0, p_last = p_first + rows - 1;
    const int k_lo = window > 0 ? max(0, p_first - window + 1) : 0;
    const bf16* kg = k_cache + (seg.slot * max_seq) * kvw + g * D;
    const bf16* vg = v_cache + (seg.slot * max_seq) * kvw + g * D;
    const bf16* qg = q + (seg.first + r0) * qw + (int64_t)h * D;
    // Q rows (zeros beyond the segment), then K and V of a tile of keys (zeros outside
    // [k_lo, p_last], so that 0 x V stays finite whatever the cache holds there): one
    // cp.async group per tile, in flight while the tile before it is computed.
    for (int i = threadIdx.x; i < kRows * kVec; i += blockDim.x) {
        const int r = i / kVec, c = i % kVec;
        cp_async16(sm.q + r * kPad + c * 8, r < rows ? qg + r * qw + c * 8 : qg, r < rows);
    }
    auto load_tile = [&](int buf, int kb) {
        if (kb <= p_last)
            for (int i = threadIdx.x; i < kFlashKeys * kVec; i += blockDim.x) {
                const int r = i / kVec, c = i % kVec, key = kb + r;
                const bool in = key >= k_lo && key <= p_last;
                cp_async16(sm.k[buf] + r * kPad + c * 8, in ? kg + key * kvw + c * 8 : kg, in);
                cp_async16(sm.v[buf] + r * kPad + c * 8, in ? vg + key * kvw + c * 8 : vg, in);
            }
        cp_async_commit();
    };
    const int kb0 = k_lo / kFlashKeys * kFlashKeys;
    load_tile(0, kb0);

    const int wrow = warp * 16 * RT;  // this warp's first row in the block
    const bool active = wrow < rows;  // else this warp's rows are all beyond the segment
    int prow[RT][2];                  // this lane's two rows of each row tile, in the block
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) prow[rt][0] = wrow + rt * 16 + lane / 4, prow[rt][1] = prow[rt][0] + 8;
    uint32_t qf[RT == 1 ? D / 16 : 1][4];  // Q's A fragments, with one row tile a warp
    float o[RT][D / 8][4];
#pragma unroll
    for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) o[rt][dt][0] = o[rt][dt][1] = o[rt][dt][2] = o[rt][dt][3] = 0.0f;
    float m[RT][2], l[RT][2];
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) m[rt][0] = m[rt][1] = -INFINITY, l[rt][0] = l[rt][1] = 0.0f;
    const float scale = rsqrtf((float)D) * 1.4426950408889634f;  // exp2 domain
    // Row and column of this lane's ldmatrix address within a 16 x 16 piece: A (row-major) and
    // V (transposed) walk rows 0..15 then the column half; K walks the column half first.
    const int a_row = (lane % 8) + ((lane / 8) % 2) * 8, a_col = (lane / 16) * 8;
    const int k_row = (lane % 8) + (lane / 16) * 8, k_col = ((lane / 8) % 2) * 8;

    for (int kb = kb0, buf = 0; kb <= p_last; kb += kFlashKeys, buf ^= 1) {
        cp_async_wait_all();
        // This tile (and Q) arrived for every thread, and every warp is done with the previous
        // tile, whose buffer the next tile's copies now fill while this one is computed.
        __syncthreads();
        load_tile(buf ^ 1, kb + kFlashKeys);
        if constexpr (RT == 1) {
            if (kb == kb0 && active)
#pragma unroll
                for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(qf[ks], sm.q + (wrow + a_row) * kPad + ks * 16 + a_col);
        }
        if (!active) continue;
        const bf16* sk = sm.k[buf];
        const bf16* sv = sm.v[buf];
        float s[RT][kFlashKeys / 8][4];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt)
#pragma unroll
            for (int nt = 0; nt < kFlashKeys / 8; ++nt) s[rt][nt][0] = s[rt][nt][1] = s[rt][nt][2] = s[rt][nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            uint32_t qa[RT][4];
#pragma unroll
            for (int rt = 0; rt < RT; ++rt) {
                if constexpr (RT == 1) qa[rt][0] = qf[ks][0], qa[rt][1] = qf[ks][1], qa[rt][2] = qf[ks][2], qa[rt][3] = qf[ks][3];
                else ldmatrix_x4(qa[rt], sm.q + (wrow + rt * 16 + a_row) * kPad + ks * 16 + a_col);
            }
#pragma unroll
            for (int np = 0; np < kFlashKeys / 16; ++np) {
                uint32_t b[4];
                ldmatrix_x4(b, sk + (np * 16 + k_row) * kPad + ks * 16 + k_col);
#pragma unroll
                for (int rt = 0; rt < RT; ++rt) {
                    mma_bf16_16816(s[rt][2 * np], qa[rt], b[0], b[1]);
                    mma_bf16_16816(s[rt][2 * np + 1], qa[rt], b[2], b[3]);
                }
            }
        }
        // A key is visible to a row at or after its position, inside the window.
        if (kb + kFlashKeys - 1 > p_first + wrow || (window > 0 && kb <= p_last - window)) {
#pragma unroll
            for (int rt = 0; rt < RT; ++rt)
#pragma unroll
                for (int nt = 0; nt < kFlashKeys / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int j = e / 2, key = kb + nt * 8 + (lane % 4) * 2 + (e % 2), pq = p_first + prow[rt][j];
                        const bool vis = prow[rt][j] < rows && key <= pq && key >= k_lo && (window <= 0 || key > pq - window);
                        if (!vis) s[rt][nt][e] = -INFINITY;
                    }
        }
        uint32_t pf[RT][kFlashKeys / 16][4];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
            float mx[2] = {-INFINITY, -INFINITY}, alpha[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
            for (int nt = 0; nt < kFlashKeys / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[rt][nt][e]);
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 1));
                mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 2));
                const float m_new = fmaxf(m[rt][j], mx[j] * scale);
                alpha[j] = m_new == -INFINITY ? 1.0f : exp2f(m[rt][j] - m_new);
                m[rt][j] = m_new;
            }
#pragma unroll
            for (int nt = 0; nt < kFlashKeys / 8; ++nt)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    // (s = -inf gives 0 once m is finite; m = -inf means every key so far is masked)
                    const float e0 = m[rt][j] == -INFINITY ? 0.0f : exp2f(fmaf(s[rt][nt][2 * j], scale, -m[rt][j]));
                    const float e1 = m[rt][j] == -INFINITY ? 0.0f : exp2f(fmaf(s[rt][nt][2 * j + 1], scale, -m[rt][j]));
                    sum[j] += e0 + e1;
                    pf[rt][nt / 2][(nt % 2) * 2 + j] = pack_bf16x2(e0, e1);
                }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                sum[j] += __shfl_xor_sync(0xffffffffu, sum[j], 1);
                sum[j] += __shfl_xor_sync(0xffffffffu, sum[j], 2);
                l[rt][j] = l[rt][j] * alpha[j] + sum[j];
            }
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt) {
                o[rt][dt][0] *= alpha[0], o[rt][dt][1] *= alpha[0];
                o[rt][dt][2] *= alpha[1], o[rt][dt][3] *= alpha[1];
            }
        }
#pragma unroll
        for (int kk = 0; kk < kFlashKeys / 16; ++kk)
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, sv + (kk * 16 + a_row) * kPad + dp * 16 + a_col);
#pragma unroll
                for (int rt = 0; rt < RT; ++rt) {
                    mma_bf16_16816(o[rt][2 * dp], pf[rt][kk], b[0], b[1]);
                    mma_bf16_16816(o[rt][2 * dp + 1], pf[rt][kk], b[2], b[3]);
                }
            }
    }
    if (!active) return;
#pragma unroll
    for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            if (prow[rt][j] >= rows) continue;
            const float inv = 1.0f / l[rt][j];
            bf16* orow = out + (seg.first + r0 + prow[rt][j]) * qw + (int64_t)h * D + (lane % 4) * 2;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                *reinterpret_cast<uint32_t*>(orow + dt * 8) = pack_bf16x2(o[rt][dt][2 * j] * inv, o[rt][dt][2 * j + 1] * inv);
        }
}

template <int D, int W, int N, int RT>
void flash_attention(const cpu::AttentionShape& s, const AttentionSegment& seg, const bf16* q, const bf16* k_cache, const bf16* v_cache,
                     bf16* out, cudaStream_t stream) {
    static bool raised = false;
    const size_t smem = sizeof(FlashSmem<D, W, N, RT>);
    if (!raised) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<D, W, N, RT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        raised = true;
    }
    // Blocks start in index order, x fastest: every head's latest (longest) row block first,
    // then the next latest, so that the longest blocks do not start last.
    dim3 grid((unsigned)s.heads, (unsigned)((seg.count + 16 * W * RT - 1) / (16 * W * RT)));
    launch(flash_attention_kernel<D, W, N, RT>, grid, 32 * W, smem, stream, (int)s.max_seq, (int)s.heads, (int)s.kv_heads,
                                                                        (int)s.sliding_window, seg, q, k_cache, v_cache, out);
    TPX_LAUNCH_CHECK();
}

constexpr int64_t kGemmRowBlock = 512;
constexpr int64_t kFlashShortMax = 256;

// The per-head operands of the batched GEMMs, computed on the device (asynchronous, capturable):
// [K_g | Q_h | S_h | V_g | P_h | O_h] for every query head h of kv head g = h / G.
__global__ void attention_ptrs_kernel(int64_t heads, int64_t G, int64_t d, int64_t block, const bf16* K, const bf16* Q, float* S,
                                      const bf16* V, bf16* P, bf16* O, const void** ptrs) {
    pdl_entry();  // see common.cuh
    for (int64_t h = threadIdx.x; h < heads; h += blockDim.x) {
        int64_t g = h / G;
        ptrs[h] = K + g * d;
        ptrs[heads + h] = Q + h * d;
        ptrs[2 * heads + h] = S + h * block;
        ptrs[3 * heads + h] = V + g * d;
        ptrs[4 * heads + h] = P + h * block;
        ptrs[5 * heads + h] = O + h * d;
    }
}

void attention_gemm(cublasHandle_t h, const cpu::AttentionShape& s, const AttentionSegment& seg, const bf16* q, const bf16* k_cache,
                    const bf16* v_cache, bf16* out, cudaStream_t stream) {
    const int64_t d = s.head_dim, G = s.heads / s.kv_heads, kvw = s.kv_heads * d, qw = s.heads * d, H = s.heads;
    const float scale = 1.0f / std::sqrt((float)d), one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSetStream(h, stream));
    const void** ptrs = nullptr;
    CUDA_CHECK(cudaMallocAsync((void**)&ptrs, 6 * H * sizeof(void*), stream));
    for (int64_t r0 = 0; r0 < seg.count; r0 += kGemmRowBlock) {
        int64_t rows = std::min(kGemmRowBlock, seg.count - r0);
        int64_t p_first = seg.start + r0, k_hi = p_first + rows;
        int64_t k_lo = s.sliding_window > 0 ? std::max<int64_t>(0, p_first - s.sliding_window + 1) : 0, n = k_hi - k_lo;
        float* S = nullptr;
        bf16* P = nullptr;
        CUDA_CHECK(cudaMallocAsync((void**)&S, (size_t)(H * rows * n) * sizeof(float), stream));
        CUDA_CHECK(cudaMallocAsync((void**)&P, (size_t)(H * rows * n) * sizeof(bf16), stream));
        launch(attention_ptrs_kernel, 1, 128, 0, stream, H, G, d, rows * n, k_cache + (seg.slot * s.max_seq + k_lo) * kvw,
                                                      q + (seg.first + r0) * qw, S, v_cache + (seg.slot * s.max_seq + k_lo) * kvw, P,
                                                      out + (seg.first + r0) * qw, ptrs);
        TPX_LAUNCH_CHECK();
        // Column-major views, all heads in one batched call: S_h^T [n, rows] = (K_g [d, n])^T . Q_h^T [d, rows].
        CUBLAS_CHECK(cublasGemmBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)rows, (int)d, &scale, ptrs, CUDA_R_16BF, (int)kvw,
                                         ptrs + H, CUDA_R_16BF, (int)qw, &zero, (void* const*)(ptrs + 2 * H), CUDA_R_32F, (int)n, (int)H,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        launch(masked_softmax_kernel, dim3((unsigned)rows, (unsigned)H), 256, 0, stream, rows, n, p_first, k_lo, s.sliding_window, S, P);
        TPX_LAUNCH_CHECK();
        // O_h^T [d, rows] = V_g [d, n] . P_h^T [n, rows].
        CUBLAS_CHECK(cublasGemmBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)d, (int)rows, (int)n, &one, ptrs + 3 * H, CUDA_R_16BF, (int)kvw,
                                         ptrs + 4 * H, CUDA_R_16BF, (int)n, &zero, (void* const*)(ptrs + 5 * H), CUDA_R_16BF, (int)qw,
                                         (int)H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        CUDA_CHECK(cudaFreeAsync(S, stream));
        CUDA_CHECK(cudaFreeAsync(P, stream));
    }
    CUDA_CHECK(cudaFreeAsync(ptrs, stream));
}

// The split decode kernel's early K and V loads; TPX_ATTN_EARLY=0: off.
bool attention_early() {
    static const bool on = !(std::getenv("TPX_ATTN_EARLY") && std::string(std::getenv("TPX_ATTN_EARLY")) == "0");
    return on;
}

// Blocks a (token, head) pair's keys are split over: enough pairs x splits to give every SM a
// block or two, at most 8 (a portable cluster); 1 (no split) from about as many pairs as SMs.
int decode_splits(int64_t tokens, int64_t heads) {
    static const int max_splits = std::getenv("TPX_DECODE_SPLITS") ? std::atoi(std::getenv("TPX_DECODE_SPLITS")) : 8;
    int splits = 1;
    while (splits * 2 <= max_splits && tokens * heads * splits * 2 <= 2 * sm_count()) splits *= 2;
    return splits;
}

// Tokens [t0, t1) through the per-(token, head) kernel, or its split form for few pairs.
void attention_tokens(const cpu::AttentionShape& s, int64_t t0, int64_t t1, const int32_t* slot, const int32_t* pos, const bf16* q,
                      const bf16* k_cache, const bf16* v_cache, bf16* out, cudaStream_t stream) {
    if (t1 <= t0) return;
    dim3 grid((unsigned)(t1 - t0), (unsigned)s.heads);
    auto allow_smem = [&](const void* kernel, size_t smem) {
        static std::map<const void*, size_t> raised;  // the shared memory each kernel was allowed so far
        size_t& allowed = raised.emplace(kernel, 48 * 1024).first->second;
        TPX_CHECK(smem <= 227 * 1024, "attention: max_seq_len " + std::to_string(s.max_seq) + " needs " + std::to_string(smem) +
                                          " bytes of shared memory for the scores, above the 227 KiB a block may have");
        if (smem > allowed) {
            CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            allowed = smem;
        }
    };
    auto launch_with_smem = [&](auto kernel, size_t smem) {
        allow_smem((const void*)kernel, smem);
        launch(kernel, grid, kThreads, smem, stream, s, t0, slot, pos, q, k_cache, v_cache, out);
        TPX_LAUNCH_CHECK();
    };
    const int splits = decode_splits(t1 - t0, s.heads);
    if (splits > 1 && (s.head_dim == 64 || s.head_dim == 128 || s.head_dim == 256)) {
        // The keys a block may get: ceil(visible / splits), visible at most max_seq (or the window).
        const int64_t visible = s.sliding_window > 0 ? std::min(s.max_seq, s.sliding_window) : s.max_seq;
        const size_t smem = (size_t)(s.head_dim + 2 + kWarps * s.head_dim + (visible + splits - 1) / splits) * sizeof(float);
        auto go = [&](auto kernel) {
            allow_smem((const void*)kernel, smem);
            launch_cluster(kernel, dim3((unsigned)splits, (unsigned)s.heads, (unsigned)(t1 - t0)), splits, kThreads, smem, stream, s, t0,
                           slot, pos, q, k_cache, v_cache, out, s.tokens == 1 && attention_early());
        };
        if (s.head_dim == 64) go(attention_split_kernel<64>);
        else if (s.head_dim == 128) go(attention_split_kernel<128>);
        else go(attention_split_kernel<256>);
        return;
    }
    // GQA: one block for a KV head's G query heads where that still gives every SM a block
    // (tokens x kv_heads >= SMs; a batch-64 decode step) and their scores fit in shared memory.
    const int64_t G = s.heads / s.kv_heads;
    static const bool gqa_on = !(std::getenv("TPX_ATTN_GQA") && std::string(std::getenv("TPX_ATTN_GQA")) == "0");
    const size_t gqa_smem = (size_t)(kWarps * G * s.head_dim + G * s.max_seq) * sizeof(float);
    if (gqa_on && (G == 2 || G == 4 || G == 8) && (s.head_dim == 64 || s.head_dim == 128) && (t1 - t0) * s.kv_heads >= sm_count() &&
        gqa_smem <= 227 * 1024) {
        dim3 gqa_grid((unsigned)(t1 - t0), (unsigned)s.kv_heads);
        auto go = [&](auto kernel) {
            allow_smem((const void*)kernel, gqa_smem);
            launch(kernel, gqa_grid, kThreads, gqa_smem, stream, s, t0, slot, pos, q, k_cache, v_cache, out);
            TPX_LAUNCH_CHECK();
        };
        if (s.head_dim == 128 && G == 4) go(attention_gqa_kernel<128, 4>);
        else if (s.head_dim == 128 && G == 2) go(attention_gqa_kernel<128, 2>);
        else if (s.head_dim == 128) go(attention_gqa_kernel<128, 8>);
        else if (G == 4) go(attention_gqa_kernel<64, 4>);
        else if (G == 2) go(attention_gqa_kernel<64, 2>);
        else go(attention_gqa_kernel<64, 8>);
        return;
    }
    size_t vec_smem = (size_t)(kWarps * s.head_dim + s.max_seq) * sizeof(float);
    if (s.head_dim == 64) launch_with_smem(attention_vec_kernel<64>, vec_smem);
    else if (s.head_dim == 128) launch_with_smem(attention_vec_kernel<128>, vec_smem);
    else if (s.head_dim == 256) launch_with_smem(attention_vec_kernel<256>, vec_smem);
    else launch_with_smem(attention_kernel, (size_t)((1 + kWarps) * s.head_dim + s.max_seq) * sizeof(float));
}

}  // namespace

void attention(const cpu::AttentionShape& s, const int32_t* slot, const int32_t* pos, const bf16* q, const bf16* k, const bf16* v,
               bf16* k_cache, bf16* v_cache, bf16* out, cudaStream_t stream, int64_t k_stride, int64_t v_stride, cublasHandle_t cublas,
               const std::vector<AttentionSegment>* segments) {
    TPX_CHECK(s.heads % s.kv_heads == 0, "attention: heads must be a multiple of kv_heads");
    TPX_CHECK(s.head_dim <= 32 * kMaxDimsPerLane, "attention: head_dim above " + std::to_string(32 * kMaxDimsPerLane));
    if (s.tokens == 0) return;
    int64_t kv_width = s.kv_heads * s.head_dim;
    TPX_CHECK((k == nullptr) == (v == nullptr), "attention: k and v must both be given or both be in the cache already");
    if (k) {
        const int64_t ks = k_stride ? k_stride : kv_width, vs = v_stride ? v_stride : kv_width;
        if (kv_width % 8 == 0 && ks % 8 == 0 && vs % 8 == 0 && aligned16({k, v, k_cache, v_cache}))
            launch(kv_write_kernel<uint4>, (unsigned)s.tokens, 128, 0, stream, kv_width / 8, ks / 8, vs / 8, s.max_seq, slot, pos,
                   reinterpret_cast<const uint4*>(k), reinterpret_cast<const uint4*>(v), reinterpret_cast<uint4*>(k_cache),
                   reinterpret_cast<uint4*>(v_cache));
        else
            launch(kv_write_kernel<bf16>, (unsigned)s.tokens, 256, 0, stream, kv_width, ks, vs, s.max_seq, slot, pos, k, v, k_cache, v_cache);
        TPX_LAUNCH_CHECK();
    }
    if (!segments || !cublas) {
        attention_tokens(s, 0, s.tokens, slot, pos, q, k_cache, v_cache, out, stream);
        return;
    }
    // Runs of short segments through the kernel, long segments through cuBLAS.
    int64_t run_start = 0;
    for (const AttentionSegment& seg : *segments) {
        TPX_CHECK(seg.first >= run_start && seg.first + seg.count <= s.tokens, "attention: segments out of order or beyond the batch");
        if (seg.count < kAttentionGemmMinTokens) continue;
        attention_tokens(s, run_start, seg.first, slot, pos, q, k_cache, v_cache, out, stream);
        const bool flash = (s.head_dim == 128 || s.head_dim == 64) && s.max_seq < (1ll << 30);
        // Row tiles a warp: 2 (default) or 1 (TPX_FLASH=1x64; tpx-kbench --flash compares them). tpx-kbench,
        // 2048 tokens, one layer, H200: 1 row tile 197 us, 2 row tiles 176 us (2 x 32 keys: 187 us).
        static const bool one_row_tile = std::getenv("TPX_FLASH") && std::string(std::getenv("TPX_FLASH")) == "1x64";
        // Short segments (a 128-token prompt): 32 query rows a block (2 warps, one row tile), so
        // that the grid has heads x count / 32 blocks rather than one a head (TPX_FLASH_SHORT_MAX
        // sets the length, 0 turns it off; tpx-kbench --flash compares).
        static const int64_t short_max = std::getenv("TPX_FLASH_SHORT_MAX") ? std::atoll(std::getenv("TPX_FLASH_SHORT_MAX")) : kFlashShortMax;
        const bool short_seg = seg.count <= short_max;
        if (flash && short_seg && s.head_dim == 128) flash_attention<128, 2, 64, 1>(s, seg, q, k_cache, v_cache, out, stream);
        else if (flash && short_seg) flash_attention<64, 2, 64, 1>(s, seg, q, k_cache, v_cache, out, stream);
        else if (flash && s.head_dim == 128 && one_row_tile) flash_attention<128, 4, 64, 1>(s, seg, q, k_cache, v_cache, out, stream);
        else if (flash && s.head_dim == 128) flash_attention<128, 4, 64, 2>(s, seg, q, k_cache, v_cache, out, stream);
        else if (flash && one_row_tile) flash_attention<64, 4, 64, 1>(s, seg, q, k_cache, v_cache, out, stream);
        else if (flash) flash_attention<64, 4, 64, 2>(s, seg, q, k_cache, v_cache, out, stream);
        else attention_gemm(cublas, s, seg, q, k_cache, v_cache, out, stream);
        run_start = seg.first + seg.count;
    }
    attention_tokens(s, run_start, s.tokens, slot, pos, q, k_cache, v_cache, out, stream);
}

}  // namespace tpx::cuda
