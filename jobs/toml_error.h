// TOML++'s parse errors, repaired where they name a key wrongly.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tpx {

// The message of a TOML parse error at (line, column) (1-based, the column in characters) of
// `text`. A key-value pair that redefines a quoted key ("a" = 1 twice) makes TOML++ name it
// garbled ('"aa" ', '"dedecode_warmup" '): there the name is replaced by the key as the line
// writes it, the text between the last ',' or '{' and the last '=' outside strings before the
// column, trimmed. Other messages (table headers redefined among them) are returned as they are.
std::string describe_toml_error(std::string_view description, size_t line, size_t column, const std::string& text);

}  // namespace tpx
