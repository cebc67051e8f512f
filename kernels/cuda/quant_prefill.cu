// Quantized linears at prefill: the weight dequantized to bf16, or FP8 activations into
// cuBLASLt's block-scaled FP8 GEMM. The quantization of x repeats cpu::quantize_act_fp8's
// arithmetic (quant_act.cuh), so the two agree bit for bit.
#include <cuda_fp8.h>

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant_act.cuh"
#include "kernels/cuda/quant_prefill.h"

namespace tpx::cuda {
namespace {

using Format = QuantWeightView::Format;
constexpr int kThreads = 256;

// A block a row, a thread 16 bytes (16 values of one scale block: K, block_in and in_offset are
// multiples of 16) at a time, written as 32 where both are 16-byte aligned (vec), else byte by
// byte.
__global__ void dequant_fp8_kernel(cpu::Fp8View w, bf16* dst, bool vec) {
    pdl_entry();
    const int64_t n = blockIdx.x, K = w.l.K;
    const float* scale = w.scale + (n / w.l.rows_per_scale) * w.l.scale_cols;
    if (!vec) {
        for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
            const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)w.w[n * K + k], __NV_E4M3);
            dst[n * K + k] = __float2bfloat16(__half2float(__half(h)) * scale[(k + w.l.in_offset) / w.l.block_in]);
        }
        return;
    }
    const uint4* row = reinterpret_cast<const uint4*>(w.w + n * K);
    for (int64_t c = threadIdx.x; c < K / 16; c += blockDim.x) {
        const uint4 raw = row[c];
        const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
        const float sc = scale[(16 * c + w.l.in_offset) / w.l.block_in];
        __align__(16) bf16 v[16];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(words[i / 2] >> (16 * (i % 2))), __NV_E4M3);
            v[2 * i] = __float2bfloat16(__half2float(__half(__half_raw{h.x})) * sc);
            v[2 * i + 1] = __float2bfloat16(__half2float(__half(__half_raw{h.y})) * sc);
        }
        uint4* out = reinterpret_cast<uint4*>(dst + n * K + 16 * c);
        out[0] = reinterpret_cast<const uint4*>(v)[0];
        out[1] = reinterpret_cast<const uint4*>(v)[1];
    }
}

// A block a tile of 16 rows, 16 threads a row, a thread a word (8 positions) of a step: the
// block reads each of the tile's steps whole (1 KB in a row: cpu::gptq_word) and, in order
// (no act-order), writes 16 bytes of a row a thread where dst's rows are 16-byte aligned (vec).
__global__ void dequant_gptq_kernel(cpu::GptqView w, bf16* dst, bool vec) {
    pdl_entry();
    static_assert(kThreads == 16 * 16, "16 rows of 16 threads");
    const int64_t n = (int64_t)blockIdx.x * 16 + threadIdx.x / 16, K = w.l.K, Kp = w.l.Kp, chunks = Kp / cpu::kGptqChunk;
    if (n >= w.l.N) return;
    const int s = cpu::gptq_segment(w.l, n);
    for (int64_t c = threadIdx.x % 16; c < Kp / 8; c += 16) {
        const uint32_t word = w.qw[cpu::gptq_word(w.l, n, c)];
        const int g = w.chunk_group[s * chunks + c / (cpu::kGptqChunk / 8)];
        const float scale = __half2float(__ushort_as_half(w.scales[n * w.l.G + g]));
        const int z = w.zeros ? w.zeros[n * w.l.G + g] : 8;
        __align__(16) bf16 v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = __float2bfloat16(scale * (float)((int)((word >> (4 * j)) & 0xf) - z));
        if (vec && !w.perm && 8 * c + 8 <= K) {
            *reinterpret_cast<uint4*>(dst + n * K + 8 * c) = *reinterpret_cast<const uint4*>(v);
            continue;
        }
        for (int j = 0; j < 8; ++j) {
            const int64_t kp = 8 * c + j, k = w.perm ? w.perm[s * Kp + kp] : kp;
            if (k >= 0 && k < K) dst[n * K + k] = v[j];
        }
    }
}

// One warp per (token, 128 columns): four values a lane, the block's max |x| by the warp. Any
// K and alignment.
__global__ void quantize_act_kernel(const bf16* x, int64_t T, int64_t K, uint8_t* xq, float* xs) {
    pdl_entry();
    const int64_t blocks = (K + cpu::kFp8ActBlock - 1) / cpu::kFp8ActBlock;
    const int64_t item = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (item >= T * blocks) return;
    const int64_t t = item / blocks, b = item % blocks, lane = threadIdx.x & 31;
    float v[4], amax = 0.0f;
    for (int j = 0; j < 4; ++j) {
        const int64_t k = b * cpu::kFp8ActBlock + lane + 32 * j;
        v[j] = k < K ? __bfloat162float(x[t * K + k]) : 0.0f;
        amax = fmaxf(amax, fabsf(v[j]));
    }
    amax = warp_reduce(amax, MaxOp{});
    if (lane == 0) xs[b * T + t] = act_scale(amax);
    const float inv = act_inverse(amax);
    for (int j = 0; j < 4; ++j) {
        const int64_t k = b * cpu::kFp8ActBlock + lane + 32 * j;
        if (k < K) xq[t * K + k] = (uint8_t)to_e4m3(v[j], inv);
    }
}

// K a multiple of 128, x on 16 bytes: a half-warp per (token, 128 columns), eight values a lane
// in one 16-byte load, written as 8 bytes; each half-warp takes kActItems consecutive items,
// their loads issued together.
constexpr int kActItems = 2;
__global__ void quantize_act_vec_kernel(const bf16* x, int64_t T, int64_t K, uint8_t* xq, float* xs) {
    pdl_entry();
    const int64_t blocks = K / cpu::kFp8ActBlock, items = T * blocks;
    const int64_t first = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 16 * kActItems;
    const int sub = threadIdx.x & 15;
    uint4 raw[kActItems];
#pragma unroll
    for (int u = 0; u < kActItems; ++u) {
        const int64_t item = first + u;  // token item / blocks, 128 columns item % blocks
        raw[u] = item < items ? *reinterpret_cast<const uint4*>(x + item * cpu::kFp8ActBlock + sub * 8) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kActItems; ++u) {
        const int64_t item = first + u;
        float v[8];
        unpack8(raw[u], v);
        uint2 codes;
        const float s = act_block_fp8(v, codes);
        if (item >= items) continue;
        if (sub == 0) xs[(item % blocks) * T + item / blocks] = s;
        *reinterpret_cast<uint2*>(xq + item * cpu::kFp8ActBlock + sub * 8) = codes;
    }
}

// x [T, K] = code * scale in bf16 (the e4m3 form's values).
__global__ void dequantize_act_kernel(const uint8_t* xq, const float* xs, int64_t T, int64_t K, bf16* x) {
    pdl_entry();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * K) return;
    const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)xq[i], __NV_E4M3);
    x[i] = __float2bfloat16(__half2float(__half(h)) * xs[(i % K / cpu::kFp8ActBlock) * T + i / K]);
}

}  // namespace

void quant_dequantize(const QuantWeightView& w, bf16* dst, Launch at) {
    if (w.N() == 0) return;
    if (w.format == Format::kFp8) launch(dequant_fp8_kernel, (unsigned)w.N(), kThreads, 0, at, w.fp8, dst, aligned16({w.fp8.w, dst}) && w.K() % 16 == 0);
    else launch(dequant_gptq_kernel, (unsigned)((w.N() + 15) / 16), kThreads, 0, at, w.gptq, dst, aligned16({dst}) && w.K() % 8 == 0);
    TPX_LAUNCH_CHECK();
}

void fp8_quantize_act(const bf16* x, int64_t T, int64_t K, const ActFp8& x8, Launch at) {
    const int64_t items = T * ((K + cpu::kFp8ActBlock - 1) / cpu::kFp8ActBlock);
    if (items == 0) return;
    if (K % cpu::kFp8ActBlock == 0 && aligned16({x, x8.q}))
        launch(quantize_act_vec_kernel, blocks_for(items, kThreads / 16 * kActItems), kThreads, 0, at, x, T, K, x8.q, x8.s);
    else
        launch(quantize_act_kernel, blocks_for(items, kThreads / 32), kThreads, 0, at, x, T, K, x8.q, x8.s);
    TPX_LAUNCH_CHECK();
}

bool quant_prefill_fp8_applies(const QuantPrefillArgs& a) {
    return a.w.format == Format::kFp8 && a.w.fp8.row_scale && !a.bias && cpu::fp8_w8a8_applies(a.w.fp8.l) && a.tokens % 4 == 0;
}

size_t quant_prefill_scratch_bytes(const QuantPrefillArgs& a) { return a.x8.q ? 0 : (size_t)act_fp8_bytes(a.tokens, a.w.K()); }

bool quant_prefill_fp8(GemmTuner& tuner, const QuantPrefillArgs& a, Launch at) {
    TPX_CHECK(quant_prefill_fp8_applies(a), "quant_prefill_fp8: needs an FP8 weight with scales per 128 columns and no bias");
    TPX_CHECK(!a.add || a.add != a.y, "quant_prefill_fp8: the residual added must not be y");
    const int64_t T = a.tokens, K = a.w.K();
    const ActFp8 x8 = a.x8.q ? a.x8 : act_fp8_at(a.scratch, T, K);
    if (!a.x8.q) fp8_quantize_act(a.x, T, K, x8, at);
    const uint8_t* xq = x8.q;
    const float* xs = x8.s;
    // The checkpoint's own 128 x 128 blocks where the weight's rows are whole blocks and its
    // scale rows as cuBLASLt reads them (K / 128 a multiple of 4); else the scales per row.
    const cpu::Fp8Layout& l = a.w.fp8.l;
    const bool blocks = l.rows_per_scale == 128 && l.block_in == 128 && l.in_offset == 0 && l.N % 128 == 0 && l.scale_cols == K / 128 &&
                        l.scale_cols % 4 == 0;
    auto product = [&](const bf16* add) {
        return (blocks && tuner.matmul_fp8({T, K, a.w.N()}, {xq, xs, a.w.fp8.w, a.w.fp8.scale, true, add}, a.y, at.stream)) ||
               tuner.matmul_fp8({T, K, a.w.N()}, {xq, xs, a.w.fp8.w, a.w.fp8.row_scale, false, add}, a.y, at.stream);
    };
    if (a.add && product(a.add)) return true;
    if (!product(nullptr)) return false;
    if (a.add) add(T * a.w.N(), a.y, a.add, a.y, at);  // no algorithm with the sum in its epilogue
    return true;
}

void fp8_dequantize_act(const ActFp8& x8, int64_t T, int64_t K, bf16* x, Launch at) {
    if (T * K == 0) return;
    launch(dequantize_act_kernel, blocks_for(T * K, kThreads), kThreads, 0, at, x8.q, x8.s, T, K, x);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
