// The failure tests' environment hooks and the refusal of retired settings (fault_injection.h).
#include "common/fault_injection.h"

#include <cstdlib>
#include <string>

#include "common/error.h"

namespace tpx {

void maybe_inject_fault(const char* stage, int rank) {
    static const std::string spec = [] {
        const char* f = std::getenv("TPX_FAULT");
        return std::string(f ? f : "");
    }();
    const size_t colon = spec.find(':');
    if (colon == std::string::npos) return;
    if (std::atoi(spec.substr(0, colon).c_str()) == rank && spec.substr(colon + 1) == stage)
        throw Error(std::string("injected failure at ") + stage + " (TPX_FAULT=" + spec + ")");
}

int injected_step_delay_ms() {
    const char* d = std::getenv("TPX_STEP_DELAY_MS");
    return d ? std::atoi(d) : 0;
}

void refuse_retired_variables() {
    static const char* const kRetired[][2] = {
        {"TPX_PDL", "backend.tuning.pdl"},
        {"TPX_GEMV_EARLY", "backend.tuning.gemv_early"},
        {"TPX_GEMV_SPLITK", "backend.tuning.gemv_splitk"},
        {"TPX_GEMV_BALANCE", "backend.tuning.gemv_balance"},
        {"TPX_SUM_WIDE", "backend.tuning.sum_wide"},
        {"TPX_ATTN_EARLY", "backend.tuning.attention_early"},
        {"TPX_DECODE_SPLITS", "backend.tuning.decode_splits"},
        {"TPX_ATTN_GQA", "backend.tuning.attention_gqa"},
        {"TPX_FLASH", "backend.tuning.flash_tile"},
        {"TPX_FLASH_SHORT_MAX", "backend.tuning.flash_short_max"},
        {"TPX_GEMM_TUNE", "backend.tuning.gemm_tune"},
        {"TPX_RESIDUAL_EPILOGUE", "backend.tuning.residual_epilogue"},
        {"TPX_MOE", "backend.tuning.moe"},
        {"TPX_ONESHOT", "backend.tuning.oneshot"},
        {"TPX_AR_FUSE", "backend.tuning.fused_all_reduce"},
        {"TPX_PROFILE", "backend.tuning.profile"},
        {"TPX_COLLECTIVE_TIMEOUT_S", "backend.collective_timeout_s"},
        {"TPX_READ_THREADS", "model.read_threads"},
    };
    for (const auto& [var, key] : kRetired)
        if (std::getenv(var))
            throw JobError(std::string(var) + " is no longer read: set " + key + " in the job (`tpx example` lists every key)");
}

}  // namespace tpx
