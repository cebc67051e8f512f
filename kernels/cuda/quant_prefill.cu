// Quantized linears at prefill: the weight dequantized to bf16, or FP8 activations into
// cuBLASLt's block-scaled FP8 GEMM. The quantization of x repeats cpu::quantize_act_fp8's
// arithmetic (IEEE fp32 max and division, round-to-nearest-even e4m3), so the two agree bit for bit.
#include <cuda_fp8.h>

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant_prefill.h"

namespace tpx::cuda {
namespace {

using Format = QuantWeightView::Format;
constexpr int kThreads = 256;

__global__ void dequant_fp8_kernel(cpu::Fp8View w, bf16* dst) {
    pdl_entry();
    const int64_t n = blockIdx.x, K = w.l.K;
    const float* scale = w.scale + (n / w.l.rows_per_scale) * w.l.scale_cols;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)w.w[n * K + k], __NV_E4M3);
        dst[n * K + k] = __float2bfloat16(__half2float(__half(h)) * scale[(k + w.l.in_offset) / w.l.block_in]);
    }
}

__global__ void dequant_gptq_kernel(cpu::GptqView w, bf16* dst) {
    pdl_entry();
    const int64_t n = blockIdx.x, Kp = w.l.Kp, chunks = Kp / cpu::kGptqChunk;
    const int s = cpu::gptq_segment(w.l, n);
    for (int64_t kp = threadIdx.x; kp < Kp; kp += blockDim.x) {
        const int64_t k = w.perm ? w.perm[s * Kp + kp] : kp;
        if (k < 0) continue;
        const int g = w.chunk_group[s * chunks + kp / cpu::kGptqChunk];
        const int q = (int)((w.qw[n * (Kp / 8) + kp / 8] >> (4 * (kp % 8))) & 0xf);
        const int z = w.zeros ? w.zeros[n * w.l.G + g] : 8;
        dst[n * w.l.K + k] = __float2bfloat16(__half2float(__ushort_as_half(w.scales[n * w.l.G + g])) * (float)(q - z));
    }
}

// One warp per (token, 128 columns): four values a lane, the block's max |x| by the warp.
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
    const float s = amax > 0.0f ? __fdiv_rn(amax, 448.0f) : 1.0f;
    if (lane == 0) xs[b * T + t] = s;
    for (int j = 0; j < 4; ++j) {
        const int64_t k = b * cpu::kFp8ActBlock + lane + 32 * j;
        if (k < K) xq[t * K + k] = (uint8_t)__nv_cvt_float_to_fp8(__fdiv_rn(v[j], s), __NV_SATFINITE, __NV_E4M3);
    }
}

size_t round256(size_t b) { return (b + 255) / 256 * 256; }

}  // namespace

void quant_dequantize(const QuantWeightView& w, bf16* dst, Launch at) {
    if (w.N() == 0) return;
    if (w.format == Format::kFp8) launch(dequant_fp8_kernel, (unsigned)w.N(), kThreads, 0, at, w.fp8, dst);
    else launch(dequant_gptq_kernel, (unsigned)w.N(), kThreads, 0, at, w.gptq, dst);
    TPX_LAUNCH_CHECK();
}

void fp8_quantize_act(const bf16* x, int64_t T, int64_t K, uint8_t* xq, float* xs, Launch at) {
    const int64_t items = T * ((K + cpu::kFp8ActBlock - 1) / cpu::kFp8ActBlock);
    if (items == 0) return;
    launch(quantize_act_kernel, blocks_for(items, kThreads / 32), kThreads, 0, at, x, T, K, xq, xs);
    TPX_LAUNCH_CHECK();
}

bool quant_prefill_fp8_applies(const QuantPrefillArgs& a) {
    return a.w.format == Format::kFp8 && a.w.fp8.row_scale && !a.bias && cpu::fp8_w8a8_applies(a.w.fp8.l) && a.tokens % 4 == 0;
}

size_t quant_prefill_scratch_bytes(const QuantPrefillArgs& a) {
    const int64_t T = a.tokens, K = a.w.K();
    return round256((size_t)(T * K)) + round256((size_t)((K + cpu::kFp8ActBlock - 1) / cpu::kFp8ActBlock * T) * sizeof(float));
}

bool quant_prefill_fp8(GemmTuner& tuner, const QuantPrefillArgs& a, Launch at) {
    TPX_CHECK(quant_prefill_fp8_applies(a), "quant_prefill_fp8: needs an FP8 weight with scales per 128 columns and no bias");
    const int64_t T = a.tokens, K = a.w.K();
    char* p = static_cast<char*>(a.scratch);
    uint8_t* xq = reinterpret_cast<uint8_t*>(p);
    float* xs = reinterpret_cast<float*>(p + round256((size_t)(T * K)));
    fp8_quantize_act(a.x, T, K, xq, xs, at);
    // The checkpoint's own 128 x 128 blocks where the weight's rows are whole blocks and its
    // scale rows as cuBLASLt reads them (K / 128 a multiple of 4); else the scales per row.
    const cpu::Fp8Layout& l = a.w.fp8.l;
    if (l.rows_per_scale == 128 && l.block_in == 128 && l.in_offset == 0 && l.N % 128 == 0 && l.scale_cols == K / 128 && l.scale_cols % 4 == 0 &&
        tuner.matmul_fp8({T, K, a.w.N()}, {xq, xs, a.w.fp8.w, a.w.fp8.scale, true}, a.y, at.stream))
        return true;
    return tuner.matmul_fp8({T, K, a.w.N()}, {xq, xs, a.w.fp8.w, a.w.fp8.row_scale, false}, a.y, at.stream);
}

}  // namespace tpx::cuda
