// JSONL prompt parsing with nlohmann::json.
#include "worker/prompts.h"

#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace tpx {

std::vector<Prompt> read_prompts(const std::string& path, int64_t vocab, int64_t max_new_tokens, int64_t max_seq_len) {
    std::ifstream in(path);
    if (!in) throw Error(path + ": cannot open the prompts file", kExitBadInput);
    std::vector<Prompt> prompts;
    std::map<std::string, int> line_of_id;  // the outputs are keyed by id: each once
    std::string line;
    for (int line_no = 1; std::getline(in, line); ++line_no) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        std::string where = path + ":" + std::to_string(line_no) + ": ";
        nlohmann::json j;
        std::string duplicate;  // nlohmann keeps the last of a repeated key: a line must not say two things
        std::vector<std::set<std::string>> keys;
        auto note_keys = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
            using E = nlohmann::json::parse_event_t;
            if (event == E::object_start) keys.emplace_back();
            else if (event == E::object_end && !keys.empty()) keys.pop_back();
            else if (event == E::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty())
                duplicate = parsed.get<std::string>();
            return true;
        };
        try {
            j = nlohmann::json::parse(line, note_keys);
        } catch (const nlohmann::json::exception& e) {
            throw Error(where + "not a JSON object: " + e.what(), kExitBadInput);
        }
        if (!duplicate.empty()) throw Error(where + "key '" + duplicate + "' is given twice", kExitBadInput);
        if (!j.is_object() || !j.contains("input_ids") || !j["input_ids"].is_array())
            throw Error(where + "expected {\"id\": ..., \"input_ids\": [...]}", kExitBadInput);
        for (const auto& item : j.items())
            if (item.key() != "id" && item.key() != "input_ids")
                throw Error(where + "unknown key '" + item.key() + "'; valid keys: id, input_ids (token ids: tpx has no tokenizer)",
                            kExitBadInput);
        Prompt p;
        if (!j.contains("id")) p.id = std::to_string(prompts.size()), p.id_is_number = true;  // its place in the file
        else if (j["id"].is_string()) p.id = j["id"].get<std::string>();
        else if (j["id"].is_number_integer()) p.id = std::to_string(j["id"].get<int64_t>()), p.id_is_number = true;
        else throw Error(where + "id " + j["id"].dump() + " is not a string or an integer", kExitBadInput);
        auto [seen, fresh] = line_of_id.emplace(p.id, line_no);
        if (!fresh) throw Error(where + "prompt id " + p.id + " is also the id on line " + std::to_string(seen->second), kExitBadInput);
        for (size_t k = 0; k < j["input_ids"].size(); ++k) {
            const auto& v = j["input_ids"][k];
            if (!v.is_number_integer())
                throw Error(where + "prompt " + p.id + ": input_ids[" + std::to_string(k) + "] = " + v.dump() + " is not a token id", kExitBadInput);
            int64_t id = v.get<int64_t>();
            if (id < 0 || id >= vocab)
                throw Error(where + "prompt " + p.id + ": token id " + std::to_string(id) + " at position " + std::to_string(k) +
                                " is outside the vocabulary [0, " + std::to_string(vocab) + ")",
                            kExitBadInput);
            p.tokens.push_back((int32_t)id);
        }
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
