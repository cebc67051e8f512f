// Parsing a file's text that must be one JSON object (config.json and its kin), the error naming
// the file. Each layer reports through its own `fail(file, message)`, which must throw (loader's
// CheckpointError, sharding's bad-input Error).
#pragma once

#include <cstdint>
#include <string>

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

// Whether an integer JSON value fits int64_t (nlohmann keeps 2^63 .. 2^64 - 1 as unsigned,
// which get<int64_t>() would wrap).
inline bool fits_int64(const nlohmann::json& v) { return !v.is_number_unsigned() || v.get<uint64_t>() <= (uint64_t)INT64_MAX; }

}  // namespace tpx
