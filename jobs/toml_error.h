// TOML++'s parse errors, repaired where they name a key wrongly; keys too deep for it refused first.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tpx {

// A TOML parse error as tpx reports it: the message and the column (1-based, in characters) it
// points at.
struct TomlMessage {
    std::string message;
    size_t column = 0;
};

// The message of a TOML parse error at (line, column) (1-based, the column in characters) of
// `text`. For a key-value pair that redefines a key TOML++ points at the value, and garbles a
// quoted key's name ('"aa" ', '"dedecode_warmup" '): the name becomes the key as the line writes
// it (the text between the last ',' or '{' and the last '=' outside strings before the column,
// trimmed) and the column the key's. A table header that redefines
// one ([a."b"] twice: TOML++ names 'a."b"b"') is named as the header line writes it, between its
// brackets. Other errors are returned as they are.
TomlMessage describe_toml_error(std::string_view description, size_t line, size_t column, const std::string& text);

// A JobError naming the line and column (in bytes) where a dotted key or table header of `text`
// has more than kMaxKeyParts parts, before TOML++ reads it: TOML++ caps nested arrays and inline
// tables but recurses once a part of a dotted key, so that a long enough key overflows its stack.
// A job's keys have a few parts.
constexpr size_t kMaxKeyParts = 64;
void refuse_deep_keys(const std::string& text, const std::string& file);

}  // namespace tpx
