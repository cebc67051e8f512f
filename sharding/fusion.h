// Fusion passes on the pattern rewriter. Before sharding: fuse_qkv (q, k, v projections of
// one input become one linear and a split, their biases folded into one fused bias, as
// TensorRT-LLM's FuseAttentionWithBiasPass) and fuse_gate_up (gate and up projections, dense
// and per expert). The fused parameter lists the original tensors as segments, each keeping
// its own split rule, so sharding cuts each part on its own and the loader reads the slices
// straight into the fused layout. After sharding: fuse_allreduce_residual_rmsnorm.
#pragma once

#include "sharding/rewriter.h"

namespace tpx {

// Each returns the number of rewrites made.
int fuse_qkv(Graph& g);
int fuse_gate_up(Graph& g);
// all_reduce -> add(residual) -> rmsnorm becomes allreduce_add_rmsnorm (benefit 2); where no
// all_reduce precedes (tp = 1), add -> rmsnorm becomes add_rmsnorm (benefit 1).
int fuse_allreduce_residual_rmsnorm(Graph& g);

// The rewriter patterns behind those passes, for tests and for custom managers.
std::unique_ptr<PatternRewriter> make_qkv_fusion();
std::unique_ptr<PatternRewriter> make_gate_up_fusion();
std::unique_ptr<PatternRewriter> make_allreduce_add_rmsnorm_fusion();
std::unique_ptr<PatternRewriter> make_add_rmsnorm_fusion();

}  // namespace tpx
