// Decode attention in one pass for many (token, head) pairs (attention_one_pass.cu), which
// attention() runs for the tokens its split kernel does not take.
#pragma once

#include "kernels/cuda/ops.h"

namespace tpx::cuda {

// Tokens [t0, t1) of `a` (keys already in the caches) through the one-pass kernel, where
// [backend.tuning] attention_one_pass is on and head_dim is 64, 128 or 256; false (nothing
// launched) otherwise. early: the cached rows but each token's own are read before the wait for
// the kernel before (every token alone in its sequence: AttentionArgs::decode).
// With a.rope, q, k and v are before RoPE (AttentionRope) and the kernel writes the caches' rows.
bool try_attention_one_pass(const AttentionArgs& a, int64_t t0, int64_t t1, bool early, Launch at);
// The one-pass kernel's blocks for `tokens` tokens: query heads a block, and whether they are of
// four warps (four an SM, where eight-warp blocks would need more than one wave) or eight.
struct OnePassGrid {
    int64_t heads_a_block = 1;
    bool four_warps = false;
};
OnePassGrid one_pass_grid(const cpu::AttentionShape& s, int64_t tokens, const KernelConfig& config);
// The one-pass kernel on tensor cores (attention_mma.cu; head_dim 64 or 128), which
// try_attention_one_pass launches with [backend.tuning] attention_mma: the same grid and arguments.
void launch_attention_mma(const OnePassGrid& grid, const AttentionArgs& a, int64_t t0, int64_t t1, bool early, const Launch& at);
// Whether try_attention_one_pass takes `tokens` tokens of a.
bool one_pass_takes(const AttentionArgs& a, int64_t tokens, const KernelConfig& config);

}  // namespace tpx::cuda
