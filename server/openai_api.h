// OpenAI's HTTP schema for /v1/completions and /v1/chat/completions: request bodies checked and
// turned into prompts and limits (each error names its parameter, as OpenAI's do), and the
// response, stream-chunk and error bodies. Pure functions of their inputs; no HTTP, no MPI.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/sampling_limits.h"
#include "server/token_logprobs.h"
#include "text/text_tools.h"

namespace tpx {

// Response bodies keep their keys in the order written (vLLM's; a completion's top_logprobs the
// chosen token first, then the most likely).
using ResponseJson = nlohmann::ordered_json;

// An error answered as {"error": {"message", "type", "param", "code"}} with this HTTP status.
struct ApiError : std::runtime_error {
    ApiError(int status, const std::string& message, std::string param = "", std::string code = "")
        : std::runtime_error(message), status(status), param(std::move(param)), code(std::move(code)) {}
    int status;
    std::string param, code;
};
nlohmann::json error_body(int status, const std::string& message, const std::string& param = "", const std::string& code = "");

// The most stop strings a call may give (OpenAI takes 4).
constexpr size_t kMaxStops = 16;
// vLLM's stop_token_ids: a call's ids are looked for at every step of its sequences.
constexpr size_t kMaxStopTokenIds = 256;
// The most likely tokens a call may ask each token's logprobs to name (vLLM's max_logprobs).
constexpr int kMaxLogprobs = 20;

// What the server knows when it checks a call (from the job and the plan).
struct ApiLimits {
    std::string model_name;
    int64_t vocab = 0;
    int64_t max_seq_len = 0;          // prompt + generated tokens of one sequence
    int64_t default_max_tokens = 16;  // run.max_new_tokens, when a call gives no max_tokens
    double default_temperature = 0;   // run.sampling's, when a call gives none
    int64_t default_top_k = 0;
    double default_top_p = 1;
    double default_presence_penalty = 0, default_frequency_penalty = 0, default_repetition_penalty = 1;  // run.sampling's
    const TextTools* text = nullptr;  // tokenizer and chat template; null or empty = token-id prompts only
};

// One checked call: its prompts as ids and how to generate from each.
struct ApiCall {
    bool chat = false;
    bool stream = false;
    bool include_usage = false;       // stream_options.include_usage
    bool continuous_usage = false;    // vLLM's stream_options.continuous_usage_stats: usage in every chunk
    bool return_token_ids = false;    // choices carry token_ids and prompt_token_ids (as vLLM's)
    bool skip_special_tokens = true;  // vLLM's: the output's special tokens left out of its text
    std::vector<int32_t> stop_token_ids;  // vLLM's: ids that end a sequence as an eos id does
    bool ignore_eos = false;              // vLLM's: the eos ids do not end a sequence
    int logprobs = -1;                    // each token's logprob and this many most likely tokens' (-1: none)
    const Tokenizer* tokenizer = nullptr;  // names the logprobs' tokens (none: "token_id:ID")
    bool return_tokens_as_token_ids = false;  // vLLM's: "token_id:ID" all the same
    double presence_penalty = 0, frequency_penalty = 0;  // OpenAI's, [-2, 2]
    double repetition_penalty = 1;                       // vLLM's (HF's), [kMinRepetitionPenalty, kMaxRepetitionPenalty]
    int64_t min_tokens = 0;                              // vLLM's, at most max_tokens
    std::vector<std::vector<int32_t>> prompts;
    std::vector<int64_t> max_tokens;  // per prompt
    double temperature = 0;
    int64_t top_k = 0;
    double top_p = 1;
    std::optional<uint64_t> seed;
    std::vector<std::string> stop;
};

// The 404 of a call or a GET /v1/models/ID that names a model this server does not have.
ApiError unknown_model(const std::string& asked, const ApiLimits& limits);

// Throws ApiError: 400 (bad or unsupported parameter, naming it), 404 (another model), 413
// (prompt + max_tokens beyond max_seq_len).
ApiCall parse_call(const nlohmann::json& body, const ApiLimits& limits, bool chat);

// How a prompt's output ended: finish_reason ("" while it goes on), and what vLLM's stop_reason
// gives: the call's stop id or stop string that ended it (neither: null, as for an eos id).
struct ChoiceEnd {
    std::string finish_reason;
    int32_t stop_id = -1;
    std::string stop_string;
};

// One prompt's answer.
struct ChoiceResult {
    std::string text;
    std::vector<int32_t> output;
    ChoiceEnd end;
    std::vector<TokenLogprobs> logprobs;  // where the call asks
};

ResponseJson response_body(const ApiCall& call, const std::string& id, int64_t created, const std::string& model,
                           const std::vector<ChoiceResult>& choices);
// A choice's "logprobs" for `tokens`, null where the call asks for none. Completions: OpenAI's
// tokens, token_logprobs, top_logprobs (the most likely tokens', and the chosen one's) and
// text_offset (where each token's text begins in the output's, in characters); chat: content, a
// {token, logprob, bytes, top_logprobs} a token. A token's text is its id decoded alone (special
// tokens kept), as vLLM's; its bytes the token's own (Tokenizer::token_bytes).
ResponseJson logprobs_body(const ApiCall& call, const std::vector<TokenLogprobs>& tokens);
// A stream chunk of prompt `index`: its new text (and token, with its logprobs body where the call
// asks), or its end (end.finish_reason set). With return_token_ids the prompt's first chunk
// (`first`) carries its prompt_token_ids, as vLLM's.
ResponseJson stream_chunk(const ApiCall& call, const std::string& id, int64_t created, const std::string& model, int index,
                          const std::string& text, const std::vector<int32_t>& tokens, const ChoiceEnd& end, bool first,
                          ResponseJson logprobs = nullptr);
// The chat stream's first chunk of a prompt: the assistant's role (and with return_token_ids the
// prompt_token_ids, beside the choices, as vLLM's).
ResponseJson stream_role_chunk(const ApiCall& call, const std::string& id, int64_t created, const std::string& model, int index);
// The chunk after the last when stream_options.include_usage: usage, no choices.
ResponseJson stream_usage_chunk(const ApiCall& call, const std::string& id, int64_t created, const std::string& model,
                                int64_t completion_tokens);
ResponseJson usage_body(const ApiCall& call, int64_t completion_tokens);
// One prompt's usage so far (a chunk's, with continuous_usage): its prompt and `completion_tokens`.
ResponseJson prompt_usage(const ApiCall& call, int index, int64_t completion_tokens);

}  // namespace tpx
