// One forward of the CUDA executor: the walk over the step program (sharding/steps.h) and each
// op's kernels, fused in decode-sized forwards (up to cuda::kBatchGemmMaxTokens tokens) where the
// program says so and the kernel applies. Buffers come from Activations; nothing allocated here
// outlives the forward.
#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "common/cuda_check.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/quant_gemv.h"
#include "kernels/cuda/quant_prefill.h"
#include "worker/activations.h"
#include "worker/cuda_executor.h"

namespace tpx {

using bf16 = __nv_bfloat16;

namespace {

int64_t width(const Value* v) { return v->shape.back(); }

}  // namespace

// One forward's state besides its buffers: what the decode fusions have done so far.
struct CudaExecutor::Forward {
    Forward(Activations::Args buffers, int64_t tokens, int64_t rows, bool select, const KernelConfig& config)
        : act(buffers), T(tokens), R(rows), select_rows(select), fuse(cuda::gemv_route_allowed(tokens, config) && !select) {}
    Activations act;
    int64_t T, R;
    bool select_rows;
    bool fuse;  // up to cuda::kBatchGemmMaxTokens tokens: the GEMVs take in their neighbours (quantized ones at one token)
    std::map<const Node*, cuda::GemvNorm> pending_norm;  // linear -> the norm its GEMV computes first
    std::map<const Node*, bf16*> pending_release;        // linear -> the all-reduced input that norm reads
    std::set<const Node*> skip, kv_written;
    std::set<const Node*> residual_added;  // add_rmsnorm nodes whose add the GEMM before did
    std::set<const Value*> act_fp8;        // buffers holding their value's e4m3 form (fp8_output)
    // Fused all-reduces (program_.exchange_of): norm -> its exchange's place in this forward. One
    // open at a time (pushed, its sum not yet launched), as cuda::ExchangeIn's parity needs.
    std::map<const Node*, uint32_t> pushed;
    uint32_t exchanges = 0;
    bool exchange_open = false;
};

void CudaExecutor::run_nodes(int64_t T, int64_t R, bool select_rows, char* arena, size_t* arena_peak) {
    Forward f({weights_, program_.last_use, stream_, arena, arena_peak}, T, R, select_rows, *launch_.config);
    const std::vector<Node*>& nodes = program_.nodes;
    for (size_t i = 0; i < nodes.size(); ++i) {
        const Node* n = nodes[i];
        const int64_t r = n->inputs.empty() ? T : f.act.rows_or(n->inputs[0], T);
        if (n->kind == Op::kParam || (n->kind == Op::kInput && n->out() != stage_input_)) continue;
        if (f.skip.count(n) || (f.fuse && program_.norm_of.count(n) && defer_norm(f, n, r))) {  // done by a fused GEMV
            f.act.release_inputs(i, n);
            continue;
        }
        if (profiling_) {
            cudaEvent_t a, b;
            CUDA_CHECK(cudaEventCreate(&a));
            CUDA_CHECK(cudaEventCreate(&b));
            std::string key = n->kind == Op::kLinear ? "linear " + n->name.substr(n->name.rfind('.') + 1) : n->op;
            pending_.push_back({key, {a, b}});
            CUDA_CHECK(cudaEventRecord(a, stream_));
        }
        run_node(f, n, r);
        if (profiling_) CUDA_CHECK(cudaEventRecord(pending_.back().second.second, stream_));
        f.act.release_inputs(i, n);
    }
    TPX_CHECK(!f.exchange_open, "a fused all-reduce was pushed and never summed");
    if (f.exchanges) nccl_->exchange_advance(f.exchanges);
    if (f.exchanges) fused_all_reduces_ = (int)f.exchanges;
    const Value* out = graph_.outputs().at(0);
    // A stage before the last hands on every token's row (bf16, as the next stage reads them).
    if (hidden_out_) CUDA_CHECK(cudaMemcpyAsync(stage_out_, f.act.data(out), T * vocab_ * sizeof(bf16), cudaMemcpyDeviceToDevice, stream_));
    else cuda::bf16_to_f32(R * vocab_, f.act.data(out), logits_, launch_);
    f.act.finish();
}

// The op's kernels, unfused (the decode GEMVs' fusions are in run_linear).
void CudaExecutor::run_node(Forward& f, const Node* n, int64_t r) {
    auto in = [&](size_t k) { return n->inputs[k]; };
    Activations& a = f.act;
    switch (n->kind) {
    case Op::kEmbedding: {
        int64_t per = n->attr_int("vocab_per_rank");
        cuda::embedding({f.T, in(1)->shape[0], in(1)->shape[1], (int64_t)rank_ * per}, ids_, a.data(in(1)), a.make(n->out(), f.T), launch_);
        break;
    }
    case Op::kRmsnorm: {
        cuda::RmsnormArgs na{r, width(in(0)), (float)n->attr_double("eps"), a.data(in(0)), a.data(in(1)), a.make(n->out(), r)};
        fp8_output(f, n, r, na.y, na.y8, [&] { return cuda::rmsnorm_fp8_applies(na, nullptr, nullptr); });
        cuda::rmsnorm(na, launch_);
        break;
    }
    case Op::kAdd:
        cuda::add(r * width(in(0)), a.data(in(0)), a.data(in(1)), a.make(n->out(), r), launch_);
        break;
    case Op::kAddRmsnorm:
    case Op::kAllreduceAddRmsnorm:
        run_add_rmsnorm(f, n, r);
        break;
    case Op::kLinear:
        run_linear(f, n, r);
        break;
    case Op::kSplit:
        run_split(f, n, r);
        break;
    case Op::kRope: {
        cpu::RopeParams p = rope_params(*n);
        bf16* q = a.make(n->out(0), r);
        const int64_t in_stride = a.stride(in(0));
        TPX_CHECK(in_stride == a.stride(in(1)), "rope: q and k views of different strides");
        cuda::RopeArgs ra{p, r, positions_, inv_freq_.at(n), a.data(in(0)), a.data(in(1)), q, nullptr, in_stride};
        auto fused = program_.rope_kv_of.find(n);
        if (fused != program_.rope_kv_of.end()) {  // K and V straight into the cache: the attention writes none, k is not made
            const Node* attn = fused->second;
            const Value* v = attn->inputs[2];
            auto& kv = kv_.at(attn->attr_int("layer"));
            ra.cache = {kv.first, kv.second, a.data(v), a.stride(v) ? a.stride(v) : width(v), slots_dev_, max_seq_};
            if (cuda::rope_kv_applies(ra)) f.kv_written.insert(attn);
            else ra.cache = {};
        }
        if (!ra.cache.k_cache) ra.k = a.make(n->out(1), r);
        cuda::rope(ra, launch_);
        break;
    }
    case Op::kAttention: {
        auto& kv = kv_.at(n->attr_int("layer"));
        cpu::AttentionShape s{r, n->attr_int("heads"), n->attr_int("kv_heads"), n->attr_int("head_dim"), max_seq_,
                              n->attr_int("sliding_window")};
        const bool written = f.kv_written.count(n) > 0;  // by the QKV GEMV or the rope
        cuda::AttentionArgs aa{s, slots_dev_, positions_, a.data(in(0)), written ? nullptr : a.data(in(1)), written ? nullptr : a.data(in(2)),
                               kv.first, kv.second, a.make(n->out(), r), a.stride(in(1)), a.stride(in(2)), cublas_, &segments_};
        aa.decode = lone_tokens_;
        fp8_output(f, n, r, aa.out, aa.out8, [&] { return cuda::attention_fp8_applies(aa); });
        cuda::attention(aa, launch_);
        break;
    }
    case Op::kSiluMul: {
        const int64_t w = width(n->out());
        bf16* y = a.make(n->out(), r);
        const bf16 *gate = a.data(in(0)), *up = n->inputs.size() == 1 ? gate + w : a.data(in(1));
        cuda::ActFp8 y8;
        if (fp8_output(f, n, r, y, y8, [&] { return cuda::silu_mul_fp8_applies(w, gate, up, y8); }))
            cuda::silu_mul_fp8(r, w, gate, up, n->inputs.size() == 1 ? 2 * w : w, y8, launch_);
        else if (n->inputs.size() == 1) cuda::silu_mul_fused(r, w, gate, y, launch_);
        else cuda::silu_mul(r, w, gate, up, y, launch_);
        break;
    }
    case Op::kMoe:
        run_moe(f, n, r);
        break;
    case Op::kAllReduce: {
        bf16* y = a.make(n->out(), r);
        if (nccl_) nccl_->all_reduce(a.data(in(0)), y, r * width(in(0)));
        else CUDA_CHECK(cudaMemcpyAsync(y, a.data(in(0)), r * width(in(0)) * sizeof(bf16), cudaMemcpyDeviceToDevice, stream_));
        break;
    }
    case Op::kAllGather:
        run_all_gather(f, n, r);
        break;
    case Op::kInput:  // only a stage's stage_input gets here: the rows the previous stage sent
        CUDA_CHECK(cudaMemcpyAsync(a.make(n->out(), f.T), stage_in_, f.T * width(n->out()) * sizeof(bf16), cudaMemcpyDeviceToDevice,
                                   stream_));
        break;
    case Op::kParam:
        break;
    case Op::kUnknown:
        throw Error("the CUDA backend has no op '" + n->op + "' (node " + n->name + ")");
    }
}

// The GemvNorm that the GEMV of program_.norm_of.at(n) computes, but for x and residual_out.
cuda::GemvNorm CudaExecutor::norm_params(Forward& f, const Node* n) {
    const bool plain = n->kind == Op::kRmsnorm;
    cuda::GemvNorm nm;
    nm.residual = plain ? nullptr : f.act.data(n->inputs[1]);
    nm.weight = f.act.data(n->inputs[plain ? 1 : 2]);
    nm.eps = (float)n->attr_double("eps");
    return nm;
}

// A norm whose linear's GEMV will compute it: only the new residual is allocated here. False
// where the GEMV cannot take it (the norm then runs as its own kernel).
bool CudaExecutor::defer_norm(Forward& f, const Node* n, int64_t r) {
    if (f.residual_added.count(n)) return false;  // its input is the new residual the GEMM before wrote: run_add_rmsnorm's
    const Node* lin = program_.norm_of.at(n);
    const bool plain = n->kind == Op::kRmsnorm;
    const Value* x = n->inputs[0];
    cuda::GemvNorm nm = norm_params(f, n);
    if (f.pushed.count(n)) nm.sum = nccl_->exchange_in(f.pushed.at(n));
    else nm.x = f.act.data(x);
    // (residual_out, not yet allocated, is a stream-ordered allocation: aligned)
    bool applies = false;
    if (const cuda::QuantWeightView* q = quant_weight(lin)) {  // the quantized GEMV's own prologue (one token)
        cuda::QuantGemvArgs qa;
        qa.w = *q, qa.tokens = r, qa.has_norm = true, qa.norm = nm;
        applies = lin->name != "lm_head" && cuda::quant_gemv_applies(qa);
    } else {
        applies = cuda::gemv_fused_applies(width(x), &nm, f.act.data(lin->inputs[1]), r);
    }
    if (applies) {
        if (!plain) nm.residual_out = f.act.make(n->out(1), r);
        if (n->kind == Op::kAllreduceAddRmsnorm && nccl_ && !nm.sum.ll) {
            bf16* reduced = f.act.alloc(r * width(x));
            nccl_->all_reduce(nm.x, reduced, r * width(x));
            nm.x = f.pending_release[lin] = reduced;
        }
        f.pending_norm[lin] = nm;
        return true;
    }
    TPX_CHECK(!f.pushed.count(n), "node " + n->name + ": its input was pushed for a fused all-reduce that its GEMV cannot sum");
    return false;
}

void CudaExecutor::run_add_rmsnorm(Forward& f, const Node* n, int64_t r) {
    Activations& a = f.act;
    const float eps = (float)n->attr_double("eps");
    if (f.residual_added.count(n)) {  // the GEMM before it added the residual
        const int64_t rr = a.rows(n->out(1));
        cuda::RmsnormArgs na{rr, width(n->inputs[0]), eps, a.data(n->out(1)), a.data(n->inputs[2]), a.make(n->out(0), rr)};
        fp8_output(f, n, rr, na.y, na.y8, [&] { return cuda::rmsnorm_fp8_applies(na, nullptr, nullptr); });
        cuda::rmsnorm(na, launch_);
        return;
    }
    int64_t w = width(n->inputs[0]);
    const bf16* x = a.data(n->inputs[0]);
    bf16* reduced = nullptr;
    if (n->kind == Op::kAllreduceAddRmsnorm && nccl_) {
        reduced = a.alloc(r * w);
        nccl_->all_reduce(x, reduced, r * w);
        x = reduced;
    }
    bf16* sum = a.make(n->out(1), r);
    cuda::RmsnormArgs na{r, w, eps, x, a.data(n->inputs[2]), a.make(n->out(0), r)};
    fp8_output(f, n, r, na.y, na.y8, [&] { return cuda::rmsnorm_fp8_applies(na, a.data(n->inputs[1]), sum); });
    cuda::add_rmsnorm(na, a.data(n->inputs[1]), sum, launch_);
    if (reduced) a.release(reduced);
}

// The w8a8 prefill's input written in its e4m3 form by the kernel that computes it (the step
// program's fp8_input_of: a norm, attention, the SwiGLU; kernels/cuda/quant_act.cuh), bit for bit
// what the linear would quantize, where the linear takes that route at r rows (takes_w8a8): the
// bf16 values are neither written nor read back, and no quantization kernel runs. y: n's output
// buffer, made; the form lies in it (about half the bf16 bytes) where also `applies` (the
// kernel's own conditions on the form's pointers) holds, and is recorded in f.act_fp8, where
// run_quant_linear finds it; else y8 is left empty.
bool CudaExecutor::fp8_output(Forward& f, const Node* n, int64_t r, bf16* y, cuda::ActFp8& y8, const std::function<bool()>& applies) {
    y8 = {};
    auto it = program_.fp8_input_of.find(n);
    // (Past the GEMVs' rows: up to them run_quant_linear may take a GEMV, which reads x in bf16.)
    if (it == program_.fp8_input_of.end() || r <= std::max<int64_t>(cuda::kQuantGemvMaxTokens, launch_.config->quant_gemv_tokens) ||
        !takes_w8a8(it->second, r))
        return false;
    const int64_t K = width(n->out(0));
    TPX_CHECK(quant_weight(it->second)->K() == K && cuda::act_fp8_bytes(r, K) <= r * K * (int64_t)sizeof(bf16),
              "node " + n->name + ": its e4m3 form does not fit its output");
    y8 = cuda::act_fp8_at(y, r, K);
    if (!applies()) {
        y8 = {};
        return false;
    }
    f.act_fp8.insert(n->out(0));
    return true;
}

// Whether quantized linear n, where no GEMV takes its r rows (run_quant_linear), runs as an FP8
// GEMM: quant_prefill = "w8a8", a layout and a row count that the route takes.
bool CudaExecutor::takes_w8a8(const Node* n, int64_t r) const {
    if (!w8a8_.count(n)) return false;
    cuda::QuantPrefillArgs p;
    p.w = *quant_weight(n), p.tokens = r;
    return cuda::quant_prefill_fp8_applies(p);
}

// A linear at batch 1 whose all-reduce its GEMV can push (and the norm's GEMV after it sum).
bool CudaExecutor::can_push(Forward& f, const Node* n) {
    auto in = [&](size_t k) { return n->inputs[k]; };
    if (!f.fuse || f.T != 1 || !program_.exchange_of.count(n) || f.exchange_open || quant_weight(n) ||
        quant_weight(program_.norm_of.at(program_.exchange_of.at(n))) ||
        !nccl_->push_applies(in(1)->shape[1], in(1)->shape[0], f.act.data(in(0)), f.act.data(in(1))))
        return false;
    const Node* norm = program_.exchange_of.at(n);  // the sum will be fused too
    cuda::GemvNorm nm = norm_params(f, norm);
    nm.sum = nccl_->exchange_in(0);
    return cuda::gemv_fused_applies(width(n->out()), &nm, f.act.data(program_.norm_of.at(norm)->inputs[1]));
}

void CudaExecutor::run_linear(Forward& f, const Node* n, int64_t r) {
    auto in = [&](size_t k) { return n->inputs[k]; };
    Activations& a = f.act;
    const bf16* bias = n->inputs.size() == 3 ? a.data(in(2)) : nullptr;
    if (const cuda::QuantWeightView* q = quant_weight(n)) {
        run_quant_linear(f, n, r, *q);
    } else if (can_push(f, n)) {
        // Its all-reduce is summed by the next GEMV's norm (cuda::ExchangeIn): no output here.
        nccl_->gemv_push(in(1)->shape[1], in(1)->shape[0], a.data(in(0)), a.data(in(1)), bias, f.exchanges);
        f.pushed[program_.exchange_of.at(n)] = f.exchanges++;
        f.exchange_open = true;
    } else if (f.fuse && program_.fusions.count(n) &&
               (f.pending_norm.count(n) || cuda::gemv_fused_applies(width(in(0)), nullptr, a.data(in(1)), r))) {
        run_fused_gemv(f, n, r);
    } else {
        run_gemm(f, n, r);
    }
}

// The decode GEMV of r tokens with the norm before it (when deferred to it) and its epilogue.
void CudaExecutor::run_fused_gemv(Forward& f, const Node* n, int64_t r) {
    auto in = [&](size_t k) { return n->inputs[k]; };
    Activations& a = f.act;
    const DecodeFusion& fu = program_.fusions.at(n);
    const cuda::GemvNorm* nm = f.pending_norm.count(n) ? &f.pending_norm.at(n) : nullptr;
    const bf16* x = nm ? nullptr : a.data(in(0));
    const bf16* bias = n->inputs.size() == 3 ? a.data(in(2)) : nullptr;
    cuda::GemvEpilogue epi = cuda::GemvEpilogue::kNone;
    cuda::GemvRopeKv rk;
    bf16* y = fused_output(f, n, r, fu, epi, rk);
    cuda::GemvFusedArgs g{in(1)->shape[1], in(1)->shape[0], x, a.data(in(1)), bias, y, nm, epi, fu.split ? &rk : nullptr};
    g.tokens = r;
    cuda::gemv_fused(g, launch_);
    if (nm && nm->sum.ll) f.exchange_open = false;
    if (f.pending_release.count(n)) a.release(f.pending_release.at(n));
}

// The output (r rows) of a decode GEMV with fusion fu, its epilogue and RoPE parameters; the
// nodes the epilogue does are marked done.
__nv_bfloat16* CudaExecutor::fused_output(Forward& f, const Node* n, int64_t r, const DecodeFusion& fu, cuda::GemvEpilogue& epi,
                                          cuda::GemvRopeKv& rk) {
    Activations& a = f.act;
    bf16* y = nullptr;
    if (fu.swiglu) {
        epi = cuda::GemvEpilogue::kSwiglu;
        y = a.make(fu.swiglu->out(), r);
        f.skip.insert(fu.swiglu);
    } else if (fu.split) {
        epi = cuda::GemvEpilogue::kRopeKv;
        auto& kv = kv_.at(fu.attention->attr_int("layer"));
        rk.heads = fu.attention->attr_int("heads");
        rk.kv_heads = fu.attention->attr_int("kv_heads");
        rk.head_dim = fu.attention->attr_int("head_dim");
        rk.max_seq = max_seq_;
        rk.slot = slots_dev_;
        rk.pos = positions_;
        rk.inv_freq = inv_freq_.at(fu.rope);
        rk.k_cache = kv.first;
        rk.v_cache = kv.second;
        y = a.make(fu.rope->out(0), r);
        f.skip.insert(fu.split);
        f.skip.insert(fu.rope);
        f.kv_written.insert(fu.attention);
    } else {
        y = a.make(n->out(), r);
    }
    return y;
}

// cuBLAS (or a decode GEMV or the batch GEMM, up to 64 rows); lm_head only over the wanted rows;
// the residual added in the batch GEMM's or the tuned GEMM's epilogue where the step program says so.
void CudaExecutor::run_gemm(Forward& f, const Node* n, int64_t r, const bf16* weight, const bf16* input) {
    auto in = [&](size_t k) { return n->inputs[k]; };
    Activations& a = f.act;
    const bf16* w = weight ? weight : a.data(in(1));
    const bf16* x = input ? input : a.data(in(0));
    bf16* selected = nullptr;
    if (n->name == "lm_head" && f.select_rows) {
        selected = a.alloc(f.R * width(in(0)));
        cuda::gather_rows(f.R, width(in(0)), rows_, x, selected, launch_);
        x = selected;
        r = f.R;
    }
    const bf16* bias = n->inputs.size() == 3 ? a.data(in(2)) : nullptr;
    const cpu::LinearShape ls{r, in(1)->shape[1], in(1)->shape[0]};
    // A weight the kernel just before wrote (dequantized): no GEMV may read it before its wait.
    KernelConfig late;
    cuda::Launch at = launch_;
    if (weight) late = *launch_.config, late.gemv_early = false, at = cuda::Launch(stream_, late);
    bool added = false;
    if (!selected && program_.residual_epilogue.count(n) && r >= cuda::kGemmTuneMinTokens) {
        // y + residual straight into the norm's new residual; the norm then reads only that.
        const Node* nm = program_.residual_epilogue.at(n);
        bf16* sum = a.make(nm->out(1), r);
        const bf16* residual = a.data(nm->inputs[1]);
        added = cuda::linear_add({ls, x, w, bias, sum}, residual, at) || (tuner_ && tuner_->matmul(ls, x, w, sum, stream_, residual));
        if (added) f.residual_added.insert(nm);
        else a.release(sum), a.forget(nm->out(1));
    }
    if (!added) cuda::linear(cublas_, {ls, x, w, bias, a.make(n->out(), r), tuner_.get()}, at);
    if (selected) a.release(selected);
}

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

void CudaExecutor::run_split(Forward& f, const Node* n, int64_t r) {
    Activations& a = f.act;
    const Value* x = n->inputs[0];
    const auto& sizes = std::get<std::vector<int64_t>>(n->attrs.at("sizes"));
    int64_t total = width(x), offset = 0;
    for (size_t k = 0; k < sizes.size(); ++k) {
        if (program_.split_views.count(n)) {
            a.view(n->out(k), x, a.data(x) + offset, r, total);
            offset += sizes[k];
            continue;
        }
        bf16* y = a.make(n->out(k), r);
        CUDA_CHECK(cudaMemcpy2DAsync(y, sizes[k] * sizeof(bf16), a.data(x) + offset, total * sizeof(bf16), sizes[k] * sizeof(bf16), r,
                                     cudaMemcpyDeviceToDevice, stream_));
        offset += sizes[k];
    }
}

// Up to moe_sparse_max_tokens_ tokens, sparse (kernels/cuda/moe.cu); from
// moe_grouped_min_tokens_ outside a graph, by expert over each one's tokens (moe_grouped, a host
// round trip); else dense over the local experts (run_moe_dense).
void CudaExecutor::run_moe(Forward& f, const Node* n, int64_t r) {
    auto in = [&](size_t k) { return n->inputs[k]; };
    Activations& a = f.act;
    const Value* w2 = n->inputs.back();
    int64_t local = w2->shape[0], hidden = w2->shape[1], inter = w2->shape[2];
    int64_t first = ((int64_t)rank_ / n->attr_int("group_size")) * n->attr_int("experts_per_group");
    cpu::MoeShape s{r, hidden, n->attr_int("experts"), n->attr_int("top_k"), first, local, inter};
    cuda::moe_routing(s, a.data(in(1)), moe_weights_, launch_);
    bf16* y = a.make(n->out(), r);
    const bool fused = n->inputs.size() == 4;
    const bf16* w_gate = a.data(in(2));
    const bf16* w_up = fused ? w_gate + inter * hidden : a.data(in(3));
    const cuda::MoeExperts experts{w_gate, w_up, (fused ? 2 : 1) * inter * hidden, a.data(w2)};
    if (r <= moe_sparse_max_tokens_ && cuda::moe_sparse_supported(s, a.data(in(0)), experts)) {
        // Few tokens: each chosen expert's weights read once, the others not at all.
        bf16* act = a.alloc(local * r * inter);
        bf16* part = a.alloc(local * r * hidden);
        cuda::moe_sparse({s, moe_weights_, a.data(in(0)), experts, y}, act, part, launch_);
        a.release(act);
        a.release(part);
    } else if (r >= moe_grouped_min_tokens_ && !a.planned()) {
        // A step that no graph replays (prefill; decode without graphs): expert by expert, each
        // over its own tokens. (A graph's steps, and the eager step that sizes their block, keep
        // the dense form: the same allocations, no host round trip.)
        cuda::moe_grouped(cublas_, {s, moe_weights_, a.data(in(0)), experts, y}, launch_,
                          [&] { sync_with_watchdog(stream_, nccl_, timeout_s_); });
    } else {
        run_moe_dense(f, s, a.data(in(0)), experts, fused, y);
    }
}

// Every token through every local expert by cuBLAS, weighted by its routing weight (0 where
// not chosen), added in expert order.
void CudaExecutor::run_moe_dense(Forward& f, const cpu::MoeShape& s, const bf16* x, const cuda::MoeExperts& w, bool fused, bf16* y) {
    Activations& a = f.act;
    const int64_t r = s.tokens, hidden = s.hidden, inter = s.inter_local, local = s.local_experts;
    CUDA_CHECK(cudaMemsetAsync(y, 0, r * hidden * sizeof(bf16), stream_));
    bf16* gu = a.alloc(r * 2 * inter);
    bf16* act = a.alloc(r * inter);
    bf16* part = a.alloc(r * hidden);
    for (int64_t e = 0; e < local; ++e) {
        if (fused) {
            cuda::linear(cublas_, {{r, hidden, 2 * inter}, x, w.gate + e * 2 * inter * hidden, nullptr, gu}, launch_);
            cuda::silu_mul_fused(r, inter, gu, act, launch_);
        } else {
            cuda::linear(cublas_, {{r, hidden, inter}, x, w.gate + e * inter * hidden, nullptr, gu}, launch_);
            cuda::linear(cublas_, {{r, hidden, inter}, x, w.up + e * inter * hidden, nullptr, gu + r * inter}, launch_);
            cuda::silu_mul(r, inter, gu, gu + r * inter, act, launch_);
        }
        cuda::linear(cublas_, {{r, inter, hidden}, act, w.down + e * hidden * inter, nullptr, part}, launch_);
        cuda::scale_add({r, hidden, moe_weights_ + e, local, part, y}, launch_);
    }
    a.release(gu);
    a.release(act);
    a.release(part);
}

void CudaExecutor::run_all_gather(Forward& f, const Node* n, int64_t r) {
    Activations& a = f.act;
    const Value* x = n->inputs[0];
    int64_t local = width(x), world = n->attr_int("world"), out_width = width(n->out());
    bf16* gathered = a.alloc(world * r * local);
    if (nccl_) nccl_->all_gather(a.data(x), r * local, gathered);
    else CUDA_CHECK(cudaMemcpyAsync(gathered, a.data(x), r * local * sizeof(bf16), cudaMemcpyDeviceToDevice, stream_));
    bf16* y = a.make(n->out(), r);
    // [rank][row][local] -> [row][rank * local], trimmed to the valid vocabulary.
    for (int64_t q = 0; q < world; ++q) {
        int64_t n_copy = std::min(local, out_width - q * local);
        if (n_copy > 0)
            CUDA_CHECK(cudaMemcpy2DAsync(y + q * local, out_width * sizeof(bf16), gathered + q * r * local, local * sizeof(bf16),
                                         n_copy * sizeof(bf16), r, cudaMemcpyDeviceToDevice, stream_));
    }
    a.release(gathered);
}

}  // namespace tpx
