// Parsing a file's text that must be one JSON object (config.json and its kin), the error naming
// the file. Each layer reports through its own `fail(file, message)`, which must throw (loader's
// CheckpointError, sharding's bad-input Error).
#pragma once

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

}  // namespace tpx
