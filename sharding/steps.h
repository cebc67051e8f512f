// The step program: what an executor runs for a rank's planned graph, decided once from the
// graph's shape, before the first forward (as llama.cpp's ggml_can_fuse looks at op
// sequences): how long each value lives, which splits are column views of their input, which
// neighbours a decode GEMV takes in, which all-reduces its GEMVs do, which GEMMs (not GEMVs) add
// the residual in their epilogue, and which kernels write a w8a8 linear's input in e4m3. The
// executors dispatch it and discover nothing at run time; whether a fused kernel applies to the
// pointers it is given (alignment, sizes) is still the launcher's to say, and the unfused ops run
// where it does not.
#pragma once

#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "sharding/graph.h"

namespace tpx {

// The neighbours a decode GEMV (a linear node, at the token counts StepOptions' gemv_mma and batch_gemm fuse) takes in: the norm before it (at
// one token), and SwiGLU, or split -> RoPE -> the attention's cache write, after it. Nodes taken
// in are skipped.
struct DecodeFusion {
    const Node* norm = nullptr;       // rmsnorm / add_rmsnorm / allreduce_add_rmsnorm: only this linear reads its out(0)
    const Node* swiglu = nullptr;     // silu_mul (one input): the only reader of the linear's output
    const Node* split = nullptr;      // the QKV split, whose q and k only `rope` reads and whose v only `attention`
    const Node* rope = nullptr;
    const Node* attention = nullptr;
};

struct StepOptions {
    bool residual_epilogue = true;  // KernelConfig::residual_epilogue
    bool exchange = false;          // all-reduces can be pushed and summed by GEMVs (one-shot peers present)
    // Linears whose prefill runs as an FP8 GEMM over e4m3 activations (the executor's choice from
    // KernelConfig::quant_prefill and w8a8_fused and the weights' layouts), whose input the kernel
    // before may write in that form.
    std::set<const Node*> w8a8 = {};
    // KernelConfig's gemv_mma and batch_gemm: which decode forwards fuse, by token count
    // (fused_decode_tokens), for describe()'s text.
    bool gemv_mma = true, batch_gemm = false;
};

struct StepProgram {
    std::vector<Node*> nodes;                 // the graph's live nodes, in order
    // The index in `nodes` of each value's last reader (nodes.size() for graph outputs); a fused
    // norm's inputs live until its GEMV, a split's input as long as its views.
    std::map<const Value*, size_t> last_use;
    std::set<const Node*> split_views;        // splits whose outputs only rope and attention read
    std::map<const Node*, DecodeFusion> fusions;           // by linear node
    std::map<const Node*, const Node*> norm_of;            // fused norm -> the linear whose GEMV computes it
    // A fused QKV's rope -> its attention: where no decode GEMV takes the rope, the rope writes
    // the rotated K and the split's V (the attention's inputs[2]) into the attention's KV cache,
    // or, in a decode step the one-pass attention kernel takes, the attention does both.
    std::map<const Node*, const Node*> rope_kv_of;
    // A linear (no fusion of its own) -> the allreduce_add_rmsnorm in norm_of that alone reads its
    // output: at batch 1 its GEMV pushes its part and the norm's GEMV sums it (cuda::ExchangeIn).
    std::map<const Node*, const Node*> exchange_of;
    // A linear -> the add_rmsnorm that alone reads its output as x: a GEMM (not a GEMV) adds the
    // residual in its epilogue and the norm reads only the new residual.
    std::map<const Node*, const Node*> residual_epilogue;
    // A norm, attention or SwiGLU -> the linear of StepOptions::w8a8 that alone reads its out(0)
    // as x: at prefill it writes that input in e4m3 (cuda::ActFp8) instead of bf16.
    std::map<const Node*, const Node*> fp8_input_of;
    bool gemv_mma = true, batch_gemm = false;  // StepOptions'

    // One line per fused step (`tpx plan --steps`).
    std::string describe() const;
};

// Each value's last reader in `nodes` (graph outputs: nodes.size()): when its buffer may go.
std::map<const Value*, size_t> last_uses(const Graph& graph, const std::vector<Node*>& nodes);

StepProgram plan_steps(const Graph& graph, const StepOptions& options);

}  // namespace tpx
