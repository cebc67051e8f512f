// TOML++'s parse errors, repaired where they name a key wrongly.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tpx {

// A TOML parse error as tpx reports it: the message and the column (1-based, in characters) it
// points at.
struct TomlError {
    std::string message;
    size_t column = 0;
};

// The message of a TOML parse error at (line, column) (1-based, the column in characters) of
// `text`. A key-value pair that redefines a quoted key ("a" = 1 twice) makes TOML++ name it
// garbled ('"aa" ', '"dedecode_warmup" ') and point at the value: there the name is replaced by
// the key as the line writes it (the text between the last ',' or '{' and the last '=' outside
// strings before the column, trimmed) and the column is the key's. A table header that redefines
// one ([a."b"] twice: TOML++ names 'a."b"b"') is named as the header line writes it, between its
// brackets. Other errors are returned as they are.
TomlError describe_toml_error(std::string_view description, size_t line, size_t column, const std::string& text);

}  // namespace tpx
