// Parsing JSON from outside: the depth bounded, errors without the library's tag, and a file's
// text that must be one JSON object (config.json and its kin), the error naming the file. Each
// layer reports through its own `fail(file, message)`, which must throw (loader's
// CheckpointError, sharding's bad-input Error).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace tpx {

// How deep JSON from outside (files, JSONL lines, request bodies, a server's answers) may nest.
// nlohmann parses and frees any depth without recursion, but printing a value (an error that shows
// it) and the readers that walk one recurse, one frame a level, and the stack is finite. Real files
// nest a few levels; 512 is far past them.
constexpr int kJsonMaxDepth = 512;

// A parser callback that refuses an array or object opened past kJsonMaxDepth levels with J's
// parse_error (what J::parse throws for bad text, so callers' messages stay as they are), then
// asks `then` (nlohmann's callback: keep the value or not).
template <typename J, typename Then>
auto limit_depth(Then then) {
    return [then](int depth, typename J::parse_event_t event, J& parsed) mutable -> bool {
        using E = typename J::parse_event_t;
        if ((event == E::object_start || event == E::array_start) && depth >= kJsonMaxDepth)
            throw J::parse_error::create(101, 0, "nested deeper than " + std::to_string(kJsonMaxDepth) + " levels", nullptr);
        return then(depth, event, parsed);
    };
}

// What a JSON exception says without nlohmann's "[json.exception.parse_error.101] " tag: the
// message is for the person who wrote the file or the request, to whom the library's tag means nothing.
inline std::string strip_json_tag(const std::exception& e) {
    const std::string what = e.what();
    const size_t end = what.rfind("[json.exception.", 0) == 0 ? what.find("] ") : std::string::npos;
    return end == std::string::npos ? what : what.substr(end + 2);
}

// J::parse(text...) (a string, or two iterators) with the depth bounded as above.
template <typename J = nlohmann::json, typename... Text>
J parse_json_bounded(Text&&... text) {
    return J::parse(std::forward<Text>(text)..., limit_depth<J>([](int, typename J::parse_event_t, J&) { return true; }));
}

// The object `text` holds; else fail(file, "not valid JSON: ...") or fail(file, "not a JSON object").
template <typename Fail>
nlohmann::json parse_json_object(const std::string& text, const std::string& file, Fail fail) {
    nlohmann::json j;
    try {
        j = parse_json_bounded(text);
    } catch (const nlohmann::json::exception& e) {
        fail(file, "not valid JSON: " + strip_json_tag(e));
    }
    if (!j.is_object()) fail(file, "not a JSON object");
    return j;
}

// `text` parsed as parse_json_bounded parses it (and throwing as it does), with `repeated` set to
// the first key an object gives twice (nlohmann keeps the last one without a word), "" when none.
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
    return J::parse(text, limit_depth<J>(note));
}

// Whether an integer JSON value fits int64_t (nlohmann keeps 2^63 .. 2^64 - 1 as unsigned,
// which get<int64_t>() would wrap).
inline bool fits_int64(const nlohmann::json& v) { return !v.is_number_unsigned() || v.get<uint64_t>() <= (uint64_t)INT64_MAX; }

}  // namespace tpx
