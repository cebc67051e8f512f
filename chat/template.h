// A chat template parsed once and rendered per prompt, as HF transformers'
// tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...) renders it
// (Jinja2 with trim_blocks and lstrip_blocks). Bad templates fail at parse time with exit 2.
#pragma once

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace tpx::chat {

struct Stmt;

// What a template sees besides `messages`. HF passes the tokenizer's special tokens (a token the
// tokenizer lacks is left out, so it is undefined) and tools=None, documents=None when the
// caller gave none: set them in `variables` to change that.
struct RenderOptions {
    bool add_generation_prompt = false;
    std::optional<std::string> bos_token, eos_token, pad_token, unk_token;
    nlohmann::ordered_json variables = nlohmann::ordered_json::object();  // tools, documents, enable_thinking, ...
    std::optional<std::time_t> now;  // strftime_now's clock (local time); unset: the real clock
};

// raise_exception("...") in a template; message() is the template's own text.
class TemplateRaised : public JobError {
public:
    TemplateRaised(const std::string& where, std::string message)
        : JobError(where), message_(std::move(message)) {}
    const std::string& message() const { return message_; }

private:
    std::string message_;
};

class ChatTemplate {
public:
    // `name` is how errors call the template: a file path or "tokenizer_config.json chat_template".
    // An empty template (blanks only) is refused: it renders every conversation as no text.
    static ChatTemplate parse(const std::string& source, const std::string& name);
    // `messages`: an array of {"role", "content", ...}; content may be a string or a list of parts.
    std::string render(const nlohmann::ordered_json& messages, const RenderOptions& options) const;
    const std::string& name() const { return name_; }

private:
    std::string name_;
    std::shared_ptr<const std::vector<std::unique_ptr<Stmt>>> body_;
};

// RenderOptions with the special tokens of a tokenizer_config.json, as transformers passes its
// special_tokens_map: bos/eos/unk/pad (and sep/cls/mask, additional_special_tokens) when set;
// a token may be written as a string or as an AddedToken object {"content": ...}.
RenderOptions special_tokens_of(const nlohmann::ordered_json& tokenizer_config);

// Whether a checkpoint folder has a chat template: chat_template.jinja with text in it, or
// `tokenizer_template` (tokenizer_config.json's chat_template) a string with text or a list. A
// blank one counts as none, as transformers takes it ("no chat template" only where one is used).
bool checkpoint_has_template(const std::string& checkpoint_dir, const nlohmann::json& tokenizer_template);

// The template source in tokenizer_config.json's "chat_template": a string, or a list of
// {"name", "template"} from which `which` is picked ("default" when empty). `origin` names the file.
std::string select_chat_template(const nlohmann::ordered_json& value, const std::string& which, const std::string& origin);
// A checkpoint's template: tokenizer_config.json's chat_template (or a sibling chat_template.jinja,
// which newer transformers versions write and prefer).
ChatTemplate load_checkpoint_template(const std::string& checkpoint_dir, const std::string& which = "");
// [run] chat_template = "PATH": a .jinja file taken whole, or a JSON file with "chat_template".
ChatTemplate load_template_file(const std::string& path, const std::string& which = "");

}  // namespace tpx::chat
