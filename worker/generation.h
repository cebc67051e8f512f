// Generation: prompts in batches of max_batch, a batched prefill, then a decode loop; the
// next token is chosen on rank 0 (greedy, or drawn at temperature, top-k and top-p by `tpx
// serve`'s rule, kernels/cpu/draw.h, with random numbers from the seed and the prompt's id; from
// logits [run.sampling]'s penalties change) and broadcast so that every rank feeds the same tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "worker/comm.h"
#include "worker/executor.h"
#include "worker/progress.h"
#include "text/prompts.h"
#include "text/stop_strings.h"

namespace tpx {

struct SequenceResult;

// [run.sampling]'s draw (kernels/cpu/draw.h's rule).
struct SamplingSettings {
    double temperature = 0;  // 0: greedy (the argmax)
    int64_t top_k = 0;       // 0: no cut
    double top_p = 1;        // 1: no cut
};

struct GenerationSettings {
    int64_t max_batch = 8;
    int64_t max_new_tokens = 16;
    std::vector<int64_t> eos;   // stop ids
    SamplingSettings sampling;
    cpu::Penalties penalties;   // [run.sampling]'s: the logits a token is chosen from (greedy too)
    uint64_t seed = 0;
    bool keep_logits = false;   // every prompt position's logits and every step's (--dump-logits)
    int step_delay_ms = 0;      // a pause per decode step (a test aid for failures mid-run)
    Progress* progress = nullptr;  // rank 0's progress line (prompts done, tokens/s, ETA); null = none
    const Tokenizer* tokenizer = nullptr;  // rank 0: outputs as text, and stop strings; null = ids only
    StopStrings stop;                      // [run] stop (needs the tokenizer)
    std::function<void(const SequenceResult&)> on_finished;  // rank 0, as each sequence ends
    std::string model_path;     // named in the error that non-finite logits end the run with
};

struct SequenceResult {
    Prompt prompt;
    std::vector<int32_t> output;
    std::string finish_reason;  // "eos" (an eos id), "stop" (a stop string) or "length"
    std::string text;           // rank 0, with a tokenizer: the output decoded, cut before a stop string
    bool has_text = false;
    double time_to_first_token_ms = 0;
    double decode_ms = 0;
    std::vector<float> prompt_logits;  // [prompt length, vocab] when keep_logits
    std::vector<float> step_logits;    // [generated, vocab] when keep_logits
};

// Collective: every rank calls it with the same prompts (ids only matter on rank 0).
std::vector<SequenceResult> generate(Executor& exec, Communicator& comm, const std::vector<Prompt>& prompts,
                                     const GenerationSettings& settings);

// The key of prompt `prompt_id`'s draws (its n-th token's random number is cpu::draw_random(key,
// n)): a function of the seed and the id alone.
uint64_t prompt_draw_key(uint64_t seed, const std::string& prompt_id);

// run.output's lines, one a prompt.
void write_results_jsonl(std::ostream& out, const std::vector<SequenceResult>& results);
// --dump-logits' HDF5 file, written whole to `tmp` (a temporary file, for `path`) or throws
// naming `path`.
void write_logits_h5(const std::string& tmp, const std::string& path, const std::vector<SequenceResult>& results, int64_t vocab);

}  // namespace tpx
