// The quantized linears' kernels (quant_gemv.cu, quant_gemv_mma.cu): decode GEMVs that read GPTQ int4 or FP8
// weights as they lie on the device (layouts in kernels/cpu/quant_gemv.h, whose twins are the
// reference) and dequantize inside the dot product, with the bf16 GEMV's SwiGLU and RoPE + KV
// epilogues at one token. (Prefill: quant_prefill.h.)
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cpu/quant_gemv.h"
#include "kernels/cuda/ops.h"

namespace tpx::cuda {

// A quantized weight on the device (the views' pointers are device pointers).
struct QuantWeightView {
    enum class Format { kFp8, kGptq };
    Format format = Format::kFp8;
    cpu::Fp8View fp8;
    cpu::GptqView gptq;
    __host__ __device__ int64_t N() const { return format == Format::kFp8 ? fp8.l.N : gptq.l.N; }
    __host__ __device__ int64_t K() const { return format == Format::kFp8 ? fp8.l.K : gptq.l.K; }
};

// Tokens one GEMV launch takes (every token's x is read with each weight chunk; the executor runs
// up to [backend.tuning] quant_gemv_tokens rows 8 a launch, more through quant_prefill.h).
constexpr int64_t kQuantGemvMaxTokens = 8;
// Shared memory for the FMA GEMV's act-order gather (segments x tokens x Kp bf16); the
// tensor-core GEMV's staged x may take the device's whole opt-in (quant_gemv_mma.cu).
constexpr size_t kQuantGemvMaxSmem = 160u << 10;

struct QuantGemvArgs {
    QuantWeightView w;
    int64_t tokens = 1;
    const bf16* x = nullptr;     // [tokens, K], 16-byte aligned
    const bf16* bias = nullptr;  // [N] or nullptr
    bf16* y = nullptr;           // [tokens, N]; kSwiglu: [1, N / 2]; kRopeKv: q [1, heads * head_dim]
    GemvEpilogue epi = GemvEpilogue::kNone;  // other than kNone at one token only
    GemvRopeKv rope;                         // kRopeKv's
    // One token: x = rmsnorm(norm.residual + norm.x) (or rmsnorm(norm.x)) computed by every block
    // into shared memory with the rmsnorm kernel's arithmetic (so bit-identical to it), block 0
    // writing residual + x to norm.residual_out, as gemv_fused's norm prologue; `x` is unused.
    // No exchange sum (norm.sum.ll null), no act-order gather, K at most kRmsnormVecMaxWidth.
    bool has_norm = false;
    GemvNorm norm;
};

// Whether quant_gemv takes these arguments (tokens, alignment, the gather's shared memory, the
// norm's conditions).
bool quant_gemv_applies(const QuantGemvArgs& a);
// y = x W^T (+ bias) and the epilogue, fp32 sums. With [backend.tuning] quant_mma (the default)
// and a weight the tensor-core GEMV takes (quant_gemv_mma.cu: FP8 scale blocks of 64 x 2^n
// columns, GPTQ groups of whole 128-position steps, x within its shared memory), on tensor cores
// with x in fp16; else by fp32 FMAs: each 16-byte weight chunk (FP8: 16 values, GPTQ: 32
// positions of one group) dotted with x, times its scale, into the row's sum.
void quant_gemv(const QuantGemvArgs& a, Launch at);
// Whether quant_gemv runs these arguments on tensor cores under this configuration.
bool quant_gemv_on_tensor_cores(const QuantGemvArgs& a, const KernelConfig& config);

}  // namespace tpx::cuda
