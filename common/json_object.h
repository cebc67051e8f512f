// Parsing a file's text that must be one JSON object (config.json and its kin), the error naming
// the file. Each layer reports through its own `fail(file, message)`, which must throw (loader's
// CheckpointError, sharding's bad-input Error).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tpx {

// The object `text` holds; else fail(file, "not valid JSON: ...") or fail(file, "not a JSON object").
template <typename Fail>
nlohmann::json parse_json_object(const std::string& text, const std::string& file, Fail fail) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        fail(file, std::string("not valid JSON: ") + e.what());
    }
    if (!j.is_object()) fail(file, "not a JSON object");
    return j;
}

// `text` parsed as J::parse parses it (and throwing as it does), with `repeated` set to the first
// key an object gives twice (nlohmann keeps the last one without a word), "" when none.
template <typename J>
J parse_noting_repeated_key(const std::string& text, std::string& repeated) {
    repeated.clear();
    std::vector<std::set<std::string>> keys;  // the open objects' keys so far
    auto note = [&](int, typename J::parse_event_t event, J& parsed) {
        using E = typename J::parse_event_t;
        if (event == E::object_start) keys.emplace_back();
        else if (event == E::object_end && !keys.empty()) keys.pop_back();
        else if (event == E::key && !keys.empty() && !keys.back().insert(parsed.template get<std::string>()).second && repeated.empty())
            repeated = parsed.template get<std::string>();
        return true;
    };
    return J::parse(text, note);
}

// Whether an integer JSON value fits int64_t (nlohmann keeps 2^63 .. 2^64 - 1 as unsigned,
// which get<int64_t>() would wrap).
inline bool fits_int64(const nlohmann::json& v) { return !v.is_number_unsigned() || v.get<uint64_t>() <= (uint64_t)INT64_MAX; }

}  // namespace tpx
