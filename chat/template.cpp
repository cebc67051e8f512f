// The public face of chat/: parse once, render per prompt, and find a checkpoint's template
// (tokenizer_config.json's chat_template, a string or a list of named templates).
#include "chat/template.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "chat/builtins.h"
#include "chat/lexer.h"
#include "chat/parser.h"
#include "chat/renderer.h"
#include "chat/text.h"
#include "common/json_object.h"

namespace tpx::chat {
namespace {

// Whether a template's text holds more than blanks: a blank one renders every conversation as
// no text at all.
bool has_text(const std::string& t) { return t.find_first_not_of(" \t\r\n") != std::string::npos; }

bool read_text(const std::string& path, std::string& out) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) return false;  // (an ifstream opens a folder, and reads nothing)
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    std::ostringstream ss;
    ss << in.rdbuf();
    out = ss.str();
    return true;
}

nlohmann::ordered_json read_json(const std::string& path) {
    std::string text;
    if (!read_text(path, text)) throw JobError(at(path, 0, 0, "cannot read the file"));
    try {
        return parse_json_bounded<nlohmann::ordered_json>(text);
    } catch (const nlohmann::ordered_json::parse_error& e) {
        throw JobError(at(path, 0, 0, "not valid JSON: " + strip_json_tag(e)));
    }
}

// A template from a JSON file with "chat_template" (tokenizer_config.json or chat_template.json).
ChatTemplate from_json_file(const std::string& path, const std::string& which) {
    nlohmann::ordered_json config = read_json(path);
    if (!config.is_object() || !config.contains("chat_template"))
        throw JobError(at(path, 0, 0, "no \"chat_template\" key: there is no chat template here; name a .jinja file or a JSON file "
                                      "with the key (a job: run.chat_template; tpx tokenize: --chat-template)"));
    std::string source = select_chat_template(config["chat_template"], which, path);
    std::string name = path + " chat_template" + (which.empty() ? "" : "[" + which + "]");
    return ChatTemplate::parse(source, name);
}

}  // namespace

ChatTemplate ChatTemplate::parse(const std::string& source, const std::string& name) {
    // An empty template renders every conversation as no text at all.
    if (!has_text(source)) throw JobError(at(name, 0, 0, "the chat template is empty"));
    // (A .jinja file may hold any bytes; the tokenizer would otherwise refuse the render's text.)
    if (const size_t bad = text::invalid_utf8_at(source); bad != std::string::npos)
        throw JobError(at(name, 1 + (long)std::count(source.begin(), source.begin() + (long)bad, '\n'), 0,
                          "the chat template is not valid UTF-8 (byte " + std::to_string(bad) + ")"));
    ChatTemplate t;
    t.name_ = name;
    t.body_ = std::make_shared<const Body>(parse_template(tokenize(source, name), name));
    return t;
}

namespace {

// Refuses what a render cannot take as given, in one walk without recursion: a value nested past
// kMaxValueDepth (every recursive walk of it must stay within that), or an integer past int64_t
// (JSON's unsigned 2^63 .. 2^64 - 1: the template computes in 64-bit signed integers, where it
// would wrap). `subject` names the value, `plural` its verb.
void check_given(const std::string& name, const json& root, const std::string& subject, bool plural) {
    std::vector<std::pair<const json*, int>> todo = {{&root, 1}};
    while (!todo.empty()) {
        const auto [j, depth] = todo.back();
        todo.pop_back();
        if (depth > kMaxValueDepth)
            throw JobError(at(name, 0, 0, subject + (plural ? " are" : " is") + " nested deeper than " + std::to_string(kMaxValueDepth) + " levels"));
        if (j->is_number_unsigned() && j->get<uint64_t>() > (uint64_t)INT64_MAX)
            throw JobError(at(name, 0, 0, "the integer " + std::to_string(j->get<uint64_t>()) + " in " + subject +
                                              " is past 2^63 - 1, the largest a template computes with here"));
        if (j->is_structured())
            for (const auto& child : *j) todo.push_back({&child, depth + 1});
    }
}

}  // namespace

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, const RenderOptions& options) const {
    if (!messages.is_array()) throw JobError(at(name_, 0, 0, "messages must be a JSON array, got " + type_name(messages)));
    check_given(name_, messages, "the messages", true);
    for (auto it = options.variables.begin(); it != options.variables.end(); ++it) check_given(name_, it.value(), "'" + it.key() + "'", false);
    Renderer r(name_, options);
    return r.run(*body_, messages);
}

RenderOptions special_tokens_of(const nlohmann::ordered_json& config) {
    RenderOptions o;
    auto token = [&](const char* key) -> std::optional<std::string> {
        if (!config.is_object() || !config.contains(key)) return std::nullopt;
        const auto& v = config[key];
        if (v.is_string()) return v.get<std::string>();
        if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
        return std::nullopt;
    };
    o.bos_token = token("bos_token");
    o.eos_token = token("eos_token");
    o.pad_token = token("pad_token");
    o.unk_token = token("unk_token");
    for (const char* key : {"sep_token", "cls_token", "mask_token"})
        if (auto t = token(key)) o.variables[key] = *t;
    if (config.is_object() && config.contains("additional_special_tokens") && config["additional_special_tokens"].is_array()) {
        nlohmann::ordered_json list = nlohmann::ordered_json::array();
        for (const auto& t : config["additional_special_tokens"])
            list.push_back(t.is_object() && t.contains("content") ? t["content"] : t);
        o.variables["additional_special_tokens"] = list;
    }
    return o;
}

std::string select_chat_template(const nlohmann::ordered_json& value, const std::string& which, const std::string& origin) {
    if (value.is_string()) {
        if (!which.empty() && which != "default")
            throw JobError(at(origin, 0, 0, "chat_template is a single template; there is no template named '" + which + "'"));
        return value.get<std::string>();
    }
    if (!value.is_array())
        throw JobError(at(origin, 0, 0, "chat_template must be a string or a list of {\"name\", \"template\"}, got " +
                                        type_name(value)));
    std::string want = which.empty() ? "default" : which;
    std::string names;
    for (const auto& entry : value) {
        if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
            !entry["name"].is_string() || !entry["template"].is_string())
            throw JobError(at(origin, 0, 0, "each chat_template entry must be {\"name\": str, \"template\": str}"));
        if (entry["name"] == want) return entry["template"].get<std::string>();
        names += (names.empty() ? "" : ", ") + entry["name"].get<std::string>();
    }
    throw JobError(at(origin, 0, 0, "no chat template named '" + want + "' (the file has: " + names + ")"));
}

bool checkpoint_has_template(const std::string& checkpoint_dir, const nlohmann::json& tokenizer_template) {
    std::string jinja;
    if (read_text(checkpoint_dir + "/chat_template.jinja", jinja) && has_text(jinja)) return true;
    if (tokenizer_template.is_string()) return has_text(tokenizer_template.get<std::string>());
    if (tokenizer_template.is_array())
        for (const auto& entry : tokenizer_template)
            if (entry.is_object() && entry.contains("template") && entry["template"].is_string() && has_text(entry["template"].get<std::string>()))
                return true;
    return false;
}

ChatTemplate load_checkpoint_template(const std::string& checkpoint_dir, const std::string& which) {
    std::string jinja = checkpoint_dir + "/chat_template.jinja";
    std::string source;
    if (which.empty() && read_text(jinja, source) && has_text(source))
        return ChatTemplate::parse(source, jinja);
    return from_json_file(checkpoint_dir + "/tokenizer_config.json", which);
}

ChatTemplate load_template_file(const std::string& path, const std::string& which) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw JobError(at(path, 0, 0, "is a folder; name the chat template file (.jinja or .json)"));
    bool is_json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
    if (is_json) return from_json_file(path, which);
    std::string source;
    if (!read_text(path, source)) throw JobError(at(path, 0, 0, "cannot read the chat template file"));
    return ChatTemplate::parse(source, path);
}

}  // namespace tpx::chat
