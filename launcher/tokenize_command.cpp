// `tpx tokenize PATH [--file IN.jsonl]`: text to ids and ids to text, one JSON line in, one out.
// Every bad line is refused with its file and line number (exit 2) before anything after it runs.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "launcher/command.h"
#include "text/prompts.h"
#include "text/text_tools.h"

namespace po = boost::program_options;

namespace fs = std::filesystem;

namespace tpx {

namespace {

using Json = nlohmann::ordered_json;  // messages keep their keys' order, as Python dicts do

// An id past the tokenizer's largest is refused (HF's decode drops it without a word; `tpx
// serve` refuses ids past the model's vocab_size).
std::vector<int32_t> read_ids(const Json& ids, size_t vocab, const std::string& where) {
    if (!ids.is_array()) throw JobError(where + ": \"ids\" must be a list of integers");
    std::vector<int32_t> out;
    out.reserve(ids.size());
    for (const auto& id : ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
            throw JobError(where + ": \"ids\" holds " + id.dump() + ", not a token id");
        if ((size_t)id.get<int64_t>() >= vocab)
            throw JobError(where + ": \"ids\" holds " + id.dump() + ", outside the tokenizer's vocabulary [0, " + std::to_string(vocab) + ")");
        out.push_back(id.get<int32_t>());
    }
    return out;
}

bool read_flag(const Json& line, const char* key, bool fallback, const std::string& where) {
    if (!line.contains(key)) return fallback;
    if (!line[key].is_boolean()) throw JobError(where + ": \"" + std::string(key) + "\" must be true or false");
    return line[key].get<bool>();
}

// One request line to one answer line.
Json answer(const TextTools& tools, const Json& line, const std::string& where) {
    if (!line.is_object()) throw JobError(where + ": each line must be a JSON object");
    // One request a line, with only its own options: a key tpx would drop (a chat's "tools") or
    // a second request on the line is refused rather than half answered.
    static const std::map<std::string, const char*> kOption = {
        {"messages", "add_generation_prompt"}, {"text", "add_special_tokens"}, {"ids", "skip_special_tokens"}};
    const std::string kind = line.contains("messages") ? "messages" : line.contains("text") ? "text" : line.contains("ids") ? "ids" : "";
    for (const auto& item : line.items()) {
        if (kind.empty() || item.key() == kind || item.key() == kOption.at(kind)) continue;
        if (kOption.count(item.key())) throw JobError(where + ": \"" + kind + "\" and \"" + item.key() + "\" on one line: give one request a line");
        throw JobError(where + ": unknown key \"" + item.key() + "\" beside \"" + kind + "\" (it takes \"" + kOption.at(kind) + "\")");
    }
    const Tokenizer& tokenizer = *tools.tokenizer;
    if (line.contains("messages")) {
        if (!tools.chat) throw JobError(where + ": \"messages\" need a chat template: the tokenizer has none; give --chat-template");
        if (!line["messages"].is_array()) throw JobError(where + ": \"messages\" must be a list of {\"role\", \"content\"}");
        bool generation = read_flag(line, "add_generation_prompt", true, where);
        try {
            std::string prompt = tools.render_chat(line["messages"], generation);
            return {{"prompt", prompt}, {"ids", tokenizer.encode(prompt, /*add_special_tokens=*/false)}};
        } catch (const Error& e) {
            throw JobError(where + ": " + e.what());
        }
    }
    if (line.contains("text")) {
        if (!line["text"].is_string()) throw JobError(where + ": \"text\" must be a string");
        bool add = read_flag(line, "add_special_tokens", true, where);
        try {
            return {{"ids", tokenizer.encode(line["text"].get<std::string>(), add)}};
        } catch (const Error& e) {
            throw JobError(where + ": " + e.what());
        }
    }
    if (line.contains("ids")) {
        bool skip = read_flag(line, "skip_special_tokens", false, where);
        return {{"text", tokenizer.decode(read_ids(line["ids"], tokenizer.vocab_size(), where), skip)}};
    }
    throw JobError(where + ": expected {\"text\": ...}, {\"ids\": [...]} or {\"messages\": [...]}");
}

}  // namespace

int cmd_tokenize(const Args& args) {
    po::options_description options("tpx tokenize options");
    options.add_options()("path", po::value<std::string>()->required(), "a tokenizer folder or a tokenizer.json")(
        "file", po::value<std::string>(), "JSONL input (default: stdin)")(
        "chat-template", po::value<std::string>()->default_value(""), "a .jinja file (or JSON with chat_template) for \"messages\" lines; default: the tokenizer's");
    po::positional_options_description positional;
    positional.add("path", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx tokenize PATH [--file IN.jsonl] [--chat-template FILE]", options, positional, vm)) return 0;
    // A template is read whole before the first line: a FIFO would block until written to (and a
    // job refuses one for run.chat_template too).
    const std::string chat_template = vm["chat-template"].as<std::string>();
    std::error_code ec;
    if (!chat_template.empty() && fs::exists(chat_template, ec) && !fs::is_regular_file(chat_template, ec) &&
        !fs::is_directory(chat_template, ec))
        throw JobError("--chat-template " + chat_template + ": not a regular file (a FIFO or device would block or be read more than once)");
    TextTools tools = load_text_tools(vm["path"].as<std::string>(), chat_template);

    std::ifstream file_in;
    std::string name = "<stdin>";
    if (vm.count("file")) {
        name = vm["file"].as<std::string>();
        std::error_code ec;
        if (std::filesystem::is_directory(name, ec)) throw JobError(name + ": is a folder, not a JSONL file");
        file_in.open(name, std::ios::binary);
        if (!file_in) throw JobError(name + ": cannot open");
    }
    std::istream& in = vm.count("file") ? static_cast<std::istream&>(file_in) : std::cin;
    std::string text;
    for (long n = 1; std::getline(in, text); ++n) {
        if (text.empty() || text == "\r") continue;
        std::string where = name + ":" + std::to_string(n);
        const Json line = parse_jsonl_line(text, where + ": ");
        // Invalid UTF-8 from a decode is already U+FFFD; replace guards the dump all the same.
        std::cout << answer(tools, line, where).dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
    }
    std::cout.flush();
    return 0;
}

}  // namespace tpx
