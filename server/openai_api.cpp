// Parameters follow OpenAI's API reference; what tpx cannot honour (n > 1, echo, prompt logprobs) is
// refused with 400 rather than ignored, so that a client never gets an answer it did not ask for.
#include "server/openai_api.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace tpx {
namespace {

using nlohmann::json;

const char* error_type(int status) {
    switch (status) {
        case 401: return "authentication_error";
        case 404: return "not_found_error";
        case 429: return "rate_limit_error";
        case 500: return "server_error";
        case 503: return "service_unavailable";
        default: return "invalid_request_error";
    }
}

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param, "invalid_value"); }

bool given(const json& body, const char* key) { return body.contains(key) && !body[key].is_null(); }

// `open_low`: lo itself is out of range too.
double number_in(const json& body, const char* key, double lo, double hi, double fallback, bool open_low = false) {
    if (!given(body, key)) return fallback;
    const json& v = body[key];
    if (!v.is_number()) bad(key, std::string("'") + key + "' must be a number");
    double x = v.get<double>();
    if (!((open_low ? x > lo : x >= lo) && x <= hi))
        bad(key, std::string("'") + key + "' = " + v.dump() + " is out of range " + (open_low ? "(" : "[") + json(lo).dump() + ", " +
                     json(hi).dump() + "]");
    return x;
}

int64_t integer_in(const json& body, const char* key, int64_t lo, int64_t hi, int64_t fallback) {
    if (!given(body, key)) return fallback;
    const json& v = body[key];
    if (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()) && std::fabs(v.get<double>()) >= 0x1p63)  // past 64 bits
        bad(key, std::string("'") + key + "' = " + v.dump() + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    if (!v.is_number_integer()) bad(key, std::string("'") + key + "' must be an integer");
    const bool past = v.is_number_unsigned() && v.get<uint64_t>() > (uint64_t)INT64_MAX;  // would wrap negative
    const int64_t x = past ? INT64_MAX : v.get<int64_t>();
    if (past || x < lo || x > hi) bad(key, std::string("'") + key + "' = " + v.dump() + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
}

// `fallback`: the value where the key is absent or null. `param`: the name errors give (a nested
// key's path); the key itself by default.
bool boolean(const json& body, const char* key, bool fallback = false, const char* param = nullptr) {
    if (!given(body, key)) return fallback;
    const std::string name = param ? param : key;
    if (!body[key].is_boolean()) bad(name, "'" + name + "' must be true or false");
    return body[key].get<bool>();
}

const Tokenizer& tokenizer_for(const ApiLimits& limits, const char* param) {
    if (!limits.text || !limits.text->tokenizer)
        bad(param, "model '" + limits.model_name + "' has no tokenizer: give the prompt as token ids");
    return *limits.text->tokenizer;
}

// `param`, `what`: the parameter the ids are, as errors name it and as their text begins.
std::vector<int32_t> ids_of(const json& list, const ApiLimits& limits, const char* param = "prompt", const char* what = "a token-id prompt") {
    std::vector<int32_t> ids;
    for (const json& t : list) {
        if (!t.is_number_integer()) bad(param, std::string(what) + " holds only integers");
        const int64_t id = t.is_number_unsigned() && t.get<uint64_t>() > (uint64_t)INT64_MAX ? -1 : t.get<int64_t>();
        if (id < 0 || id >= limits.vocab)
            bad(param, std::string(what) + ": token id " + t.dump() + " is outside the vocabulary [0, " + std::to_string(limits.vocab) + ")");
        ids.push_back((int32_t)id);
    }
    return ids;
}

// A string, a list of strings, a list of ids, or a list of lists of ids.
// add_special_tokens: the tokenizer's own (its post-processor's BOS) around a text prompt.
std::vector<std::vector<int32_t>> completion_prompts(const json& body, const ApiLimits& limits, bool add_special_tokens) {
    if (!given(body, "prompt")) bad("prompt", "'prompt' is required");
    const json& p = body["prompt"];
    std::vector<std::vector<int32_t>> out;
    if (p.is_string()) {
        out.push_back(tokenizer_for(limits, "prompt").encode(p.get<std::string>(), add_special_tokens));
    } else if (p.is_array() && !p.empty() && p[0].is_string()) {
        for (const json& s : p) {
            if (!s.is_string()) bad("prompt", "a list of prompts holds strings only, or token-id lists only");
            out.push_back(tokenizer_for(limits, "prompt").encode(s.get<std::string>(), add_special_tokens));
        }
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
        out.push_back(ids_of(p, limits));
    } else if (p.is_array() && !p.empty() && p[0].is_array()) {
        for (const json& l : p) {
            if (!l.is_array()) bad("prompt", "a list of token-id prompts holds lists of integers only");
            out.push_back(ids_of(l, limits));
        }
    } else {
        bad("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists");
    }
    for (const auto& ids : out)
        if (ids.empty()) bad("prompt", "a prompt is empty (no tokens)");
    return out;
}

// add_special_tokens: the tokenizer's own around the rendered template too (vLLM's; the
// template usually writes them itself, so the default is false).
std::vector<int32_t> chat_prompt(const json& body, const ApiLimits& limits, bool add_special_tokens) {
    if (!given(body, "messages") || !body["messages"].is_array() || body["messages"].empty())
        bad("messages", "'messages' must be a non-empty list of {\"role\", \"content\"}");
    if (!limits.text || !limits.text->tokenizer || !limits.text->chat)
        bad("messages", "model '" + limits.model_name + "' has no chat template: use /v1/completions");
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    for (const json& m : body["messages"]) {
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
            bad("messages", "every message needs a string 'role'");
        nlohmann::ordered_json msg = {{"role", m["role"]}};
        const json& c = m.contains("content") ? m["content"] : json();
        // (OpenAI's: only an assistant's message, as one of tool calls, and an old function
        // result's may go without content.)
        if (c.is_null() && m["role"] != "assistant" && m["role"] != "function")
            bad("messages", "a '" + m["role"].get<std::string>() + "' message needs 'content' (only an assistant's or a function's may be null)");
        if (c.is_string()) {
            msg["content"] = c;
        } else if (c.is_array()) {  // content parts: their text, joined
            std::string text;
            for (const json& part : c) {
                if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
                    bad("messages", "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
                text += part["text"].get<std::string>();
            }
            msg["content"] = text;
        } else if (c.is_null()) {
            msg["content"] = "";
        } else {
            bad("messages", "a message's 'content' must be a string or a list of text parts");
        }
        messages.push_back(std::move(msg));
    }
    std::vector<int32_t> ids;
    try {
        ids = limits.text->encode_chat(messages, /*add_generation_prompt=*/true, add_special_tokens);
    } catch (const std::exception& e) {
        bad("messages", std::string("the chat template failed: ") + e.what());
    }
    if (ids.empty()) bad("messages", "the messages render to no tokens");
    return ids;
}

}  // namespace

json error_body(int status, const std::string& message, const std::string& param, const std::string& code) {
    return {{"error",
             {{"message", message},
              {"type", error_type(status)},
              {"param", param.empty() ? json() : json(param)},
              {"code", code.empty() ? json() : json(code)}}}};
}

ApiError unknown_model(const std::string& asked, const ApiLimits& limits) {
    return ApiError(404, "The model '" + asked + "' does not exist; this server has '" + limits.model_name + "'", "model", "model_not_found");
}

namespace {

// A completion's `logprobs` is how many most likely tokens each token's names (null or false:
// none); a chat's is true or false, `top_logprobs` the count (OpenAI's two forms). vLLM's
// return_tokens_as_token_ids names tokens by id.
void parse_logprobs(const json& body, const ApiLimits& limits, ApiCall& call) {
    if (call.chat) {
        const bool wanted = boolean(body, "logprobs");
        const int64_t top = integer_in(body, "top_logprobs", 0, kMaxLogprobs, 0);
        if (top > 0 && !wanted) bad("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
        if (wanted) call.logprobs = (int)top;
    } else {
        if (given(body, "top_logprobs") && body["top_logprobs"] != 0)
            bad("top_logprobs", "'top_logprobs' is a chat parameter: a completion's 'logprobs' is the count");
        if (given(body, "logprobs") && !(body["logprobs"].is_boolean() && !body["logprobs"].get<bool>()))
            call.logprobs = (int)integer_in(body, "logprobs", 0, kMaxLogprobs, 0);
    }
    call.return_tokens_as_token_ids = boolean(body, "return_tokens_as_token_ids");
    if (limits.text && limits.text->tokenizer) call.tokenizer = &*limits.text->tokenizer;
}

// What would change the answer and is not done here is refused (400 naming it), not ignored.
void refuse_unsupported(const json& body, bool chat) {
    if (given(body, "logit_bias") && !(body["logit_bias"].is_object() && body["logit_bias"].empty()))
        bad("logit_bias", "logit_bias is not supported");
    if (given(body, "tools") && !(body["tools"].is_array() && body["tools"].empty())) bad("tools", "tool calls are not supported");
    if (given(body, "tool_choice") && body["tool_choice"] != "none" && body["tool_choice"] != "auto")
        bad("tool_choice", "tool calls are not supported ('tool_choice' may be \"none\" or \"auto\")");
    if (given(body, "response_format") &&
        !(body["response_format"].is_object() && body["response_format"].contains("type") && body["response_format"]["type"] == "text"))
        bad("response_format", "only {\"type\": \"text\"} is supported");
    if (given(body, "best_of") && integer_in(body, "best_of", 1, 1, 1) != 1) bad("best_of", "only best_of = 1 is supported");
    // OpenAI's suffix, and vLLM's extensions that would change the answer: each only at the
    // value that changes nothing.
    if (given(body, "min_p")) {
        if (!body["min_p"].is_number()) bad("min_p", "'min_p' must be a number");
        if (body["min_p"].get<double>() != 0) bad("min_p", "min_p is not supported (0 only)");
    }
    if (given(body, "suffix") && !(body["suffix"].is_string() && body["suffix"].get<std::string>().empty()))
        bad("suffix", "suffix is not supported");
    for (const char* key : {"bad_words", "allowed_token_ids"})
        if (given(body, key) && !(body[key].is_array() && body[key].empty())) bad(key, std::string(key) + " is not supported");
    for (const char* key : {"use_beam_search", "include_stop_str_in_output", "continue_final_message"})
        if (boolean(body, key)) bad(key, std::string(key) + " = true is not supported");
    for (const char* key : {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs", "truncate_prompt_tokens",
                            "chat_template", "chat_template_kwargs", "documents", "logits_processors", "prompt_logprobs"})
        if (given(body, key)) bad(key, std::string(key) + " is not supported");
    // OpenAI's older form of tools and tool_choice, refused as they are.
    if (given(body, "functions") && !(body["functions"].is_array() && body["functions"].empty())) bad("functions", "function calls are not supported");
    if (given(body, "function_call") && body["function_call"] != "none" && body["function_call"] != "auto")
        bad("function_call", "function calls are not supported ('function_call' may be \"none\" or \"auto\")");
    // OpenAI's audio output: text is all this server writes.
    if (given(body, "audio")) bad("audio", "audio output is not supported");
    if (given(body, "modalities") && body["modalities"] != json::array({"text"}))
        bad("modalities", "only the text modality is supported ('modalities' may be [\"text\"])");
    if (chat && given(body, "add_generation_prompt") && !boolean(body, "add_generation_prompt"))
        bad("add_generation_prompt", "add_generation_prompt = false is not supported");
}

}  // namespace

ApiCall parse_call(const json& body, const ApiLimits& limits, bool chat) {
    if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object", "", "invalid_json");
    if (given(body, "model")) {
        if (!body["model"].is_string()) bad("model", "'model' must be a string");
        if (body["model"].get<std::string>() != limits.model_name) throw unknown_model(body["model"].get<std::string>(), limits);
    }
    ApiCall call;
    call.chat = chat;
    if (integer_in(body, "n", 1, 1, 1) != 1) bad("n", "only n = 1 is supported");
    if (boolean(body, "echo")) bad("echo", "echo = true is not supported");
    refuse_unsupported(body, chat);
    call.stream = boolean(body, "stream");
    if (given(body, "stream_options")) {
        if (!call.stream) bad("stream_options", "'stream_options' is only allowed with \"stream\": true");
        if (!body["stream_options"].is_object()) bad("stream_options", "'stream_options' must be an object");
        call.include_usage = boolean(body["stream_options"], "include_usage", false, "stream_options.include_usage");
        // (vLLM's: only beside include_usage.)
        call.continuous_usage =
            boolean(body["stream_options"], "continuous_usage_stats", false, "stream_options.continuous_usage_stats") && call.include_usage;
    }
    parse_logprobs(body, limits, call);
    call.return_token_ids = boolean(body, "return_token_ids");
    call.skip_special_tokens = boolean(body, "skip_special_tokens", /*fallback=*/true);
    call.ignore_eos = boolean(body, "ignore_eos");
    if (given(body, "stop_token_ids")) {
        if (!body["stop_token_ids"].is_array()) bad("stop_token_ids", "'stop_token_ids' must be a list of token ids");
        if (body["stop_token_ids"].size() > kMaxStopTokenIds)
            bad("stop_token_ids", "'stop_token_ids' holds " + std::to_string(body["stop_token_ids"].size()) + " ids; at most " +
                                      std::to_string(kMaxStopTokenIds) + " are taken");
        call.stop_token_ids = ids_of(body["stop_token_ids"], limits, "stop_token_ids", "'stop_token_ids'");
    }
    // vLLM's defaults: a completion's text gets the tokenizer's special tokens, a chat's template
    // writes its own.
    const bool add_special_tokens = boolean(body, "add_special_tokens", /*fallback=*/!chat);
    call.temperature = number_in(body, "temperature", 0, 2, limits.default_temperature);
    call.top_p = number_in(body, "top_p", 0, 1, limits.default_top_p, /*open_low=*/true);
    call.top_k = integer_in(body, "top_k", -1, 1 << 30, limits.default_top_k);
    if (call.top_k < 0) call.top_k = 0;  // vLLM's -1: no cut
    call.presence_penalty = number_in(body, "presence_penalty", -kMaxPresencePenalty, kMaxPresencePenalty, limits.default_presence_penalty);
    call.frequency_penalty = number_in(body, "frequency_penalty", -kMaxPresencePenalty, kMaxPresencePenalty, limits.default_frequency_penalty);
    call.repetition_penalty = number_in(body, "repetition_penalty", kMinRepetitionPenalty, kMaxRepetitionPenalty, limits.default_repetition_penalty);
    if (given(body, "seed")) {
        if (!body["seed"].is_number_integer()) bad("seed", "'seed' must be an integer of at most 64 bits");
        call.seed = body["seed"].is_number_unsigned() ? body["seed"].get<uint64_t>() : (uint64_t)body["seed"].get<int64_t>();
    }
    if (given(body, "stop")) {
        const json& s = body["stop"];
        if (s.is_string()) call.stop.push_back(s.get<std::string>());
        else if (s.is_array())
            for (const json& x : s) {
                if (!x.is_string()) bad("stop", "'stop' must be a string or a list of strings");
                call.stop.push_back(x.get<std::string>());
            }
        else bad("stop", "'stop' must be a string or a list of strings");
        // Each step of every running sequence looks for each stop string: a call's list is kept
        // short, so that one call cannot slow the batch it runs in.
        if (call.stop.size() > kMaxStops)
            bad("stop", "'stop' holds " + std::to_string(call.stop.size()) + " strings; at most " + std::to_string(kMaxStops) + " are taken");
        for (const std::string& x : call.stop)
            if (x.empty()) bad("stop", "'stop' holds an empty string");
        if (!call.stop.empty() && (!limits.text || !limits.text->tokenizer))
            bad("stop", "stop strings need a tokenizer, and model '" + limits.model_name + "' has none");
    }
    const char* max_key = chat && given(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    const bool max_given = given(body, max_key);
    const int64_t max_tokens = integer_in(body, max_key, 1, 1 << 30, limits.default_max_tokens);
    call.min_tokens = integer_in(body, "min_tokens", 0, 1 << 30, 0);
    if (chat) call.prompts.push_back(chat_prompt(body, limits, add_special_tokens));
    else call.prompts = completion_prompts(body, limits, add_special_tokens);
    for (const auto& p : call.prompts) {
        int64_t room = limits.max_seq_len - (int64_t)p.size();
        // The prompt alone leaving no room is the prompt's fault, whatever max_tokens says.
        const bool prompt_alone = room < 1;
        if (prompt_alone || (max_given && max_tokens > room))
            throw ApiError(413, "This model's maximum context length is " + std::to_string(limits.max_seq_len) + " tokens; the prompt has " +
                                    std::to_string(p.size()) +
                                    (prompt_alone ? ", leaving no room for a generated token"
                                                  : " and " + std::string(max_key) + " is " + std::to_string(max_tokens)) +
                                    " (run.max_seq_len)",
                           prompt_alone ? (chat ? "messages" : "prompt") : max_key, "context_length_exceeded");
        call.max_tokens.push_back(std::min(max_tokens, room));
        if (call.min_tokens > call.max_tokens.back())  // (vLLM's: its default max_tokens is the room left)
            bad("min_tokens", "'min_tokens' (" + std::to_string(call.min_tokens) + ") must be at most the tokens a prompt may generate, " +
                                  std::to_string(call.max_tokens.back()) + " (" +
                                  (max_given ? "'" + std::string(max_key) + "'"
                                             : max_tokens <= room ? "the default, run.max_new_tokens" : "what max_seq_len leaves") +
                                  ")");
    }
    return call;
}

namespace {
ResponseJson stop_reason(const ChoiceEnd& end) {
    if (end.stop_id >= 0) return end.stop_id;
    if (!end.stop_string.empty()) return end.stop_string;
    return nullptr;
}
// A token's text: its id decoded alone, special tokens kept (vLLM's), or "token_id:ID".
std::string token_text(const ApiCall& call, int32_t id) {
    return call.tokenizer && !call.return_tokens_as_token_ids ? call.tokenizer->decode({id}, /*skip_special_tokens=*/false) : "token_id:" + std::to_string(id);
}

// JSON has no -inf: vLLM's and OpenAI's floor.
double clamp_logprob(float logprob) { return std::max((double)logprob, -9999.0); }

// A chat token's {token, logprob, bytes}: bytes the token's own (a piece of a character's: its
// raw bytes, where its text is U+FFFD), or its name's.
ResponseJson chat_token(const ApiCall& call, int32_t id, float logprob) {
    const std::string text = token_text(call, id);
    const std::string raw = call.tokenizer && !call.return_tokens_as_token_ids ? call.tokenizer->token_bytes(id) : text;
    std::vector<int> bytes;
    for (unsigned char b : raw) bytes.push_back(b);
    return {{"token", text}, {"logprob", clamp_logprob(logprob)}, {"bytes", bytes}};
}
}  // namespace

ResponseJson logprobs_body(const ApiCall& call, const std::vector<TokenLogprobs>& tokens) {
    if (call.logprobs < 0) return nullptr;
    if (call.chat) {
        ResponseJson content = ResponseJson::array();
        for (const TokenLogprobs& t : tokens) {
            ResponseJson entry = chat_token(call, t.token, t.logprob);
            ResponseJson top = ResponseJson::array();
            for (const auto& [id, lp] : t.top) top.push_back(chat_token(call, id, lp));
            entry["top_logprobs"] = std::move(top);
            content.push_back(std::move(entry));
        }
        return {{"content", std::move(content)}};
    }
    ResponseJson text = ResponseJson::array(), logprob = ResponseJson::array(), top = ResponseJson::array(), offsets = ResponseJson::array();
    for (const TokenLogprobs& t : tokens) {
        const std::string s = token_text(call, t.token);
        text.push_back(s);
        logprob.push_back(clamp_logprob(t.logprob));
        ResponseJson named = {{s, clamp_logprob(t.logprob)}};  // the chosen token first, then the most likely (a text named twice: its first)
        for (const auto& [id, lp] : t.top) {
            const std::string k = token_text(call, id);
            if (!named.contains(k)) named[k] = clamp_logprob(lp);
        }
        top.push_back(std::move(named));
        offsets.push_back(t.text_offset);
    }
    return {{"text_offset", std::move(offsets)}, {"token_logprobs", std::move(logprob)}, {"tokens", std::move(text)}, {"top_logprobs", std::move(top)}};
}

ResponseJson prompt_usage(const ApiCall& call, int index, int64_t completion_tokens) {
    const int64_t prompt_tokens = (int64_t)call.prompts[(size_t)index].size();
    return {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt_tokens + completion_tokens}};
}

ResponseJson usage_body(const ApiCall& call, int64_t completion_tokens) {
    int64_t prompt_tokens = 0;
    for (const auto& p : call.prompts) prompt_tokens += (int64_t)p.size();
    return {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt_tokens + completion_tokens}};
}

ResponseJson response_body(const ApiCall& call, const std::string& id, int64_t created, const std::string& model,
                           const std::vector<ChoiceResult>& choices) {
    ResponseJson out = {{"id", id}, {"object", call.chat ? "chat.completion" : "text_completion"}, {"created", created}, {"model", model}};
    ResponseJson list = ResponseJson::array();
    int64_t generated = 0;
    for (size_t i = 0; i < choices.size(); ++i) {
        const ChoiceResult& c = choices[i];
        ResponseJson choice = {{"index", i}};
        if (call.chat) choice["message"] = {{"role", "assistant"}, {"content", c.text}};
        else choice["text"] = c.text;
        choice["logprobs"] = logprobs_body(call, c.logprobs);
        choice["finish_reason"] = c.end.finish_reason;
        choice["stop_reason"] = stop_reason(c.end);
        if (call.return_token_ids) choice["token_ids"] = c.output;
        if (call.return_token_ids && !call.chat) choice["prompt_token_ids"] = call.prompts[i];
        list.push_back(std::move(choice));
        generated += (int64_t)c.output.size();
    }
    out["choices"] = std::move(list);
    if (call.return_token_ids && call.chat) out["prompt_token_ids"] = call.prompts[0];  // vLLM's place for a chat's (one prompt)
    out["usage"] = usage_body(call, generated);
    return out;
}

ResponseJson stream_chunk(const ApiCall& call, const std::string& id, int64_t created, const std::string& model, int index,
                          const std::string& text, const std::vector<int32_t>& tokens, const ChoiceEnd& end, bool first, ResponseJson logprobs) {
    const std::string& finish_reason = end.finish_reason;
    ResponseJson choice = {{"index", index}};
    if (call.chat) choice["delta"] = finish_reason.empty() || !text.empty() ? ResponseJson{{"content", text}} : ResponseJson::object();
    else choice["text"] = text;
    choice["logprobs"] = std::move(logprobs);
    choice["finish_reason"] = finish_reason.empty() ? ResponseJson() : ResponseJson(finish_reason);
    choice["stop_reason"] = stop_reason(end);
    if (call.return_token_ids) choice["token_ids"] = tokens;
    if (call.return_token_ids && first) choice["prompt_token_ids"] = call.prompts[(size_t)index];
    return {{"id", id}, {"object", call.chat ? "chat.completion.chunk" : "text_completion"}, {"created", created}, {"model", model},
            {"choices", ResponseJson::array({choice})}};
}

ResponseJson stream_role_chunk(const ApiCall& call, const std::string& id, int64_t created, const std::string& model, int index) {
    ResponseJson choice = {{"index", index},
                           {"delta", {{"role", "assistant"}, {"content", ""}}},
                           {"logprobs", nullptr},
                           {"finish_reason", nullptr},
                           {"stop_reason", nullptr}};
    ResponseJson out = {{"id", id},       {"object", "chat.completion.chunk"},       {"created", created},
                        {"model", model}, {"choices", ResponseJson::array({choice})}};
    if (call.return_token_ids) out["prompt_token_ids"] = call.prompts[(size_t)index];
    return out;
}

ResponseJson stream_usage_chunk(const ApiCall& call, const std::string& id, int64_t created, const std::string& model,
                                int64_t completion_tokens) {
    return {{"id", id}, {"object", call.chat ? "chat.completion.chunk" : "text_completion"}, {"created", created}, {"model", model},
            {"choices", ResponseJson::array()}, {"usage", usage_body(call, completion_tokens)}};
}

}  // namespace tpx
