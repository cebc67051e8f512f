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
#include "worker/cuda_forward.h"

namespace tpx {

using bf16 = __nv_bfloat16;

namespace {

int64_t width(const Value* v) { return v->shape.back(); }

}  // namespace

void CudaExecutor::run_nodes(int64_t T, int64_t R, bool select_rows, StepEnd end, char* arena, size_t* arena_peak) {
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
    const bool draw = end == StepEnd::kDraw || end == StepEnd::kDrawLogits, logits = end == StepEnd::kLogits || end == StepEnd::kDrawLogits;
    if (hidden_out_) {
        CUDA_CHECK(cudaMemcpyAsync(stage_out_, f.act.data(out), T * vocab_ * sizeof(bf16), cudaMemcpyDeviceToDevice, stream_));
    } else {
        if (end == StepEnd::kArgmax) cuda::argmax_rows(R, vocab_, f.act.data(out), argmax_, launch_, argmax_scratch_);
        if (draw) cuda::draw_rows(R, vocab_, f.act.data(out), draw_dev_, argmax_, launch_);
        if (logits) cuda::bf16_to_f32(R * vocab_, f.act.data(out), logits_, launch_);
    }
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
        auto fused = program_.rope_kv_of.find(n);
        if (fused != program_.rope_kv_of.end() && rope_in_attention(f, n, fused->second, r)) break;
        bf16* q = a.make(n->out(0), r);
        const int64_t in_stride = a.stride(in(0));
        TPX_CHECK(in_stride == a.stride(in(1)), "rope: q and k views of different strides");
        cuda::RopeArgs ra{p, r, positions_, inv_freq_.at(n), a.data(in(0)), a.data(in(1)), q, nullptr, in_stride};
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
    case Op::kAttention:
        run_attention(f, n, r);
        break;
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

// The attention, with the RoPE before it where that rope handed it over (rope_in_attention).
void CudaExecutor::run_attention(Forward& f, const Node* n, int64_t r) {
    auto in = [&](size_t k) { return n->inputs[k]; };
    Activations& a = f.act;
    auto roped = f.rope_in_attention.find(n);
    if (roped != f.rope_in_attention.end()) {
        cuda::AttentionArgs aa = roped->second;
        aa.out = a.make(n->out(), r);
        fp8_output(f, n, r, aa.out, aa.out8, [&] { return cuda::attention_fp8_applies(aa); });  // (never in a decode step)
        cuda::attention(aa, launch_);
        return;
    }
    cuda::AttentionArgs aa = attention_args(n, r);
    const bool written = f.kv_written.count(n) > 0;  // by the QKV GEMV or the rope
    aa.q = a.data(in(0));
    aa.k = written ? nullptr : a.data(in(1));
    aa.v = written ? nullptr : a.data(in(2));
    aa.k_stride = a.stride(in(1)), aa.v_stride = a.stride(in(2));
    aa.out = a.make(n->out(), r);
    fp8_output(f, n, r, aa.out, aa.out8, [&] { return cuda::attention_fp8_applies(aa); });
    cuda::attention(aa, launch_);
}

// Attention node n's arguments over r tokens but its q, k, v and outputs.
cuda::AttentionArgs CudaExecutor::attention_args(const Node* n, int64_t r) {
    auto& kv = kv_.at(n->attr_int("layer"));
    cpu::AttentionShape s{r, n->attr_int("heads"), n->attr_int("kv_heads"), n->attr_int("head_dim"), max_seq_,
                          n->attr_int("sliding_window")};
    cuda::AttentionArgs aa{s, slots_dev_, positions_};
    aa.k_cache = kv.first, aa.v_cache = kv.second;
    aa.cublas = cublas_, aa.segments = &segments_;
    aa.decode = lone_tokens_;
    return aa;
}

// A decode step's rope that its attention `attn` can take in (cuda::attention_rope_applies): its
// arguments kept for the attention, nothing launched. False where it cannot.
bool CudaExecutor::rope_in_attention(Forward& f, const Node* rope, const Node* attn, int64_t r) {
    Activations& a = f.act;
    const Value* v = attn->inputs[2];
    cuda::AttentionArgs aa = attention_args(attn, r);
    aa.q = a.data(rope->inputs[0]), aa.k = a.data(rope->inputs[1]), aa.v = a.data(v);
    aa.rope = {inv_freq_.at(rope), a.stride(rope->inputs[0])};
    aa.k_stride = a.stride(rope->inputs[1]), aa.v_stride = a.stride(v);
    if (!cuda::attention_rope_applies(aa, *launch_.config) || !cuda::attention_rope_pays(aa, *launch_.config)) return false;
    f.rope_in_attention[attn] = aa;
    return true;
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
