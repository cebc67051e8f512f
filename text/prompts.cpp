// JSONL prompt parsing with nlohmann::json; text and chat lines through the job's TextTools.
#include "text/prompts.h"

#include <climits>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json_object.h"

namespace tpx {
namespace {

using Json = nlohmann::ordered_json;  // a chat's messages keep their keys' order, as Python's dicts do

// The ids of one line's prompt: input_ids as written, text encoded with the tokenizer's special
// tokens, messages rendered by the chat template (with the generation prompt) and encoded.
std::vector<int32_t> prompt_tokens(const Json& j, const std::string& where, const TextTools& text) {
    std::vector<int32_t> tokens;
    if (j.contains("input_ids")) {
        const Json& ids = j["input_ids"];
        if (!ids.is_array()) throw Error(where + "input_ids must be an array of token ids", kExitBadInput);
        for (size_t k = 0; k < ids.size(); ++k) {
            if (!ids[k].is_number_integer() || (ids[k].is_number_unsigned() && ids[k].get<uint64_t>() > INT32_MAX) ||
                ids[k].get<int64_t>() < INT32_MIN || ids[k].get<int64_t>() > INT32_MAX)
                throw Error(where + "input_ids[" + std::to_string(k) + "] = " + ids[k].dump() + " is not a token id", kExitBadInput);
            tokens.push_back((int32_t)ids[k].get<int64_t>());
        }
        return tokens;
    }
    const char* key = j.contains("text") ? "text" : "messages";
    if (!text.tokenizer)
        throw Error(where + "a \"" + key + "\" prompt needs a tokenizer: the checkpoint folder has no tokenizer.json; set model.tokenizer",
                    kExitBadInput);
    try {
        if (j.contains("text")) {
            if (!j["text"].is_string()) throw Error("text must be a string", kExitBadInput);
            return text.tokenizer->encode(j["text"].get<std::string>());
        }
        const Json& messages = j["messages"];
        if (!messages.is_array() || messages.empty()) throw Error("messages must be a non-empty array of {\"role\", \"content\"}", kExitBadInput);
        for (const Json& m : messages)
            if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
                throw Error("each message must be an object with a \"role\" string (and \"content\")", kExitBadInput);
        if (!text.chat) throw Error("a \"messages\" prompt needs a chat template: the tokenizer has none; set run.chat_template", kExitBadInput);
        return text.encode_chat(messages, /*add_generation_prompt=*/true);
    } catch (const Error& e) {
        throw Error(where + e.what(), kExitBadInput);
    }
}

}  // namespace

Json parse_jsonl_line(const std::string& line, const std::string& where) {
    if (line.find('\0') != std::string::npos) throw Error(where + "holds a NUL byte, which JSON text cannot", kExitBadInput);
    Json j;
    std::string duplicate;  // a line must not say two things
    try {
        j = parse_noting_repeated_key<Json>(line, duplicate);
    } catch (const Json::exception& e) {
        throw Error(where + "not valid JSON: " + strip_json_tag(e), kExitBadInput);
    }
    if (!duplicate.empty()) throw Error(where + "key '" + duplicate + "' is given twice", kExitBadInput);
    return j;
}

std::vector<Prompt> read_prompts(const std::string& path, int64_t vocab, int64_t max_new_tokens, int64_t max_seq_len,
                                 const TextTools& text) {
    std::ifstream in(path);
    if (!in) throw Error(path + ": cannot open the prompts file", kExitBadInput);
    std::vector<Prompt> prompts;
    std::map<std::string, int> line_of_id;  // the outputs are keyed by id: each once
    std::string line;
    for (int line_no = 1; std::getline(in, line); ++line_no) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        std::string where = path + ":" + std::to_string(line_no) + ": ";
        const Json j = parse_jsonl_line(line, where);
        if (!j.is_object()) throw Error(where + "expected a JSON object: {\"id\": ..., \"input_ids\" | \"text\" | \"messages\": ...}", kExitBadInput);
        int given = 0;
        for (const auto& item : j.items()) {
            const std::string& key = item.key();
            if (key == "input_ids" || key == "text" || key == "messages") ++given;
            else if (key != "id")
                throw Error(where + "unknown key '" + key + "'; valid keys: id, and one of input_ids, text, messages", kExitBadInput);
        }
        if (given != 1)
            throw Error(where + (given == 0 ? "no prompt: give one of input_ids, text, messages" : "give only one of input_ids, text, messages"),
                        kExitBadInput);
        Prompt p;
        if (!j.contains("id")) p.id = std::to_string(prompts.size()), p.id_is_number = true;  // its place in the file
        else if (j["id"].is_string()) p.id = j["id"].get<std::string>();
        else if (j["id"].is_number_unsigned()) p.id = std::to_string(j["id"].get<uint64_t>()), p.id_is_number = true;  // past 2^63 too
        else if (j["id"].is_number_integer()) p.id = std::to_string(j["id"].get<int64_t>()), p.id_is_number = true;
        else throw Error(where + "id " + j["id"].dump() + " is not a string or an integer", kExitBadInput);
        auto [seen, fresh] = line_of_id.emplace(p.id, line_no);
        if (!fresh) throw Error(where + "prompt id " + p.id + " is also the id on line " + std::to_string(seen->second), kExitBadInput);
        p.tokens = prompt_tokens(j, where + "prompt " + p.id + ": ", text);
        for (size_t k = 0; k < p.tokens.size(); ++k)
            if (p.tokens[k] < 0 || p.tokens[k] >= vocab)
                throw Error(where + "prompt " + p.id + ": token id " + std::to_string(p.tokens[k]) + " at position " + std::to_string(k) +
                                " is outside the model's vocabulary [0, " + std::to_string(vocab) + ")",
                            kExitBadInput);
        if (p.tokens.empty()) throw Error(where + "prompt " + p.id + " has no tokens", kExitBadInput);
        if ((int64_t)p.tokens.size() + max_new_tokens > max_seq_len)
            throw Error(where + "prompt " + p.id + ": " + std::to_string(p.tokens.size()) + " tokens + max_new_tokens " +
                            std::to_string(max_new_tokens) + " exceed max_seq_len " + std::to_string(max_seq_len),
                        kExitBadInput);
        prompts.push_back(std::move(p));
    }
    if (prompts.empty()) throw Error(path + ": no prompts", kExitBadInput);
    return prompts;
}

std::vector<int32_t> pack_prompts(const std::vector<Prompt>& prompts) {
    std::vector<int32_t> out = {(int32_t)prompts.size()};
    for (const Prompt& p : prompts) {
        out.push_back((int32_t)p.tokens.size());
        out.insert(out.end(), p.tokens.begin(), p.tokens.end());
    }
    return out;
}

std::vector<Prompt> unpack_prompts(const std::vector<int32_t>& packed) {
    std::vector<Prompt> out(packed.at(0));
    size_t at = 1;
    for (Prompt& p : out) {
        int32_t n = packed.at(at++);
        p.tokens.assign(packed.begin() + at, packed.begin() + at + n);
        at += n;
    }
    return out;
}

}  // namespace tpx
