// Quantized decode GEMVs by fp32 FMAs ([backend.tuning] quant_mma = false, and the layouts the
// tensor-core GEMV of quant_gemv_mma.cu does not take; quant_gemv() picks), the bf16 GEMV's
// design (linear.cu) over packed weights: one warp per
// output row (two with an epilogue), each lane streaming 16-byte chunks of the row (__ldcs,
// kUnroll in flight), fp32 sums reduced across the warp. A chunk is dequantized in registers:
// FP8 through the hardware's e4m3x2 -> f16x2 conversion; GPTQ nibbles by the exponent trick,
// (w & 0xf << 4j) | 0x4b000000 is the float 2^23 + 16^j q, and one FFMA by 16^-j minus
// (2^(23 - 4j) + zero) gives q - zero exactly; so an int4 value costs a LOP3 and two FFMAs.
// Products of x (bf16) with q - zero or an FP8 value are exact in fp32, so the chunk's sum
// differs from the twin's only by the lanes' order of chunks. Act-order weights read x through
// their permutation, gathered into shared memory once per block.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/quant_gemv.cuh"

namespace tpx::cuda {

// The gather's limit.
size_t quant::smem_limit() { return std::min<size_t>(kQuantGemvMaxSmem, optin_smem()); }

namespace {

using Format = QuantWeightView::Format;
using namespace quant;
constexpr int kUnroll = 4;

// 16 FP8 values of a chunk to fp32.
__device__ inline void fp8x16(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w[i] >> (16 * h)), __NV_E4M3);
            const float2 p = __half22float2(*reinterpret_cast<const __half2*>(&r));
            f[4 * i + 2 * h] = p.x, f[4 * i + 2 * h + 1] = p.y;
        }
    }
}

// Eight values of x: fp32 from shared memory (the norm prologue's, already bf16 values: no
// unpacking in the dot products), or bf16 from shared memory (the act-order gather) or global memory.
template <bool kShared>
__device__ inline void load_x8(const float* p, float* f) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
template <bool kShared>
__device__ inline void load_x8(const bf16* p, float* f) {
    if constexpr (kShared) unpack8(*reinterpret_cast<const uint4*>(p), f);
    else unpack8(__ldg(reinterpret_cast<const uint4*>(p)), f);
}

// Row n of an FP8 weight dotted with tokens' x: acc[t] += sum over the lane's chunks.
template <int T, bool kShared, typename X>
__device__ inline void dot_fp8(const cpu::Fp8View& w, int64_t n, const X* x, int tokens, float* acc) {
    const int lane = threadIdx.x & 31;
    const int64_t K = w.l.K, chunks = K / cpu::kFp8Chunk;
    const uint4* row = reinterpret_cast<const uint4*>(w.w + n * K);
    const float* scale = w.scale + (n / w.l.rows_per_scale) * w.l.scale_cols;
    // The chunk's scale column without a 64-bit division in the loop (checkpoints' blocks are 128).
    const unsigned block_in = (unsigned)w.l.block_in, in_offset = (unsigned)w.l.in_offset;
    const bool pow2 = (block_in & (block_in - 1)) == 0;
    const int shift = __ffs((int)block_in) - 1;
    for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
        uint4 wv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
            if (c0 + 32 * u < chunks) wv[u] = __ldcs(row + c0 + 32 * u);  // streamed: read once per step
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t c = c0 + 32 * u;
            if (c >= chunks) break;
            const unsigned col = (unsigned)c * (unsigned)cpu::kFp8Chunk + in_offset;
            const float s = __ldg(scale + (pow2 ? col >> shift : col / block_in));
            float f[16];
            fp8x16(wv[u], f);
#pragma unroll
            for (int t = 0; t < T; ++t) {
                if (t >= tokens) break;
                float xf[16], d = 0.0f;
                load_x8<kShared>(x + t * K + c * 16, xf);
                load_x8<kShared>(x + t * K + c * 16 + 8, xf + 8);
#pragma unroll
                for (int j = 0; j < 16; ++j) d += f[j] * xf[j];
                acc[t] += __fmul_rn(d, s);
            }
        }
    }
}

// Row n of a GPTQ weight dotted with tokens' x (xs: the gather of x in the row's segment's
// order, [tokens][Kp]; else x itself).
template <int T, bool kShared, typename X>
__device__ inline void dot_gptq(const cpu::GptqView& w, int64_t n, const X* xs, int tokens, float* acc) {
    const int lane = threadIdx.x & 31;
    const int64_t Kp = w.l.Kp, chunks = Kp / cpu::kGptqChunk, xstride = kShared ? Kp : w.l.K;
    const int s = cpu::gptq_segment(w.l, n);
    const uint4* qw = reinterpret_cast<const uint4*>(w.qw);  // chunk c of row n: qw[gptq_word(l, n, 4c) / 4]
    const int32_t* chunk_group = w.chunk_group + s * chunks;
    for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
        uint4 wv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
            if (c0 + 32 * u < chunks) wv[u] = __ldcs(qw + cpu::gptq_word(w.l, n, 4 * (c0 + 32 * u)) / 4);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t c = c0 + 32 * u;
            if (c >= chunks) break;
            const int g = __ldg(chunk_group + c);
            const float scale = __half2float(__ushort_as_half(__ldg(w.scales + n * w.l.G + g)));
            const float zero = w.zeros ? (float)__ldg(w.zeros + n * w.l.G + g) : 8.0f;
            // q - zero = (2^23 + 16^j q) 16^-j - (2^(23 - 4j) + zero), exactly.
            const float sub[4] = {8388608.0f + zero, 524288.0f + zero, 32768.0f + zero, 2048.0f + zero};
            const float inv[4] = {1.0f, 0.0625f, 0.00390625f, 0.000244140625f};
            const uint32_t words[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
            float qz[32];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const uint32_t src = j < 4 ? words[i] : words[i] >> 16;
                    const float f = __uint_as_float((src & (0xfu << (4 * (j & 3)))) | 0x4b000000u);
                    qz[8 * i + j] = __fmaf_rn(f, inv[j & 3], -sub[j & 3]);
                }
#pragma unroll
            for (int t = 0; t < T; ++t) {
                if (t >= tokens) break;
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    float xf[8];
                    load_x8<kShared>(xs + t * xstride + c * cpu::kGptqChunk + 8 * i, xf);
#pragma unroll
                    for (int j = 0; j < 8; ++j) d += qz[8 * i + j] * xf[j];
                }
                acc[t] += __fmul_rn(d, scale);
            }
        }
    }
}

// One launch: warps take items grid-stride. kGather: GPTQ act-order, x gathered into shared
// memory per segment first.
template <Format F, GemvEpilogue E, int T, bool kGather, bool kNorm>
__global__ void __launch_bounds__(kThreads) quant_gemv_kernel(QuantGemvArgs a, int64_t items, int64_t pair) {
    static_assert(!kNorm || (T == 1 && !kGather), "the norm prologue is for one token, in order");
    constexpr int R = E == GemvEpilogue::kNone ? 1 : 2;
    extern __shared__ uint4 smem[];
    bf16* xs = reinterpret_cast<bf16*>(smem);
    pdl_entry();  // see common.cuh
    const int tokens = (int)a.tokens;
    if constexpr (kGather) {
        const cpu::GptqView& w = a.w.gptq;
        const int64_t Kp = w.l.Kp;
        for (int s = 0; s < w.l.segments; ++s)  // xs [segment][token][Kp]
            for (int kp = threadIdx.x; kp < Kp; kp += kThreads) {
                const int32_t k = __ldg(w.perm + s * Kp + kp);
                for (int t = 0; t < tokens; ++t) xs[(s * tokens + t) * Kp + kp] = k >= 0 ? a.x[t * w.l.K + k] : __float2bfloat16(0.0f);
            }
        __syncthreads();
    }
    float* xn = reinterpret_cast<float*>(smem);  // the norm's x: [K] floats, then its bf16 staging
    if constexpr (kNorm) norm_into(a.w.K(), a.norm, reinterpret_cast<uint4*>(xn + a.w.K()), xn);
    const int lane = threadIdx.x & 31;
    const int64_t half = a.rope.head_dim / 2;
    for (int64_t item = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5); item < items; item += (int64_t)gridDim.x * kWarps) {
        int64_t rows[2];
        item_rows<E>(item, pair, half, rows);
        float acc[R][T];
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
            for (int t = 0; t < T; ++t) acc[r][t] = 0.0f;
            if constexpr (F == Format::kFp8) {
                if constexpr (kNorm) dot_fp8<T, true>(a.w.fp8, rows[r], (const float*)xn, tokens, acc[r]);
                else dot_fp8<T, false>(a.w.fp8, rows[r], a.x, tokens, acc[r]);
            } else if constexpr (kNorm) {
                dot_gptq<T, true>(a.w.gptq, rows[r], (const float*)xn, tokens, acc[r]);
            } else {
                const bf16* x = kGather ? xs + cpu::gptq_segment(a.w.gptq.l, rows[r]) * tokens * a.w.gptq.l.Kp : a.x;
                dot_gptq<T, kGather>(a.w.gptq, rows[r], x, tokens, acc[r]);
            }
#pragma unroll
            for (int t = 0; t < T; ++t) acc[r][t] = warp_sum(acc[r][t]);
        }
        if (lane != 0) continue;
        if constexpr (T == 1) {
            float one[2] = {acc[0][0], acc[R - 1][0]};
            write_item<E>(a, item, rows, one);
        } else {
            for (int t = 0; t < tokens; ++t)
                a.y[t * a.w.N() + rows[0]] = __float2bfloat16(acc[0][t] + (a.bias ? __bfloat162float(a.bias[rows[0]]) : 0.0f));
        }
    }
}

size_t gather_bytes(const QuantGemvArgs& a) {
    if (a.has_norm) return (size_t)a.w.K() * (sizeof(float) + sizeof(bf16));  // the normalised x and its staging
    if (a.w.format != Format::kGptq || !a.w.gptq.perm) return 0;
    return (size_t)a.w.gptq.l.segments * a.tokens * a.w.gptq.l.Kp * sizeof(bf16);
}

template <Format F, GemvEpilogue E, int T, bool kGather, bool kNorm = false>
void launch_quant(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at) {
    const auto kernel = quant_gemv_kernel<F, E, T, kGather, kNorm>;
    const size_t smem = gather_bytes(a);
    static const int resident = [&] {  // once a process: one device each
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_limit()));
        int per_sm = 0;
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
        return sm_count() * std::max(1, per_sm);
    }();
    // One item a warp; a block that gathers or normalises x pays that once and strides (blocks of
    // at most 2 an SM, or what is resident at once: the weights of every row still stream).
    unsigned blocks = blocks_for(items, kWarps);
    if (kGather) blocks = std::min<unsigned>(blocks, 2 * sm_count());
    if (kNorm) blocks = std::min<unsigned>(blocks, (unsigned)resident);
    launch(kernel, blocks, kThreads, smem, at, a, items, pair);
    TPX_LAUNCH_CHECK();
}

template <Format F, bool kGather>
void dispatch(const QuantGemvArgs& a, int64_t items, int64_t pair, const Launch& at) {
    if constexpr (!kGather) {
        if (a.has_norm && a.epi == GemvEpilogue::kSwiglu) return launch_quant<F, GemvEpilogue::kSwiglu, 1, false, true>(a, items, pair, at);
        if (a.has_norm && a.epi == GemvEpilogue::kRopeKv) return launch_quant<F, GemvEpilogue::kRopeKv, 1, false, true>(a, items, pair, at);
        if (a.has_norm) return launch_quant<F, GemvEpilogue::kNone, 1, false, true>(a, items, pair, at);
    }
    if (a.epi == GemvEpilogue::kSwiglu) return launch_quant<F, GemvEpilogue::kSwiglu, 1, kGather>(a, items, pair, at);
    if (a.epi == GemvEpilogue::kRopeKv) return launch_quant<F, GemvEpilogue::kRopeKv, 1, kGather>(a, items, pair, at);
    if (a.tokens == 1) return launch_quant<F, GemvEpilogue::kNone, 1, kGather>(a, items, pair, at);
    if (a.tokens <= 2) return launch_quant<F, GemvEpilogue::kNone, 2, kGather>(a, items, pair, at);
    if (a.tokens <= 4) return launch_quant<F, GemvEpilogue::kNone, 4, kGather>(a, items, pair, at);
    launch_quant<F, GemvEpilogue::kNone, 8, kGather>(a, items, pair, at);
}

}  // namespace

bool quant_gemv_applies(const QuantGemvArgs& a) {
    if (a.tokens < 1 || a.tokens > kQuantGemvMaxTokens || (a.epi != GemvEpilogue::kNone && a.tokens != 1)) return false;
    if (a.has_norm) {
        const GemvNorm& nm = a.norm;
        // (up to the rmsnorm vector kernel's width: its sums are the ones norm_into repeats)
        if (a.tokens != 1 || nm.sum.ll || a.w.K() > kRmsnormVecMaxWidth || (a.w.format == Format::kGptq && a.w.gptq.perm) || !aligned16({nm.x, nm.weight}) ||
            (nm.residual && !aligned16({nm.residual, nm.residual_out})))
            return false;
    } else if (!aligned16({a.x})) {
        return false;
    }
    if (a.w.K() % 8 != 0 || gather_bytes(a) > smem_limit()) return false;
    if (a.w.format == Format::kFp8) return aligned16({a.w.fp8.w}) && a.w.fp8.l.K % cpu::kFp8Chunk == 0;
    return aligned16({a.w.gptq.qw});
}

bool quant_gemv_on_tensor_cores(const QuantGemvArgs& a, const KernelConfig& config) {
    return config.quant_mma && quant_gemv_applies(a) && mma_applies(a);
}

void quant_gemv(const QuantGemvArgs& a, Launch at) {
    TPX_CHECK(quant_gemv_applies(a), "quant_gemv: needs 1 to " + std::to_string(kQuantGemvMaxTokens) +
                                         " tokens (one with an epilogue), K a multiple of 16, 16-byte aligned x and weights, and the act-order gather within " +
                                         std::to_string(kQuantGemvMaxSmem) + " bytes of shared memory");
    const int64_t N = a.w.N();
    int64_t items = N, pair = 0;
    if (a.epi == GemvEpilogue::kSwiglu) {
        TPX_CHECK(N % 2 == 0, "quant_gemv: SwiGLU needs an even output width");
        items = pair = N / 2;
    } else if (a.epi == GemvEpilogue::kRopeKv) {
        const GemvRopeKv& rk = a.rope;
        TPX_CHECK(rk.head_dim % 2 == 0 && N == (rk.heads + 2 * rk.kv_heads) * rk.head_dim,
                  "quant_gemv: RoPE epilogue: output width is not (heads + 2 kv_heads) x head_dim");
        items = N / 2;
    }
    if (N == 0) return;
    if (at.config->quant_mma && mma_applies(a)) return mma_gemv(a, items, pair, at);
    if (a.w.format == Format::kFp8) dispatch<Format::kFp8, false>(a, items, pair, at);
    else if (a.w.gptq.perm) dispatch<Format::kGptq, true>(a, items, pair, at);
    else dispatch<Format::kGptq, false>(a, items, pair, at);
}

}  // namespace tpx::cuda
