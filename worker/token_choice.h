// What rank 0's serve scheduler does with one sequence's row of logits: the row its next token
// is chosen from (the call's penalties and min_tokens, on a copy: logprobs stay the model's, as
// vLLM's default raw_logprobs), the choice, and the token's logprobs. No MPI, no HTTP.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/draw.h"
#include "server/request.h"

namespace tpx {

// Whether the call changes the logits its sequence's next token is chosen from: penalties, or
// min_tokens not reached while an eos id (`eos`, unless the call ignores them) or one of its stop
// ids could end the sequence.
bool needs_shaping(const ServeRequest& r, size_t generated, const std::vector<int64_t>& eos);

// The next token from `row` (finite): drawn by cpu::draw_token's rule with `random` at the call's
// temperature (the device's draw, kernels/cpu/draw.h), else the argmax; from the row as the call
// changes it where needs_shaping (the copy in `scratch`: penalties, then the ids that would end
// the sequence before min_tokens at the lowest float, -inf reading as a broken row). -1 where the
// changed row is not finite (penalties that overflow a large logit).
int32_t choose_token(const ServeRequest& r, const std::vector<int32_t>& output, const std::vector<int64_t>& eos, const float* row,
                     int64_t vocab, uint64_t random, std::vector<float>& scratch);

// The key of a call's random numbers: the same for the same seed and prompt, whatever else runs
// (prompt_draw_key's, with the prompt's ids as its id).
uint64_t request_draw_key(const ServeRequest& r);

// The draw of the call's next token on its own logits (what forward_draw takes a row): `random`
// is cpu::draw_random of the call's key and the count of its tokens so far.
cpu::DrawParams draw_params(const ServeRequest& r, uint64_t random);

// A generated token's logprobs from its step's row (finite values): its own and the `top` most
// likely tokens', log-softmax in double. text_offset is left for the caller.
TokenLogprobs token_logprobs(const float* row, int64_t vocab, int32_t token, int top);

}  // namespace tpx
