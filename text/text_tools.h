// A job's text tools: the tokenizer (`[model] tokenizer`, else the checkpoint folder's
// tokenizer.json) and the chat template (`[run] chat_template`, else the checkpoint's), loaded on
// the coordinator to turn text and chat prompts into ids and outputs back into text. Loaded by the
// launcher too, before any rank starts, so that a bad tokenizer or template is refused early.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/template.h"
#include "jobs/job.h"
#include "tokenizer/tokenizer.h"

namespace tpx {

struct TextTools {
    std::optional<Tokenizer> tokenizer;
    std::optional<chat::ChatTemplate> chat;  // only with a tokenizer (its special tokens are the template's variables)
    std::string tokenizer_path;              // where it was read from ("" = none)

    // The prompt a chat renders to and its ids, as HF's apply_chat_template(messages,
    // add_generation_prompt=...) then tokenizer(prompt, add_special_tokens=False): the template
    // writes the special tokens itself.
    std::string render_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt) const;
    // add_special_tokens: the tokenizer's own too (vLLM's chat option; usually doubles the BOS).
    std::vector<int32_t> encode_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt, bool add_special_tokens = false) const;
};

// The tokenizer path the job uses: model.tokenizer, else model.path when it is a folder holding
// tokenizer.json, else "".
std::string tokenizer_path(const Job& job);

// Loads what the job names; errors (exit 2) name the file. A job without a tokenizer gets empty
// tools (token-id prompts only); run.chat_template or run.stop without one is refused.
TextTools load_text_tools(const Job& job);
// The same from paths: a tokenizer folder or tokenizer.json (required), and a template file
// ("" = the tokenizer's own template, if it has one).
TextTools load_text_tools(const std::string& tokenizer_path, const std::string& chat_template_path);

}  // namespace tpx
