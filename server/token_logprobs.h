// One generated token's logprobs, as the scheduler computes them (worker/token_choice) and the
// OpenAI bodies give them (server/openai_api).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace tpx {

// A generated token's logprob (the log-softmax of the model's logits at its step, before
// temperature and cuts, as vLLM's default), and the most likely tokens' at that step, most
// likely first.
struct TokenLogprobs {
    int32_t token = 0;
    float logprob = 0;
    std::vector<std::pair<int32_t, float>> top;
    int64_t text_offset = 0;  // where its text begins in the output's, in characters (where the text before it and with it part)
};

}  // namespace tpx
