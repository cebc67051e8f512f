// The kernel choices and settings of a job ([backend.tuning]): parsed and validated once in
// jobs/, printed with the resolved job, passed by the executor to every launcher (inside
// cuda::Launch, kernels/cuda/ops.h). Every default is the choice tpx makes
// when the key is absent; docs/GPU.md says what each one selects, docs/PERF.md why.
#pragma once

#include <cstdint>
#include <string>

namespace tpx {

struct KernelConfig {
    bool pdl = true;                   // programmatic dependent launch (sm_90 and newer)
    bool gemv_early = true;            // GEMVs (and the vector norm its weight) issue their first weight loads before the PDL wait
    int gemv_splitk = 0;               // warps per row of the plain GEMV: 0 = chosen by K; 1, 2 or 4
    bool gemv_balance = true;          // the norm GEMV's grid: resident blocks, each an equal range of rows
    bool sum_wide = true;              // the summing GEMV in blocks of 512 threads (false: 256)
    bool gemv_mma = true;              // decode linears of 2 to 8 tokens: the tensor-core GEMV, SwiGLU and RoPE + cache write fused
                                       // (false: cuBLAS, SwiGLU and RoPE (writing the cache) as kernels of their own)
    bool batch_gemm = false;           // decode linears of 9 to 64 tokens: the tensor-core batch GEMM, SwiGLU, RoPE + cache write
                                       // and the residual fused (false: cuBLAS, as gemv_mma = false; off: slower than cuBLAS, docs/PERF.md)
    bool attention_early = true;       // decode attention loads cached K and V before the PDL wait
    int decode_splits = 4;             // most blocks a decode (token, head) pair's keys go over: 1, 2, 4 or 8
    bool attention_gqa = true;         // one block for a KV head's query heads at large decode batches
    bool attention_one_pass = true;      // tokens the split kernel leaves: one pass, K and V streamed through shared memory
                                       // (false: attention_heads_kernel's two passes)
    bool attention_rope = true;        // decode batches the one-pass kernel takes on tensor cores, or in four-warp blocks (where no
                                       // GEMV takes the RoPE): it does the RoPE and the KV-cache write (false: the RoPE kernel before it)
    bool attention_mma = true;         // the one-pass kernel at head_dim 64 and 128 on tensor cores (false: on CUDA cores)
    std::string flash_tile = "2x64";   // prefill flash attention's row tiles a warp: "2x64" or "1x64"
    int64_t flash_short_max = 256;     // tokens: segments up to this take 32-row blocks; 0 = never
    bool gemm_tune = true;             // GEMMs' (9 rows or more) algorithm chosen by timing (cuda::GemmTuner)
    bool residual_epilogue = true;     // o_proj/down_proj add the residual in the tuned GEMM's epilogue
    std::string quant_prefill = "dequant";  // quantized linears over quant_gemv_tokens rows: "dequant" (W to bf16, a bf16 GEMM)
                                            // or "w8a8" (FP8 weights: x quantized to FP8 per 128 columns, an FP8 GEMM)
    bool w8a8_fused = true;            // with "w8a8": the norms, attention and SwiGLU before such a linear write its FP8 input
                                       // themselves (false: a quantization kernel before each linear; the same bits)
    int64_t quant_gemv_tokens = 32;    // quantized linears of up to this many tokens run the decode GEMV, 8 tokens a launch
                                       // (weights read once per 8); more take quant_prefill's route
    bool quant_mma = true;             // quantized decode GEMVs on tensor cores (x in fp16; false: fp32 FMAs, exact products)
    bool quant_ring = true;            // with quant_mma, FP8 weights of 128x128 blocks: whole lines through a ring in shared memory
                                       // (false: the 64-column tensor-core form)
    std::string moe = "auto";          // MoE form: auto | sparse | grouped | dense
    bool oneshot = true;               // small all-reduces through tpx's one-shot kernel (false: NCCL)
    bool fused_all_reduce = true;      // batch-1 all-reduces summed in the GEMVs (cuda::ExchangeIn)
    bool device_draws = true;          // sampled rows (tpx serve's, tpx run's) drawn on the device (cuda::draw_rows; false: by its twin on
                                       // rank 0's host from the fp32 logits: the same ids, the logits' copy and the host's time)
    bool profile = false;              // events around every op, no CUDA graphs; a table at the end
};

// The decode forwards whose GEMVs take in their neighbours, by token count: one token always, 2 to
// kGemvFusedMaxTokens with gemv_mma, past it up to kBatchGemmFusedMaxTokens with batch_gemm
// (kernels/cuda/ops.h's kGemvMaxTokens and kBatchGemmMaxTokens; cuda::gemv_route_allowed). As
// text for `tpx plan --steps`: "1 to 8 tokens", "1 to 64 tokens", "1 and 9 to 64 tokens" or "1 token".
constexpr int64_t kGemvFusedMaxTokens = 8, kBatchGemmFusedMaxTokens = 64;
std::string fused_decode_tokens(bool gemv_mma, bool batch_gemm);

// One line, "key=value ..." in declaration order, for the run log.
std::string format_kernel_config(const KernelConfig& c);

}  // namespace tpx
