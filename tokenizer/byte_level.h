// GPT-2's byte <-> character table: every byte is shown as a printable character so that BPE
// works on text. The table is the one HF's ByteLevel pre-tokenizer and decoder use.
#pragma once

#include <string>
#include <string_view>

namespace tpx::tok {

// The UTF-8 spelling of the character that stands for byte b.
const std::string& byte_to_char(unsigned char b);
// Appends the bytes of a byte-level token to `out`; false (and `out` unchanged) when some
// character of `token` stands for no byte.
bool append_token_bytes(std::string_view token, std::string& out);
// Maps every byte of `text` to its character.
std::string to_byte_level(std::string_view text);

}  // namespace tpx::tok
