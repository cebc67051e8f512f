// The CUDA executor's quantized linears (see the comment on quant_weight).
#include "common/cuda_check.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/quant_gemv.h"
#include "kernels/cuda/quant_prefill.h"
#include "worker/cuda_executor.h"
#include "worker/cuda_forward.h"

namespace tpx {

using bf16 = __nv_bfloat16;

// Quantized linears: weights kept packed (DeviceWeights::quant). Up to cuda::kQuantGemvMaxTokens
// rows the quantized GEMV reads them as they are (at one token with the decode step's SwiGLU or
// RoPE + KV-cache epilogue, as the bf16 GEMV); up to [backend.tuning] quant_gemv_tokens rows the
// tensor-core GEMV runs 8 rows a launch (each launch reads the weights once: cheaper than the
// dequantization, which writes and reads them in bf16, and exact in the weights); more rows
// dequantize the weight into bf16 scratch and take run_gemm (the tuner, the residual epilogue,
// lm_head's row selection), or, with [backend.tuning] quant_prefill = "w8a8", FP8 weights run as
// FP8 GEMMs over activations quantized per token and 128 columns (quant_prefill.h), by the kernel
// that made them where it can (fp8_output), the residual added in the GEMM's epilogue as run_gemm
// adds it. At one token the norm before the GEMV is computed in its prologue (defer_norm) as for
// the bf16 GEMV; its all-reduce is not fused into the GEMVs (can_push).
const cuda::QuantWeightView* CudaExecutor::quant_weight(const Node* linear) const {
    if (weights_.quant.empty() || linear->kind != Op::kLinear || linear->inputs.size() < 2) return nullptr;
    const Node* p = linear->inputs[1]->producer;
    if (!p) return nullptr;
    auto it = weights_.quant.find(p->name);
    return it == weights_.quant.end() ? nullptr : &it->second;
}

void CudaExecutor::run_quant_linear(Forward& f, const Node* n, int64_t r, const cuda::QuantWeightView& w) {
    Activations& a = f.act;
    cuda::QuantGemvArgs args;
    args.w = w;
    args.tokens = r;
    args.bias = n->inputs.size() == 3 ? a.data(n->inputs[2]) : nullptr;
    if (f.pending_norm.count(n)) {  // deferred by defer_norm, which checked that the GEMV takes it
        args.has_norm = true, args.norm = f.pending_norm.at(n);
    } else {
        args.x = a.data(n->inputs[0]);
    }
    const bool lm_head = n->name == "lm_head";  // (its rows may be selected: run_gemm's)
    const bool x_fp8 = f.act_fp8.count(n->inputs[0]) > 0;  // x's e4m3 form (fp8_output): the w8a8 route only
    const bool gemv = !x_fp8 && !lm_head && cuda::quant_gemv_applies(args);
    TPX_CHECK(gemv || !args.has_norm, "node " + n->name + ": its norm was deferred to a quantized GEMV that cannot take it");
    if (gemv) {
        const bool fused = f.fuse && r == 1 && program_.fusions.count(n);
        args.y = fused ? fused_output(f, n, r, program_.fusions.at(n), args.epi, args.rope) : a.make(n->out(), r);
        cuda::quant_gemv(args, launch_);
        if (f.pending_release.count(n)) a.release(f.pending_release.at(n));
        return;
    }
    if (!x_fp8 && !lm_head && r <= launch_.config->quant_gemv_tokens) {  // the tensor-core GEMV 8 tokens at a time
        cuda::QuantGemvArgs part = args;
        part.tokens = std::min<int64_t>(r, cuda::kQuantGemvMaxTokens);
        if (cuda::quant_gemv_on_tensor_cores(part, *launch_.config)) {
            bf16* y = a.make(n->out(), r);
            for (int64_t t0 = 0; t0 < r; t0 += cuda::kQuantGemvMaxTokens) {
                part.tokens = std::min<int64_t>(r - t0, cuda::kQuantGemvMaxTokens);
                part.x = args.x + t0 * w.K(), part.y = y + t0 * w.N();
                cuda::quant_gemv(part, launch_);
            }
            return;
        }
    }
    cuda::QuantPrefillArgs p;
    p.w = w, p.tokens = r, p.x = a.data(n->inputs[0]), p.bias = args.bias;
    if (x_fp8) p.x8 = cuda::act_fp8_at(a.data(n->inputs[0]), r, w.K());
    if (x_fp8 || takes_w8a8(n, r)) {
        // As run_gemm: the residual added in the GEMM's epilogue, straight into the norm's new residual.
        const Node* nm = program_.residual_epilogue.count(n) && r >= cuda::kGemmTuneMinTokens ? program_.residual_epilogue.at(n) : nullptr;
        const Value* out = nm ? nm->out(1) : n->out();
        p.y = a.make(out, r);
        if (nm) p.add = a.data(nm->inputs[1]);
        bf16* scratch = x_fp8 ? nullptr : a.alloc((int64_t)(cuda::quant_prefill_scratch_bytes(p) + 1) / 2);
        p.scratch = scratch;
        const bool done = cuda::quant_prefill_fp8(*tuner_, p, launch_);
        if (scratch) a.release(scratch);
        if (done && nm) f.residual_added.insert(nm);
        if (done) return;
        a.release(p.y), a.forget(out);  // declined: run_gemm makes the output again
    }
    // The dequantized weight; x in bf16 (where the kernel before wrote x's e4m3 form for the w8a8
    // route and the tuner then declined it: that form's values).
    __nv_bfloat16* x = x_fp8 ? a.alloc(r * w.K()) : nullptr;
    if (x) cuda::fp8_dequantize_act(p.x8, r, w.K(), x, launch_);
    __nv_bfloat16* dense = a.alloc(w.N() * w.K());
    cuda::quant_dequantize(w, dense, launch_);
    run_gemm(f, n, r, dense, x);
    a.release(dense);
    if (x) a.release(x);
}

}  // namespace tpx
