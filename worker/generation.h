// Generation: prompts in batches of max_batch, a batched prefill, then a decode loop; the
// next token is chosen on rank 0 (greedy, or sampled with temperature, top-k and top-p from a
// seeded generator) and broadcast so that every rank feeds the same tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "worker/comm.h"
#include "worker/executor.h"
#include "worker/prompts.h"

namespace tpx {

struct GenerationSettings {
    int64_t max_batch = 8;
    int64_t max_new_tokens = 16;
    std::vector<int64_t> eos;   // stop ids
    cpu::SamplingParams sampling;
    uint64_t seed = 0;
    bool keep_logits = false;   // every prompt position's logits and every step's (--dump-logits)
    int step_delay_ms = 0;      // a pause per decode step (a test aid for failures mid-run)
    std::string model_path;     // named in the error that non-finite logits end the run with
};

struct SequenceResult {
    Prompt prompt;
    std::vector<int32_t> output;
    std::string finish_reason;  // "stop" (an eos id) or "length"
    double time_to_first_token_ms = 0;
    double decode_ms = 0;
    std::vector<float> prompt_logits;  // [prompt length, vocab] when keep_logits
    std::vector<float> step_logits;    // [generated, vocab] when keep_logits
};

// Collective: every rank calls it with the same prompts (ids only matter on rank 0).
std::vector<SequenceResult> generate(Executor& exec, Communicator& comm, const std::vector<Prompt>& prompts,
                                     const GenerationSettings& settings);

// Written atomically (a temp file, then renamed), so a failed run leaves nothing half-written.
void write_results_jsonl(const std::string& path, const std::vector<SequenceResult>& results);
void write_logits_h5(const std::string& path, const std::vector<SequenceResult>& results, int64_t vocab);

}  // namespace tpx
