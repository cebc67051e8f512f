// Rank 0's choice of a served sequence's next token (worker/token_choice.h).
#include "worker/token_choice.h"

#include <limits>

#include "kernels/cpu/ops.h"
#include "worker/generation.h"

namespace tpx {
namespace {

cpu::Penalties penalties_of(const ServeRequest& r) { return {r.presence_penalty, r.frequency_penalty, r.repetition_penalty}; }

bool held_off(const ServeRequest& r, size_t generated) { return (int64_t)generated < r.min_tokens; }

}  // namespace

bool needs_shaping(const ServeRequest& r, size_t generated, const std::vector<int64_t>& eos) {
    const bool ids_end = !r.stop_token_ids.empty() || (!r.ignore_eos && !eos.empty());
    return penalties_of(r).any() || (held_off(r, generated) && ids_end);
}

uint64_t request_draw_key(const ServeRequest& r) {
    std::string id;
    for (int32_t t : r.prompt) id += std::to_string(t) + ",";
    return prompt_draw_key(r.seed, id);
}

cpu::DrawParams draw_params(const ServeRequest& r, uint64_t random) { return {r.temperature, r.top_k, r.top_p, random}; }

int32_t choose_token(const ServeRequest& r, const std::vector<int32_t>& output, const std::vector<int64_t>& eos, const float* row,
                     int64_t vocab, uint64_t random, std::vector<float>& scratch) {
    if (needs_shaping(r, output.size(), eos)) {
        scratch.assign(row, row + vocab);
        cpu::apply_penalties(scratch.data(), vocab, penalties_of(r), r.prompt, output);
        if (held_off(r, output.size())) {  // (after the penalties, which would take the lowest float past -inf)
            const float lowest = std::numeric_limits<float>::lowest();
            auto hold = [&](int64_t id) {
                if (id >= 0 && id < vocab) scratch[id] = lowest;
            };
            for (int32_t id : r.stop_token_ids) hold(id);
            if (!r.ignore_eos)
                for (int64_t id : eos) hold(id);
        }
        row = scratch.data();
    }
    return (int32_t)cpu::draw_token(row, vocab, draw_params(r, random));  // (the argmax at temperature 0)
}

TokenLogprobs token_logprobs(const float* row, int64_t vocab, int32_t token, int top) {
    const double norm = cpu::log_sum_exp(row, vocab);
    TokenLogprobs t;
    t.token = token;
    t.logprob = (float)((double)row[token] - norm);
    for (int64_t i : cpu::largest_indices(row, vocab, top)) t.top.emplace_back((int32_t)i, (float)((double)row[i] - norm));
    return t;
}

}  // namespace tpx
