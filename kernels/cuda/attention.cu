// Attention over the bf16 KV cache. A first kernel writes every token's K and V into its slot
// (unless given none: the caller wrote them).
// Long prompt segments then attend in prefill_attention.cu (flash kernel or cuBLAS); every
// other token (decode steps, short chunks) here, through a kernel with one block per (token,
// query head): scores for the visible positions into shared memory (fp32), a block-wide
// softmax, the weighted sum of V. Its vector form (head_dim 64, 128 or 256) reads K and V rows
// in 16-byte pieces, several keys in flight per warp; other head sizes take the scalar form;
// few pairs split their keys over a cluster's blocks, many share a KV head's block (GQA); with
// [backend.tuning] attention_one_pass those many take the one-pass kernel of attention_one_pass.cu.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <cooperative_groups.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/attention_one_pass.h"

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
constexpr int kMaxSplits = 8;  // blocks a decode pair's keys are split over: a portable cluster

// The vector form: lane `part` of a key's kLanes lanes holds dims [8 part, 8 part + 8); a warp
// takes kKeys keys per step, kUnroll steps of loads in flight before their sums. `kbase` and
// `vbase` point at key 0's dims of this lane, rows kv_width apart.
template <int HD>
struct VecLanes {
    static constexpr int kLanes = HD / 8, kKeys = 32 / kLanes;
    int warp = threadIdx.x >> 5, sub = (threadIdx.x & 31) / kLanes, part = (threadIdx.x & 31) % kLanes;
};

// A warp's next kUnroll rows of K or V from `rows` (keys base + L.sub + u * step; zeros from n
// on), but the loads u whose bit is set in `have`, which `pre` already holds.
template <int HD>
__device__ __forceinline__ void load_key_rows(const VecLanes<HD>& L, int64_t base, int64_t step, int64_t n, const bf16* rows, int64_t kv_width,
                                              uint4* out, const uint4* pre = nullptr, unsigned have = 0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = base + L.sub + u * step;
        out[u] = (have >> u) & 1 ? pre[u] : j < n ? *reinterpret_cast<const uint4*>(rows + j * kv_width) : make_uint4(0, 0, 0, 0);
    }
}

// Before the wait for the kernel before (a decode batch's `early`): the first step's K and V
// rows of the keys j < n whose position (first + j) is before the token's own p, which earlier
// forwards wrote, into kpre and vpre (load_key_rows's loads u at base L.warp * L.kKeys); returns
// the loads made (bit u).
template <int HD>
__device__ __forceinline__ unsigned load_cached_rows(const VecLanes<HD>& L, int64_t n, int64_t first, int64_t p, const bf16* kbase,
                                                     const bf16* vbase, int64_t kv_width, uint4* kpre, uint4* vpre) {
    unsigned have = 0;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = L.warp * L.kKeys + L.sub + u * kWarps * L.kKeys;
        if (j < n && first + j < p) {
            kpre[u] = *reinterpret_cast<const uint4*>(kbase + j * kv_width);
            vpre[u] = *reinterpret_cast<const uint4*>(vbase + j * kv_width);
            have |= 1u << u;
        }
    }
    return have;
}

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
        load_key_rows(L, base, step, n, kbase, kv_width, kv, pre, have);
        have = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            float kf[8];
            unpack8(kv[u], kf);
            const float d = lane_group_dot8<VecLanes<HD>::kLanes>(qf, kf);
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
        load_key_rows(L, base, step, n, vbase, kv_width, vv, pre, have);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t j = base + L.sub + u * step;
            pj[u] = j < n ? weights[j] : 0.0f;
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

// One block for G consecutive query heads of one KV head, at one token (G = 1: a query head;
// G = heads / kv_heads, GQA: each key's K and V rows loaded once for the G heads instead of once
// per head, which a batch-64 step of Llama-3-8B's 32 query and 8 KV heads read 4 times over):
// scores for the visible keys into shared memory, a block-wide softmax, the weighted sum of V.
// Each head's steps are the same whatever G, in the same order, so the same bits. The first
// step's K and V rows are loaded together, so that the values' first round trip overlaps the
// scores'; with `early` (AttentionArgs::decode) those but the token's own row are loaded before
// the wait for the kernel before, as attention_split_kernel's.
template <int HD, int G>
__global__ void __launch_bounds__(kThreads) attention_heads_kernel(cpu::AttentionShape s, int64_t t0, const int32_t* slot, const int32_t* pos,
                                                                   const bf16* q, const bf16* k_cache, const bf16* v_cache, bf16* out,
                                                                   bool early) {
    extern __shared__ float smem[];  // partial sums (kWarps x G x HD) | scores (G x visible keys)
    float* partial = smem;
    float* scores = smem + kWarps * G * HD;
    __shared__ float sums[G];
    const VecLanes<HD> L;
    const int64_t t = t0 + blockIdx.x, h0 = (int64_t)blockIdx.y * G, kvh = h0 / (s.heads / s.kv_heads);
    const int64_t kv_width = s.kv_heads * HD;
    if (!early) pdl_entry();  // see common.cuh
    const int64_t p = pos[t];
    const VisibleKeys vk = visible_keys(s, p);
    const int64_t n = vk.n, row0 = ((int64_t)slot[t] * s.max_seq + vk.first) * kv_width + kvh * HD + L.part * 8;
    const bf16* kbase = k_cache + row0;
    const bf16* vbase = v_cache + row0;
    const int64_t step = kWarps * L.kKeys;
    uint4 kpre[kUnroll], vpre[kUnroll];
    unsigned have = 0;
    if (early) {
        have = load_cached_rows(L, n, vk.first, p, kbase, vbase, kv_width, kpre, vpre);
        pdl_entry();
    }
    load_key_rows(L, L.warp * L.kKeys, step, n, kbase, kv_width, kpre, kpre, have);  // the rest of the first step
    load_key_rows(L, L.warp * L.kKeys, step, n, vbase, kv_width, vpre, vpre, have);
    constexpr unsigned kAll = (1u << kUnroll) - 1;
    // Scores: as score_keys, G dot products a key.
    float qf[G][8];
    const float scale = rsqrtf((float)HD);
#pragma unroll
    for (int g = 0; g < G; ++g) {
        unpack8(*reinterpret_cast<const uint4*>(q + (t * s.heads + h0 + g) * HD + L.part * 8), qf[g]);
#pragma unroll
        for (int i = 0; i < 8; ++i) qf[g][i] *= scale;
    }
    have = kAll;
    for (int64_t base = L.warp * L.kKeys; base < n; base += step * kUnroll) {
        uint4 kv[kUnroll];
        load_key_rows(L, base, step, n, kbase, kv_width, kv, kpre, have);
        have = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            float kf[8];
            unpack8(kv[u], kf);
            const int64_t j = base + L.sub + u * step;
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float d = lane_group_dot8<VecLanes<HD>::kLanes>(qf[g], kf);
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
    float acc[G][8] = {};
    have = kAll;
    for (int64_t base = L.warp * L.kKeys; base < n; base += step * kUnroll) {
        uint4 vv[kUnroll];
        load_key_rows(L, base, step, n, vbase, kv_width, vv, vpre, have);
        have = 0;
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
// scores its share of the keys as attention_heads_kernel does (G = 1), and stores its weighted sum of V,
// their max and exp-sum into block 0's shared memory (distributed shared memory), then arrives
// at the cluster's barrier and ends; block 0 waits there and combines them from its own shared
// memory. (Before, block 0 read the others' shared memory after a cluster sync, and a second
// sync kept them until it had.) One kernel and no workspace; a block whose share is empty adds nothing.
//
// `early` (AttentionArgs::decode: every token alone in its sequence, its earlier positions
// written by earlier forwards): the first step's K and V rows of every key but the token's own
// are loaded before the kernel waits for
// the one before it (pdl_entry), so that they arrive while the qkv GEMV drains; the token's
// position and slot are then read before the wait too (step inputs, copied before the
// forward's first kernel).
template <int HD>
__global__ void __launch_bounds__(kThreads) attention_split_kernel(cpu::AttentionShape s, int64_t t0, const int32_t* slot, const int32_t* pos,
                                                                   const bf16* q, const bf16* k_cache, const bf16* v_cache, bf16* out,
                                                                   bool early) {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    extern __shared__ float smem[];  // partial sums (kWarps x HD) | scores
    __shared__ float gather[kMaxSplits][HD + 2];  // block 0's: each block's weighted V sum, max and exp-sum
    float* partial = smem;
    float* scores = partial + kWarps * HD;
    // The barrier's first phase: every block of the cluster has started (a block's shared memory
    // may be written only while it runs); waited for before the first remote store.
    asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
    const int split = (int)cluster.block_rank(), splits = (int)cluster.num_blocks();
    const int64_t t = t0 + blockIdx.z, h = blockIdx.y;
    const int64_t kv_width = s.kv_heads * HD, kvh = h / (s.heads / s.kv_heads);
    TPX_PROBE_DECL;
    TPX_PROBE_MARK(0);
    TPX_PROBE_END(200 + HD, s.heads);
    if (!early) pdl_entry();  // see common.cuh
    const int64_t p = pos[t];
    const VisibleKeys vk = visible_keys(s, p);
    const int64_t chunk = (vk.n + splits - 1) / splits, lo = min(vk.n, split * chunk), n = min(vk.n, lo + chunk) - lo;
    const int64_t row0 = ((int64_t)slot[t] * s.max_seq + vk.first + lo) * kv_width + kvh * HD + VecLanes<HD>().part * 8;
    uint4 kpre[kUnroll], vpre[kUnroll];
    unsigned have = 0;
    if (early) {
        have = load_cached_rows(VecLanes<HD>(), n, vk.first + lo, p, k_cache + row0, v_cache + row0, kv_width, kpre, vpre);
        pdl_entry();
    }
    TPX_PROBE_MARK(1);
    score_keys<HD>(q + (t * s.heads + h) * HD, k_cache + row0, kv_width, n, scores, kpre, have);
    __syncthreads();
    float mx;
    const float sum = exp_scores(scores, n, &mx);  // an empty share: max -inf, sum 0
    weigh_values<HD>(v_cache + row0, kv_width, n, scores, partial, vpre, have);
    __syncthreads();
    TPX_PROBE_MARK(3);
    asm volatile("barrier.cluster.wait;" ::: "memory");
    float* into = cluster.map_shared_rank(&gather[split][0], 0);
    for (int64_t i = threadIdx.x; i < HD; i += blockDim.x) {
        float o = 0;
        for (int w = 0; w < kWarps; ++w) o += partial[w * HD + i];
        into[i] = o;
    }
    if (threadIdx.x == 0) into[HD] = mx, into[HD + 1] = sum;
    asm volatile("barrier.cluster.arrive.release;" ::: "memory");  // the second phase: every block's stores made
    if (split != 0) return;  // nothing reads this block's shared memory
    asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
    float m_all = -INFINITY;
    for (int r = 0; r < splits; ++r) m_all = fmaxf(m_all, gather[r][HD]);
    float l_all = 0;
    for (int r = 0; r < splits; ++r)
        if (gather[r][HD + 1] > 0) l_all += gather[r][HD + 1] * expf(gather[r][HD] - m_all);
    for (int64_t i = threadIdx.x; i < HD; i += blockDim.x) {
        float o = 0;
        for (int r = 0; r < splits; ++r)
            if (gather[r][HD + 1] > 0) o += gather[r][i] * expf(gather[r][HD] - m_all);
        out[(t * s.heads + h) * HD + i] = __float2bfloat16(o / l_all);
    }
}

// Blocks a (token, head) pair's keys are split over: enough pairs x splits to give every SM a
// block or two, at most 4 (decode_splits: at most 8, a portable cluster); 1 (no split) from
// about as many pairs as SMs (docs/PERF.md: why 4, not 8).
int decode_splits(int64_t tokens, int64_t heads, const KernelConfig& config) {
    const int max_splits = std::min(kMaxSplits, config.decode_splits);
    int splits = 1;
    while (splits * 2 <= max_splits && tokens * heads * splits * 2 <= 2 * sm_count()) splits *= 2;
    return splits;
}

// Tokens [t0, t1) through the split kernel for few (token, head) pairs, the GQA form of the
// per-head kernel for many, else the per-head kernel (or its scalar form for other head sizes).
void attention_tokens(const AttentionArgs& a, int64_t t0, int64_t t1, Launch at) {
    if (t1 <= t0) return;
    const cpu::AttentionShape& s = a.shape;
    const int32_t *slot = a.slot, *pos = a.pos;
    const bf16 *q = a.q, *k_cache = a.k_cache, *v_cache = a.v_cache;
    bf16* out = a.out;
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
    // The keys a block may see: at most max_seq, or the window.
    const int64_t visible = s.sliding_window > 0 ? std::min(s.max_seq, s.sliding_window) : s.max_seq;
    const bool vec = s.head_dim == 64 || s.head_dim == 128 || s.head_dim == 256;
    const bool early = at.config->attention_early && a.decode;
    const int splits = decode_splits(t1 - t0, s.heads, *at.config);
    if (splits > 1 && vec) {
        // A block gets ceil(visible / splits) keys at most.
        const size_t smem = (size_t)(kWarps * s.head_dim + (visible + splits - 1) / splits) * sizeof(float);
        auto go = [&](auto kernel) {
            allow_smem((const void*)kernel, smem);
            launch_cluster(kernel, dim3((unsigned)splits, (unsigned)s.heads, (unsigned)(t1 - t0)), splits, kThreads, smem, at, s, t0,
                           slot, pos, q, k_cache, v_cache, out, early);
        };
        if (s.head_dim == 64) go(attention_split_kernel<64>);
        else if (s.head_dim == 128) go(attention_split_kernel<128>);
        else go(attention_split_kernel<256>);
        return;
    }
    if (try_attention_one_pass(a, t0, t1, early, at)) return;
    // attention_heads_kernel's shared memory for G heads: partial sums, then scores.
    auto heads_smem = [&](int64_t G) { return (size_t)(kWarps * G * s.head_dim + G * visible) * sizeof(float); };
    auto heads_kernel = [&](auto kernel, int64_t G) {
        const size_t smem = heads_smem(G);
        allow_smem((const void*)kernel, smem);
        launch(kernel, dim3((unsigned)(t1 - t0), (unsigned)(s.heads / G)), kThreads, smem, at, s, t0, slot, pos, q, k_cache, v_cache, out,
               early);
        TPX_LAUNCH_CHECK();
    };
    // GQA: one block for a KV head's G query heads where that still gives every SM a block
    // (tokens x kv_heads >= SMs; a batch-64 decode step) and their scores fit in shared memory.
    const int64_t G = s.heads / s.kv_heads;
    if (at.config->attention_gqa && (G == 2 || G == 4 || G == 8) && (s.head_dim == 64 || s.head_dim == 128) &&
        (t1 - t0) * s.kv_heads >= sm_count() && heads_smem(G) <= 227 * 1024) {
        if (s.head_dim == 128 && G == 4) heads_kernel(attention_heads_kernel<128, 4>, G);
        else if (s.head_dim == 128 && G == 2) heads_kernel(attention_heads_kernel<128, 2>, G);
        else if (s.head_dim == 128) heads_kernel(attention_heads_kernel<128, 8>, G);
        else if (G == 4) heads_kernel(attention_heads_kernel<64, 4>, G);
        else if (G == 2) heads_kernel(attention_heads_kernel<64, 2>, G);
        else heads_kernel(attention_heads_kernel<64, 8>, G);
        return;
    }
    if (s.head_dim == 64) heads_kernel(attention_heads_kernel<64, 1>, 1);
    else if (s.head_dim == 128) heads_kernel(attention_heads_kernel<128, 1>, 1);
    else if (s.head_dim == 256) heads_kernel(attention_heads_kernel<256, 1>, 1);
    else {
        const size_t smem = (size_t)((1 + kWarps) * s.head_dim + s.max_seq) * sizeof(float);
        allow_smem((const void*)attention_kernel, smem);
        launch(attention_kernel, dim3((unsigned)(t1 - t0), (unsigned)s.heads), kThreads, smem, at, s, t0, slot, pos, q, k_cache, v_cache, out);
        TPX_LAUNCH_CHECK();
    }
}

}  // namespace

#ifdef TPX_PROBE
void probe_set_attention(const ProbeSink& s) { probe_set_here(s); }
#endif

bool attention_fp8_applies(const AttentionArgs& a) {
    const cpu::AttentionShape& s = a.shape;
    if (!a.segments || !a.cublas || s.head_dim != 128 || !flash_attention_applies(s) || reinterpret_cast<uintptr_t>(a.out8.q) % 2) return false;
    int64_t next = 0;
    for (const AttentionSegment& seg : *a.segments) {
        if (seg.first != next || seg.count < kAttentionGemmMinTokens) return false;
        next += seg.count;
    }
    return next == s.tokens;
}

bool attention_rope_applies(const AttentionArgs& a, const KernelConfig& config) {
    const cpu::AttentionShape& s = a.shape;
    const int64_t q_width = s.heads * s.head_dim, kv_width = s.kv_heads * s.head_dim;
    const int64_t qs = a.rope.q_stride ? a.rope.q_stride : q_width, ks = a.k_stride ? a.k_stride : kv_width,
                  vs = a.v_stride ? a.v_stride : kv_width;
    return config.attention_rope && a.rope.inv_freq && a.decode && !a.out8.q && a.k && a.v && s.heads % s.kv_heads == 0 &&
           one_pass_takes(a, s.tokens, config) && decode_splits(s.tokens, s.heads, config) == 1 && qs % 8 == 0 && ks % 8 == 0 &&
           vs % 8 == 0 && qs >= q_width && ks >= kv_width && vs >= kv_width && aligned16({a.q, a.k, a.v, a.k_cache, a.v_cache});
}

bool attention_rope_pays(const AttentionArgs& a, const KernelConfig& config) {
    return one_pass_grid(a.shape, a.shape.tokens, config).four_warps || config.attention_mma;
}

void attention(const AttentionArgs& a, Launch at) {
    const cpu::AttentionShape& s = a.shape;
    const int32_t *slot = a.slot, *pos = a.pos;
    const bf16 *q = a.q, *k = a.k, *v = a.v;
    bf16 *k_cache = a.k_cache, *v_cache = a.v_cache, *out = a.out;
    const int64_t k_stride = a.k_stride, v_stride = a.v_stride;
    TPX_CHECK(s.heads % s.kv_heads == 0, "attention: heads must be a multiple of kv_heads");
    TPX_CHECK(s.head_dim <= 32 * kMaxDimsPerLane, "attention: head_dim above " + std::to_string(32 * kMaxDimsPerLane));
    TPX_CHECK(!a.out8.q || attention_fp8_applies(a), "attention: an e4m3 output needs every token in a long segment of head_dim 128");
    if (s.tokens == 0) return;
    if (a.rope.inv_freq) {  // the one-pass kernel rotates q and k and writes the caches' rows
        TPX_CHECK(attention_rope_applies(a, *at.config),
                  "attention: RoPE asked of a step the one-pass kernel does not take whole (" + std::to_string(s.tokens) + " tokens, head_dim " +
                      std::to_string(s.head_dim) + ", decode " + (a.decode ? "yes" : "no") + ", q/k/v strides " +
                      std::to_string(a.rope.q_stride) + "/" + std::to_string(a.k_stride) + "/" + std::to_string(a.v_stride) +
                      "; see attention_rope_applies)");
        try_attention_one_pass(a, 0, s.tokens, at.config->attention_early, at);
        return;
    }
    int64_t kv_width = s.kv_heads * s.head_dim;
    TPX_CHECK((k == nullptr) == (v == nullptr), "attention: k and v must both be given or both be in the cache already");
    if (k) {
        const int64_t ks = k_stride ? k_stride : kv_width, vs = v_stride ? v_stride : kv_width;
        if (kv_width % 8 == 0 && ks % 8 == 0 && vs % 8 == 0 && aligned16({k, v, k_cache, v_cache}))
            launch(kv_write_kernel<uint4>, (unsigned)s.tokens, 128, 0, at, kv_width / 8, ks / 8, vs / 8, s.max_seq, slot, pos,
                   reinterpret_cast<const uint4*>(k), reinterpret_cast<const uint4*>(v), reinterpret_cast<uint4*>(k_cache),
                   reinterpret_cast<uint4*>(v_cache));
        else
            launch(kv_write_kernel<bf16>, (unsigned)s.tokens, 256, 0, at, kv_width, ks, vs, s.max_seq, slot, pos, k, v, k_cache, v_cache);
        TPX_LAUNCH_CHECK();
    }
    if (!a.segments || !a.cublas) {
        attention_tokens(a, 0, s.tokens, at);
        return;
    }
    // Runs of short segments through the kernel, long segments through cuBLAS.
    int64_t run_start = 0;
    for (const AttentionSegment& seg : *a.segments) {
        TPX_CHECK(seg.first >= run_start && seg.first + seg.count <= s.tokens, "attention: segments out of order or beyond the batch");
        if (seg.count < kAttentionGemmMinTokens) continue;
        attention_tokens(a, run_start, seg.first, at);
        attention_prefill_segment(a.cublas, {s, seg, q, k_cache, v_cache, out, a.out8}, at);
        run_start = seg.first + seg.count;
    }
    attention_tokens(a, run_start, s.tokens, at);
}

}  // namespace tpx::cuda
