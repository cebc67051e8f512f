// The penalties' ranges, one for the job file ([run.sampling]) and the API (tpx serve's calls):
// OpenAI's for presence and frequency; repetition where vLLM takes any value above 0, bounded so
// that a logit's fp32 quotient or product stays finite and the penalty never underflows to 0.
#pragma once

namespace tpx {

constexpr double kMaxPresencePenalty = 2.0;  // presence and frequency: [-2, 2]
constexpr double kMinRepetitionPenalty = 1e-6, kMaxRepetitionPenalty = 1e6;

}  // namespace tpx
