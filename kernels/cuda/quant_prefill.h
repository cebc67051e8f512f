// Quantized linears at prefill (more tokens than the decode GEMVs of quant_gemv.h take): the
// weight dequantized to bf16 for a GEMM, or (FP8) the activations quantized for an FP8 GEMM.
// The CPU twins are kernels/cpu/quant_gemv.h's (dequantize_*, quantize_act_fp8, linear_w8a8).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/ops.h"
#include "kernels/cuda/quant_gemv.h"

namespace tpx::cuda {

// dst [N, K] = W in bf16 (HF's orientation, x's order of columns), for prefill GEMMs.
void quant_dequantize(const QuantWeightView& w, bf16* dst, Launch at);

// The w8a8 FP8 prefill ([backend.tuning] quant_prefill = "w8a8"): FP8 weights with
// fp8_row_scales (cpu::fp8_w8a8_applies), the activations quantized per token and 128 columns
// (fp8_quantize_act, cpu::quantize_act_fp8's twin, bit for bit), then cuBLASLt's block-scaled
// FP8 GEMM (GemmTuner::matmul_fp8, the tensor cores' FP8 rate), as TensorRT-LLM, vLLM and HF's
// own GPU code run fine-grained FP8 checkpoints ("activation_scheme": "dynamic"). The
// activations' rounding to e4m3 (3 mantissa bits) costs accuracy against a model run on the
// dequantized weights: docs/PERF.md has the measured figures.
struct QuantPrefillArgs {
    QuantWeightView w;
    int64_t tokens = 0;
    const bf16* x = nullptr;     // [tokens, K]
    ActFp8 x8 = {};              // or x's e4m3 form, made by the kernel before (x8.q set: x unused)
    const bf16* bias = nullptr;  // [N] or nullptr
    bf16* y = nullptr;           // [tokens, N]
    const bf16* add = nullptr;   // [tokens, N] added to the product (the residual), or nullptr; not y
    void* scratch = nullptr;     // quant_prefill_scratch_bytes(a) (0 with x8), 256-byte aligned
};
// Whether the route takes w (FP8 with row scales, no bias: the GEMM's epilogue has none) and the
// token count (a multiple of 4: cuBLASLt 13.1 offers no algorithm for others, measured).
bool quant_prefill_fp8_applies(const QuantPrefillArgs& a);
size_t quant_prefill_scratch_bytes(const QuantPrefillArgs& a);
// The residual is added in the GEMM's epilogue, or by a kernel after it where cuBLASLt has no such
// algorithm. False where the tuner declines (no product: take the dequantized route).
bool quant_prefill_fp8(GemmTuner& tuner, const QuantPrefillArgs& a, Launch at);
// x [T, K]'s e4m3 form (cpu::quantize_act_fp8).
void fp8_quantize_act(const bf16* x, int64_t T, int64_t K, const ActFp8& x8, Launch at);
// x [T, K] in bf16 from its e4m3 form: each code's value times its scale, rounded once.
void fp8_dequantize_act(const ActFp8& x8, int64_t T, int64_t K, bf16* x, Launch at);

}  // namespace tpx::cuda
