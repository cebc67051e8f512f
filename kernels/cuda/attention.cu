// Attention over the bf16 KV cache. A first kernel writes every token's K and V into its slot.
// Long prompt segments then attend through cuBLAS (S = Q K^T, masked softmax, O = P V, query
// rows in blocks so that only visible keys are multiplied); every other token (decode steps,
// short chunks) through a kernel with one block per (token, query head): scores for the visible
// positions into shared memory (fp32), a block-wide softmax, the weighted sum of V. Its vector
// form (head_dim 64, 128 or 256) reads K and V rows in 16-byte pieces, several keys in flight
// per warp; other head sizes take the scalar form.
#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include <mma.h>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void kv_write_kernel(int64_t kv_width, int64_t k_stride, int64_t v_stride, int64_t max_seq, const int32_t* slot, const int32_t* pos,
                                const bf16* k, const bf16* v, bf16* k_cache, bf16* v_cache) {
    int64_t t = blockIdx.x;
    int64_t at = ((int64_t)slot[t] * max_seq + pos[t]) * kv_width;
    for (int64_t i = threadIdx.x; i < kv_width; i += blockDim.x) {
        k_cache[at + i] = k[t * k_stride + i];
        v_cache[at + i] = v[t * v_stride + i];
    }
}

constexpr int kWarps = kThreads / 32;

// scores[j] = exp(scores[j] - max) for j < n, over the whole block; returns their sum. Its
// barriers also make every score visible to every warp.
__device__ float exp_scores(float* scores, int64_t n) {
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, scores[j]);
    mx = block_max(mx);
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
// takes kKeys keys per step, kUnroll steps of loads in flight before their sums.
template <int HD>
__global__ void __launch_bounds__(kThreads) attention_vec_kernel(cpu::AttentionShape s, int64_t t0, const int32_t* slot, const int32_t* pos,
                                                                 const bf16* q, const bf16* k_cache, const bf16* v_cache, bf16* out) {
    constexpr int kLanes = HD / 8, kKeys = 32 / kLanes;
    extern __shared__ float smem[];  // partial sums (kWarps x HD) | scores
    float* partial = smem;
    float* scores = smem + kWarps * HD;
    int64_t t = t0 + blockIdx.x, h = blockIdx.y;
    int64_t kv_width = s.kv_heads * HD, kvh = h / (s.heads / s.kv_heads);
    int64_t p = pos[t];
    int64_t first = s.sliding_window > 0 && p - s.sliding_window + 1 > 0 ? p - s.sliding_window + 1 : 0;
    int64_t n = p - first + 1;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = lane / kLanes, part = lane % kLanes;
    const bf16* kbase = k_cache + ((int64_t)slot[t] * s.max_seq + first) * kv_width + kvh * HD + part * 8;
    const bf16* vbase = v_cache + ((int64_t)slot[t] * s.max_seq + first) * kv_width + kvh * HD + part * 8;
    float qf[8];
    unpack8(*reinterpret_cast<const uint4*>(q + (t * s.heads + h) * HD + part * 8), qf);
    const float scale = rsqrtf((float)HD);
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[i] *= scale;
    const int64_t step = kWarps * kKeys;
    // The loop bounds are the same for the whole warp, so that every lane takes every shuffle.
    for (int64_t base = warp * kKeys; base < n; base += step * kUnroll) {
        uint4 kv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            int64_t j = base + sub + u * step;
            kv[u] = j < n ? *reinterpret_cast<const uint4*>(kbase + j * kv_width) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            float kf[8], d = 0;
            unpack8(kv[u], kf);
#pragma unroll
            for (int i = 0; i < 8; ++i) d += qf[i] * kf[i];
#pragma unroll
            for (int o = kLanes / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            int64_t j = base + sub + u * step;
            if (part == 0 && j < n) scores[j] = d;
        }
    }
    __syncthreads();
    float sum = exp_scores(scores, n);
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
    for (int64_t base = warp * kKeys; base < n; base += step * kUnroll) {
        uint4 vv[kUnroll];
        float pj[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            int64_t j = base + sub + u * step;
            bool in = j < n;
            vv[u] = in ? *reinterpret_cast<const uint4*>(vbase + j * kv_width) : make_uint4(0, 0, 0, 0);
            pj[u] = in ? scores[j] : 0.0f;
        }
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
        for (int o = 16; o >= kLanes; o >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    if (sub == 0)
#pragma unroll
        for (int i = 0; i < 8; ++i) partial[warp * HD + part * 8 + i] = acc[i];
    __syncthreads();
    for (int64_t i = threadIdx.x; i < HD; i += blockDim.x) {
        float o = 0;
        for (int w = 0; w < kWarps; ++w) o += partial[w * HD + i];
        out[(t * s.heads + h) * HD + i] = __float2bfloat16(o / sum);
    }
}

// Row i of head h of a block of query rows at positions p_first + i, over keys k_lo + j:
// P = softmax(S) where visible (causal, window), 0 elsewhere.
__global__ void masked_softmax_kernel(int64_t rows, int64_t n, int64_t p_first, int64_t k_lo, int64_t window, const float* S, bf16* P) {
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

// Flash attention for long prompt segments (head_dim 64 or 128): one block of kFlashWarps warps
// per (64 query rows, query head); each warp owns 16 rows. Per tile of 64 keys the block stages
// K and V in shared memory; each warp computes S = Q K^T in bf16 tensor-core fragments (fp32
// sums) and does the online softmax on them in registers: with the accumulator layout of
// mma.m16n8k16 (checked once at run time by flash_layout_ok(), else the cuBLAS path), lane l
// holds rows l / 4 and l / 4 + 8, so a row's max and sum take two shuffles within its quad. P goes
// to shared memory in bf16, and P V into O fragments kept in registers, rescaled per row by the
// change of max. Row strides are padded against bank conflicts. S and P never leave the SM.
constexpr int kFlashWarps = 4;
constexpr int kFlashRows = 16 * kFlashWarps;
constexpr int kFlashKeys = 64;
constexpr int kPPad = kFlashKeys + 8;

template <int D>
struct FlashSmem {
    static constexpr int kPad = D + 8;
    bf16 q[kFlashRows * kPad];
    bf16 k[kFlashKeys * kPad];
    bf16 v[kFlashKeys * kPad];
    bf16 p[kFlashWarps][16 * kPPad];
};

using AccFrag = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
// Element i of lane l's accumulator fragment (16 x 16 fp32) sits at this row and column.
__device__ __host__ inline int acc_row(int l, int i) { return l / 4 + 8 * ((i / 2) % 2); }
__device__ __host__ inline int acc_col(int l, int i) { return (l % 4) * 2 + i % 2 + 8 * (i / 4); }

__global__ void acc_layout_probe_kernel(int* out) {
    __shared__ float m[256];
    for (int i = threadIdx.x; i < 256; i += 32) m[i] = (float)i;
    __syncwarp();
    AccFrag f;
    nvcuda::wmma::load_matrix_sync(f, m, 16, nvcuda::wmma::mem_row_major);
    for (int i = 0; i < f.num_elements; ++i) out[threadIdx.x * f.num_elements + i] = (int)f.x[i];
}

template <int D>
__global__ void __launch_bounds__(32 * kFlashWarps, 3) flash_attention_kernel(int max_seq, int heads, int kv_heads, int window,
                                                                         AttentionSegment seg, const bf16* __restrict__ q,
                                                                         const bf16* __restrict__ k_cache, const bf16* __restrict__ v_cache,
                                                                         bf16* __restrict__ out) {
    namespace wmma = nvcuda::wmma;
    constexpr int kPad = FlashSmem<D>::kPad, kVec = D / 8, kPer = kFlashKeys * kVec / (32 * kFlashWarps);
    extern __shared__ __align__(128) unsigned char flash_raw[];
    FlashSmem<D>& sm = *reinterpret_cast<FlashSmem<D>*>(flash_raw);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.y, g = h / (heads / kv_heads);
    const int64_t qw = (int64_t)heads * D, kvw = (int64_t)kv_heads * D;
    const int r0 = blockIdx.x * kFlashRows, rows = min(kFlashRows, (int)seg.count - r0);
    const int p_first = (int)seg.start + r0, p_last = p_first + rows - 1;
    const int k_lo = window > 0 ? max(0, p_first - window + 1) : 0;
    const bf16* kg = k_cache + (seg.slot * max_seq) * kvw + g * D;
    const bf16* vg = v_cache + (seg.slot * max_seq) * kvw + g * D;
    for (int i = threadIdx.x; i < kFlashRows * kVec; i += blockDim.x) {  // Q rows, zero beyond the segment
        int r = i / kVec, c = i % kVec;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r < rows) val = reinterpret_cast<const uint4*>(q + (seg.first + r0 + r) * qw + (int64_t)h * D)[c];
        *reinterpret_cast<uint4*>(sm.q + r * kPad + c * 8) = val;
    }
    // This lane's two rows (j = 0, 1: quad row l / 4 and l / 4 + 8 of the warp's 16).
    int prow[2];
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < 2; ++j) prow[j] = warp * 16 + lane / 4 + 8 * j;
    AccFrag o[D / 16];
#pragma unroll
    for (int dt = 0; dt < D / 16; ++dt) wmma::fill_fragment(o[dt], 0.0f);
    const float scale = rsqrtf((float)D) * 1.4426950408889634f;  // exp2 domain
    bf16* pw = sm.p[warp];
    for (int kb = k_lo / kFlashKeys * kFlashKeys; kb <= p_last; kb += kFlashKeys) {
        __syncthreads();  // the previous tile's K and V are no longer read
        {  // K and V: all loads in flight, then the stores; zeros outside [k_lo, p_last] keep 0 x V finite
            uint4 nk[kPer], nv[kPer];
#pragma unroll
            for (int u = 0; u < kPer; ++u) {
                int i = threadIdx.x + u * 32 * kFlashWarps, r = i / kVec, c = i % kVec, key = kb + r;
                bool in = key >= k_lo && key <= p_last;
                nk[u] = in ? reinterpret_cast<const uint4*>(kg + key * kvw)[c] : make_uint4(0, 0, 0, 0);
                nv[u] = in ? reinterpret_cast<const uint4*>(vg + key * kvw)[c] : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < kPer; ++u) {
                int i = threadIdx.x + u * 32 * kFlashWarps, r = i / kVec, c = i % kVec;
                *reinterpret_cast<uint4*>(sm.k + r * kPad + c * 8) = nk[u];
                *reinterpret_cast<uint4*>(sm.v + r * kPad + c * 8) = nv[u];
            }
        }
        __syncthreads();
        if (warp * 16 >= rows) continue;  // this warp's rows are all beyond the segment
        // S = Q K^T for the warp's 16 rows and the tile's 64 keys, in registers.
        AccFrag sf[kFlashKeys / 16];
#pragma unroll
        for (int nt = 0; nt < kFlashKeys / 16; ++nt) wmma::fill_fragment(sf[nt], 0.0f);
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
            wmma::load_matrix_sync(a, sm.q + warp * 16 * kPad + ks * 16, kPad);
#pragma unroll
            for (int nt = 0; nt < kFlashKeys / 16; ++nt) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
                wmma::load_matrix_sync(b, sm.k + nt * 16 * kPad + ks * 16, kPad);
                wmma::mma_sync(sf[nt], a, b, sf[nt]);
            }
        }
        // Online softmax: a key is visible to a row at or after its position, inside the window.
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < kFlashKeys / 16; ++nt)
#pragma unroll
            for (int i = 0; i < sf[nt].num_elements; ++i) {
                const int j = (i / 2) % 2, key = kb + nt * 16 + acc_col(lane, i), pq = p_first + prow[j];
                const bool vis = prow[j] < rows && key <= pq && key >= k_lo && (window <= 0 || key > pq - window);
                sf[nt].x[i] = vis ? sf[nt].x[i] * scale : -INFINITY;
                mx[j] = fmaxf(mx[j], sf[nt].x[i]);
            }
        float alpha[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 1));
            mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 2));
            const float m_new = fmaxf(m[j], mx[j]);
            alpha[j] = m_new == -INFINITY ? 1.0f : exp2f(m[j] - m_new);
            m[j] = m_new;
        }
#pragma unroll
        for (int nt = 0; nt < kFlashKeys / 16; ++nt)
#pragma unroll
            for (int i = 0; i < sf[nt].num_elements; i += 2) {  // elements i, i + 1: adjacent columns of one row
                const int j = (i / 2) % 2;
                float e0 = sf[nt].x[i] == -INFINITY ? 0.0f : exp2f(sf[nt].x[i] - m[j]);
                float e1 = sf[nt].x[i + 1] == -INFINITY ? 0.0f : exp2f(sf[nt].x[i + 1] - m[j]);
                sum[j] += e0 + e1;
                *reinterpret_cast<__nv_bfloat162*>(pw + acc_row(lane, i) * kPPad + nt * 16 + acc_col(lane, i)) = __floats2bfloat162_rn(e0, e1);
            }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            sum[j] += __shfl_xor_sync(0xffffffffu, sum[j], 1);
            sum[j] += __shfl_xor_sync(0xffffffffu, sum[j], 2);
            l[j] = l[j] * alpha[j] + sum[j];
        }
        __syncwarp();
        // O = alpha O + P V.
#pragma unroll
        for (int dt = 0; dt < D / 16; ++dt)
#pragma unroll
            for (int i = 0; i < o[dt].num_elements; ++i) o[dt].x[i] *= alpha[(i / 2) % 2];
#pragma unroll
        for (int ks = 0; ks < kFlashKeys / 16; ++ks) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
            wmma::load_matrix_sync(a, pw + ks * 16, kPPad);
#pragma unroll
            for (int dt = 0; dt < D / 16; ++dt) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
                wmma::load_matrix_sync(b, sm.v + ks * 16 * kPad + dt * 16, kPad);
                wmma::mma_sync(o[dt], a, b, o[dt]);
            }
        }
        __syncwarp();  // P is read before the next tile's softmax writes it
    }
    if (warp * 16 >= rows) return;
#pragma unroll
    for (int dt = 0; dt < D / 16; ++dt)
#pragma unroll
        for (int i = 0; i < o[dt].num_elements; i += 2) {
            const int j = (i / 2) % 2;
            if (prow[j] >= rows) continue;
            const float inv = 1.0f / l[j];
            *reinterpret_cast<__nv_bfloat162*>(out + (seg.first + r0 + prow[j]) * qw + (int64_t)h * D + dt * 16 + acc_col(lane, i)) =
                __floats2bfloat162_rn(o[dt].x[i] * inv, o[dt].x[i + 1] * inv);
        }
}

// Whether wmma's accumulator fragments have the layout flash_attention_kernel assumes (checked
// once, outside graph capture; false while unknown).
bool flash_layout_ok(cudaStream_t stream) {
    static int state = -1;
    if (state >= 0) return state == 1;
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
    if (capturing != cudaStreamCaptureStatusNone) return false;
    int* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, 32 * 8 * sizeof(int)));
    acc_layout_probe_kernel<<<1, 32>>>(d);
    TPX_LAUNCH_CHECK();
    std::vector<int> h(32 * 8);
    CUDA_CHECK(cudaMemcpy(h.data(), d, h.size() * sizeof(int), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFree(d));
    state = 1;
    for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 8; ++i)
            if (h[l * 8 + i] != acc_row(l, i) * 16 + acc_col(l, i)) state = 0;
    return state == 1;
}

template <int D>
void flash_attention(const cpu::AttentionShape& s, const AttentionSegment& seg, const bf16* q, const bf16* k_cache, const bf16* v_cache,
                     bf16* out, cudaStream_t stream) {
    static bool raised = false;
    const size_t smem = sizeof(FlashSmem<D>);
    if (!raised) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        raised = true;
    }
    dim3 grid((unsigned)((seg.count + kFlashRows - 1) / kFlashRows), (unsigned)s.heads);
    flash_attention_kernel<D><<<grid, 32 * kFlashWarps, smem, stream>>>((int)s.max_seq, (int)s.heads, (int)s.kv_heads, (int)s.sliding_window,
                                                                        seg, q, k_cache, v_cache, out);
    TPX_LAUNCH_CHECK();
}

constexpr int64_t kGemmRowBlock = 512;

// The per-head operands of the batched GEMMs, computed on the device (asynchronous, capturable):
// [K_g | Q_h | S_h | V_g | P_h | O_h] for every query head h of kv head g = h / G.
__global__ void attention_ptrs_kernel(int64_t heads, int64_t G, int64_t d, int64_t block, const bf16* K, const bf16* Q, float* S,
                                      const bf16* V, bf16* P, bf16* O, const void** ptrs) {
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
        attention_ptrs_kernel<<<1, 128, 0, stream>>>(H, G, d, rows * n, k_cache + (seg.slot * s.max_seq + k_lo) * kvw,
                                                      q + (seg.first + r0) * qw, S, v_cache + (seg.slot * s.max_seq + k_lo) * kvw, P,
                                                      out + (seg.first + r0) * qw, ptrs);
        TPX_LAUNCH_CHECK();
        // Column-major views, all heads in one batched call: S_h^T [n, rows] = (K_g [d, n])^T . Q_h^T [d, rows].
        CUBLAS_CHECK(cublasGemmBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)rows, (int)d, &scale, ptrs, CUDA_R_16BF, (int)kvw,
                                         ptrs + H, CUDA_R_16BF, (int)qw, &zero, (void* const*)(ptrs + 2 * H), CUDA_R_32F, (int)n, (int)H,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        masked_softmax_kernel<<<dim3((unsigned)rows, (unsigned)H), 256, 0, stream>>>(rows, n, p_first, k_lo, s.sliding_window, S, P);
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

// Tokens [t0, t1) through the per-(token, head) kernel.
void attention_tokens(const cpu::AttentionShape& s, int64_t t0, int64_t t1, const int32_t* slot, const int32_t* pos, const bf16* q,
                      const bf16* k_cache, const bf16* v_cache, bf16* out, cudaStream_t stream) {
    if (t1 <= t0) return;
    dim3 grid((unsigned)(t1 - t0), (unsigned)s.heads);
    auto launch = [&](auto kernel, size_t smem) {
        static std::map<const void*, size_t> raised;  // the shared memory each kernel was allowed so far
        size_t& allowed = raised.emplace((const void*)kernel, 48 * 1024).first->second;
        TPX_CHECK(smem <= 227 * 1024, "attention: max_seq_len " + std::to_string(s.max_seq) + " needs " + std::to_string(smem) +
                                          " bytes of shared memory for the scores, above the 227 KiB a block may have");
        if (smem > allowed) {
            CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            allowed = smem;
        }
        kernel<<<grid, kThreads, smem, stream>>>(s, t0, slot, pos, q, k_cache, v_cache, out);
        TPX_LAUNCH_CHECK();
    };
    size_t vec_smem = (size_t)(kWarps * s.head_dim + s.max_seq) * sizeof(float);
    if (s.head_dim == 64) launch(attention_vec_kernel<64>, vec_smem);
    else if (s.head_dim == 128) launch(attention_vec_kernel<128>, vec_smem);
    else if (s.head_dim == 256) launch(attention_vec_kernel<256>, vec_smem);
    else launch(attention_kernel, (size_t)((1 + kWarps) * s.head_dim + s.max_seq) * sizeof(float));
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
        kv_write_kernel<<<(unsigned)s.tokens, 256, 0, stream>>>(kv_width, k_stride ? k_stride : kv_width, v_stride ? v_stride : kv_width,
                                                                s.max_seq, slot, pos, k, v, k_cache, v_cache);
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
        const bool flash = (s.head_dim == 128 || s.head_dim == 64) && s.max_seq < (1ll << 30) && flash_layout_ok(stream);
        if (flash && s.head_dim == 128) flash_attention<128>(s, seg, q, k_cache, v_cache, out, stream);
        else if (flash) flash_attention<64>(s, seg, q, k_cache, v_cache, out, stream);
        else attention_gemm(cublas, s, seg, q, k_cache, v_cache, out, stream);
        run_start = seg.first + seg.count;
    }
    attention_tokens(s, run_start, s.tokens, slot, pos, q, k_cache, v_cache, out, stream);
}

}  // namespace tpx::cuda
