// The kernel settings as one log line (see kernel_config.h).
#include "common/kernel_config.h"

#include <sstream>

namespace tpx {

std::string fused_decode_tokens(bool gemv_mma, bool batch_gemm) {
    const std::string most = std::to_string(batch_gemm ? kBatchGemmFusedMaxTokens : kGemvFusedMaxTokens) + " tokens";
    if (gemv_mma) return "1 to " + most;
    return batch_gemm ? "1 and " + std::to_string(kGemvFusedMaxTokens + 1) + " to " + most : "1 token";
}

std::string format_kernel_config(const KernelConfig& c) {
    std::ostringstream os;
    auto on = [](bool b) { return b ? "true" : "false"; };
    os << "pdl=" << on(c.pdl) << " gemv_early=" << on(c.gemv_early) << " gemv_splitk=" << c.gemv_splitk
       << " gemv_balance=" << on(c.gemv_balance) << " sum_wide=" << on(c.sum_wide) << " gemv_mma=" << on(c.gemv_mma) << " batch_gemm=" << on(c.batch_gemm) << " attention_early=" << on(c.attention_early)
       << " decode_splits=" << c.decode_splits << " attention_gqa=" << on(c.attention_gqa) << " attention_one_pass=" << on(c.attention_one_pass)
       << " attention_rope=" << on(c.attention_rope) << " attention_mma=" << on(c.attention_mma) << " flash_tile=" << c.flash_tile
       << " flash_short_max=" << c.flash_short_max << " gemm_tune=" << on(c.gemm_tune)
       << " residual_epilogue=" << on(c.residual_epilogue) << " quant_prefill=" << c.quant_prefill << " quant_gemv_tokens=" << c.quant_gemv_tokens << " quant_mma=" << on(c.quant_mma) << " quant_ring=" << on(c.quant_ring) << " moe=" << c.moe << " oneshot=" << on(c.oneshot)
       << " fused_all_reduce=" << on(c.fused_all_reduce) << " device_draws=" << on(c.device_draws) << " profile=" << on(c.profile);
    return os.str();
}

}  // namespace tpx
