// Attention for long prompt segments whose K and V are already in the caches (attention() in
// attention.cu writes them and sends each segment of at least kAttentionGemmMinTokens tokens
// here): a flash kernel on mma.sync for head_dim 64 and 128, batched cuBLAS GEMMs with a masked
// softmax between them for other head sizes. Both only multiply the keys each query row sees.
#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/quant_act.cuh"

namespace tpx::cuda {
namespace {

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

__device__ inline uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// The flash kernel's steps on one tile of keys, each on the warp's registers (inlined, so that
// the fragments stay in registers; the arithmetic and its order are the kernel's).

// S = Q K^T for the warp's RT row tiles against the tile's keys (sk, kFlashKeys rows).
template <int D, int N, int RT, int QF>
__device__ __forceinline__ void flash_scores(float (&s)[RT][N / 8][4], const uint32_t (&qf)[QF][4], const bf16* sq, const bf16* sk,
                                             int wrow, int lane) {
    constexpr int kPad = D + 8;
    // Row and column of this lane's ldmatrix address within a 16 x 16 piece: A (row-major) walks
    // rows 0..15 then the column half; K walks the column half first.
    const int a_row = (lane % 8) + ((lane / 8) % 2) * 8, a_col = (lane / 16) * 8;
    const int k_row = (lane % 8) + (lane / 16) * 8, k_col = ((lane / 8) % 2) * 8;
#pragma unroll
    for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) s[rt][nt][0] = s[rt][nt][1] = s[rt][nt][2] = s[rt][nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t qa[RT][4];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
            if constexpr (RT == 1) qa[rt][0] = qf[ks][0], qa[rt][1] = qf[ks][1], qa[rt][2] = qf[ks][2], qa[rt][3] = qf[ks][3];
            else ldmatrix_x4(qa[rt], sq + (wrow + rt * 16 + a_row) * kPad + ks * 16 + a_col);
        }
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            uint32_t b[4];
            ldmatrix_x4(b, sk + (np * 16 + k_row) * kPad + ks * 16 + k_col);
#pragma unroll
            for (int rt = 0; rt < RT; ++rt) {
                mma_bf16_16816(s[rt][2 * np], qa[rt], b[0], b[1]);
                mma_bf16_16816(s[rt][2 * np + 1], qa[rt], b[2], b[3]);
            }
        }
    }
}

// Scores of keys a row does not see set to -inf: a key is visible to a row at or after its
// position, inside the window. Only tiles that cross the diagonal or the window's edge are masked.
template <int N, int RT>
__device__ __forceinline__ void flash_mask(float (&s)[RT][N / 8][4], const int (&prow)[RT][2], int kb, int p_first, int p_last, int wrow,
                                           int rows, int k_lo, int window, int lane) {
    if (kb + N - 1 > p_first + wrow || (window > 0 && kb <= p_last - window)) {
#pragma unroll
        for (int rt = 0; rt < RT; ++rt)
#pragma unroll
            for (int nt = 0; nt < N / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = e / 2, key = kb + nt * 8 + (lane % 4) * 2 + (e % 2), pq = p_first + prow[rt][j];
                    const bool vis = prow[rt][j] < rows && key <= pq && key >= k_lo && (window <= 0 || key > pq - window);
                    if (!vis) s[rt][nt][e] = -INFINITY;
                }
    }
}

// The online softmax over one tile: the running max m and sum l of each of the lane's rows
// updated, O rescaled, and P (bf16, exp2 domain) left in pf as the A fragments of O += P V.
template <int D, int N, int RT>
__device__ __forceinline__ void flash_softmax(float (&s)[RT][N / 8][4], float (&m)[RT][2], float (&l)[RT][2], float (&o)[RT][D / 8][4],
                                              uint32_t (&pf)[RT][N / 16][4], float scale) {
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
        float mx[2] = {-INFINITY, -INFINITY}, alpha[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt)
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
        for (int nt = 0; nt < N / 8; ++nt)
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
}

// O += P V for the tile's keys (sv, transposed by ldmatrix).
template <int D, int N, int RT>
__device__ __forceinline__ void flash_pv(float (&o)[RT][D / 8][4], const uint32_t (&pf)[RT][N / 16][4], const bf16* sv, int lane) {
    constexpr int kPad = D + 8;
    const int a_row = (lane % 8) + ((lane / 8) % 2) * 8, a_col = (lane / 16) * 8;
#pragma unroll
    for (int kk = 0; kk < N / 16; ++kk)
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

// The lane's rows of O / l (those inside the segment) into out, row pointer `row0` for block row 0.
template <int D, int RT>
__device__ __forceinline__ void flash_store(const float (&o)[RT][D / 8][4], const float (&l)[RT][2], const int (&prow)[RT][2], int rows,
                                            bf16* row0, int64_t qw, int lane) {
#pragma unroll
    for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            if (prow[rt][j] >= rows) continue;
            const float inv = 1.0f / l[rt][j];
            bf16* orow = row0 + prow[rt][j] * qw + (lane % 4) * 2;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                *reinterpret_cast<uint32_t*>(orow + dt * 8) = pack_bf16x2(o[rt][dt][2 * j] * inv, o[rt][dt][2 * j + 1] * inv);
        }
}

// As flash_store, the rows' bf16 values written in their e4m3 form instead (quant_act.cuh; D =
// 128: a head's row is one 128-column block of the output, held by the four lanes of a quad; its
// values rounded to bf16 first, as flash_store stores them): codes from q_row0 (rows qw bytes
// apart), row i's scale at s_row0[i]. Every lane of the warp calls it.
template <int D, int RT>
__device__ __forceinline__ void flash_store_fp8(const float (&o)[RT][D / 8][4], const float (&l)[RT][2], const int (&prow)[RT][2], int rows,
                                                uint8_t* q_row0, float* s_row0, int64_t qw, int lane) {
#pragma unroll
    for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const bool in = prow[rt][j] < rows;  // (the same for the four lanes of a quad)
            const float inv = in ? 1.0f / l[rt][j] : 0.0f;
            float amax = 0.0f;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                amax = fmaxf(amax, fmaxf(fabsf(round_bf16(o[rt][dt][2 * j] * inv)), fabsf(round_bf16(o[rt][dt][2 * j + 1] * inv))));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
            if (!in) continue;
            if (lane % 4 == 0) s_row0[prow[rt][j]] = act_scale(amax);
            const float qinv = act_inverse(amax);
            uint8_t* qrow = q_row0 + prow[rt][j] * qw + (lane % 4) * 2;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                *reinterpret_cast<uint16_t*>(qrow + dt * 8) =
                    (uint16_t)to_e4m3x2(round_bf16(o[rt][dt][2 * j] * inv), round_bf16(o[rt][dt][2 * j + 1] * inv), qinv);
        }
}

template <int D, int W, int kFlashKeys, int RT>
__global__ void __launch_bounds__(32 * W, RT == 1 ? (kFlashKeys <= 32 ? 12 : 8) / W : 8 / W / RT * 2)
    flash_attention_kernel(int max_seq, int heads, int kv_heads, int window, AttentionSegment seg, const bf16* __restrict__ q,
                           const bf16* __restrict__ k_cache, const bf16* __restrict__ v_cache, bf16* __restrict__ out, ActFp8 out8,
                           int64_t tokens) {
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
    const int a_row = (lane % 8) + ((lane / 8) % 2) * 8, a_col = (lane / 16) * 8;  // as flash_scores'

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
        float s[RT][kFlashKeys / 8][4];
        flash_scores<D, kFlashKeys, RT>(s, qf, sm.q, sm.k[buf], wrow, lane);
        flash_mask<kFlashKeys, RT>(s, prow, kb, p_first, p_last, wrow, rows, k_lo, window, lane);
        uint32_t pf[RT][kFlashKeys / 16][4];
        flash_softmax<D, kFlashKeys, RT>(s, m, l, o, pf, scale);
        flash_pv<D, kFlashKeys, RT>(o, pf, sm.v[buf], lane);
    }
    if (!active) return;
    if constexpr (D == 128) {
        if (out8.q) {  // (head h's rows are block h of the e4m3 form: scales [heads, tokens])
            flash_store_fp8<D, RT>(o, l, prow, rows, out8.q + (seg.first + r0) * qw + (int64_t)h * D, out8.s + h * tokens + seg.first + r0,
                                   qw, lane);
            return;
        }
    }
    flash_store<D, RT>(o, l, prow, rows, out + (seg.first + r0) * qw + (int64_t)h * D, qw, lane);
}

template <int D, int W, int N, int RT>
void flash_attention(const PrefillSegmentArgs& a, Launch at) {
    const cpu::AttentionShape& s = a.shape;
    const AttentionSegment& seg = a.seg;
    static bool raised = false;
    const size_t smem = sizeof(FlashSmem<D, W, N, RT>);
    if (!raised) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<D, W, N, RT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        raised = true;
    }
    // Blocks start in index order, x fastest: every head's latest (longest) row block first,
    // then the next latest, so that the longest blocks do not start last.
    dim3 grid((unsigned)s.heads, (unsigned)((seg.count + 16 * W * RT - 1) / (16 * W * RT)));
    launch(flash_attention_kernel<D, W, N, RT>, grid, 32 * W, smem, at, (int)s.max_seq, (int)s.heads, (int)s.kv_heads,
                                                                        (int)s.sliding_window, seg, a.q, a.k_cache, a.v_cache, a.out, a.out8,
                                                                        s.tokens);
    TPX_LAUNCH_CHECK();
}

constexpr int64_t kGemmRowBlock = 512;

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

void attention_gemm(cublasHandle_t h, const PrefillSegmentArgs& a, Launch at) {
    const cpu::AttentionShape& s = a.shape;
    const AttentionSegment& seg = a.seg;
    const bf16 *q = a.q, *k_cache = a.k_cache, *v_cache = a.v_cache;
    bf16* out = a.out;
    const cudaStream_t stream = at.stream;
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
        launch(attention_ptrs_kernel, 1, 128, 0, at, H, G, d, rows * n, k_cache + (seg.slot * s.max_seq + k_lo) * kvw,
                                                      q + (seg.first + r0) * qw, S, v_cache + (seg.slot * s.max_seq + k_lo) * kvw, P,
                                                      out + (seg.first + r0) * qw, ptrs);
        TPX_LAUNCH_CHECK();
        // Column-major views, all heads in one batched call: S_h^T [n, rows] = (K_g [d, n])^T . Q_h^T [d, rows].
        CUBLAS_CHECK(cublasGemmBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)rows, (int)d, &scale, ptrs, CUDA_R_16BF, (int)kvw,
                                         ptrs + H, CUDA_R_16BF, (int)qw, &zero, (void* const*)(ptrs + 2 * H), CUDA_R_32F, (int)n, (int)H,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        launch(masked_softmax_kernel, dim3((unsigned)rows, (unsigned)H), 256, 0, at, rows, n, p_first, k_lo, s.sliding_window, S, P);
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

}  // namespace

bool flash_attention_applies(const cpu::AttentionShape& s) { return (s.head_dim == 128 || s.head_dim == 64) && s.max_seq < (1ll << 30); }

void attention_prefill_segment(cublasHandle_t cublas, const PrefillSegmentArgs& a, Launch at) {
    const cpu::AttentionShape& s = a.shape;
    const bool flash = flash_attention_applies(s);
    // Row tiles a warp: 2 (default) or 1 (flash_tile = "1x64"; tpx-kbench --flash compares them).
    const bool one_row_tile = at.config->flash_tile == "1x64";
    // Short segments (a 128-token prompt): 32 query rows a block (2 warps, one row tile), so
    // that the grid has heads x count / 32 blocks rather than one a head (flash_short_max sets
    // the length, 0 turns it off; tpx-kbench --flash compares).
    const int64_t short_max = at.config->flash_short_max;
    const bool short_seg = a.seg.count <= short_max;
    TPX_CHECK(!a.out8.q || (flash && s.head_dim == 128), "attention: an e4m3 output needs the flash kernel of head_dim 128");
    if (flash && short_seg && s.head_dim == 128) flash_attention<128, 2, 64, 1>(a, at);
    else if (flash && short_seg) flash_attention<64, 2, 64, 1>(a, at);
    else if (flash && s.head_dim == 128 && one_row_tile) flash_attention<128, 4, 64, 1>(a, at);
    else if (flash && s.head_dim == 128) flash_attention<128, 4, 64, 2>(a, at);
    else if (flash && one_row_tile) flash_attention<64, 4, 64, 1>(a, at);
    else if (flash) flash_attention<64, 4, 64, 2>(a, at);
    else attention_gemm(cublas, a, at);
}

}  // namespace tpx::cuda
