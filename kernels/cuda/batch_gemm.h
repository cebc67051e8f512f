// The decode GEMM of kGemvMaxTokens + 1 to kBatchGemmMaxTokens tokens on tensor cores
// (batch_gemm.cu), which linear(), linear_add() and gemv_fused() run for that many tokens.
#pragma once

#include "kernels/cuda/ops.h"

namespace tpx::cuda {

// Whether the batch GEMM takes `tokens` tokens of K columns (x's alignment is the caller's check).
bool batch_gemm_applies(int64_t tokens, int64_t K, const bf16* w);
// gemv_fused() for f.tokens in (kGemvMaxTokens, kBatchGemmMaxTokens] (no norm) over `items` work
// items (item_rows: `pair` for SwiGLU, rk for RoPE); `add` (kNone only; nullptr: none) [T, N] is
// added to the outputs before their rounding, as the tuned GEMM's residual epilogue.
void batch_gemm(const GemvFusedArgs& f, int64_t items, int64_t pair, const GemvRopeKv& rk, const bf16* add, Launch at);

}  // namespace tpx::cuda
