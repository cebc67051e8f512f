// The decode GEMV of 2 to kGemvMaxTokens tokens on tensor cores (gemv_mma.cu), which
// gemv_fused() and linear() run for that many tokens.
#pragma once

#include "kernels/cuda/ops.h"

namespace tpx::cuda {

// Whether gemv_mma takes `tokens` tokens of K columns (x's alignment is the caller's check).
bool gemv_mma_applies(int64_t tokens, int64_t K, const bf16* w);
// gemv_fused() for f.tokens > 1 (no norm) over `items` work items (item_rows: `pair` for
// SwiGLU, rk for RoPE).
void gemv_mma(const GemvFusedArgs& f, int64_t items, int64_t pair, const GemvRopeKv& rk, Launch at);

}  // namespace tpx::cuda
