// UTF-8 helpers for the tokenizer: walking code points, HF's lossy decoding, whitespace.
// Every function here follows the Rust standard library's definitions, because HF's tokenizers
// are written against them (char::is_whitespace, String::from_utf8_lossy).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tpx::tok {

// Length of the UTF-8 sequence that starts with lead byte `b` (1 for a stray byte).
inline int utf8_length(unsigned char b) {
    if (b < 0x80) return 1;
    if (b >= 0xF0) return 4;
    if (b >= 0xE0) return 3;
    if (b >= 0xC0) return 2;
    return 1;
}

// The code point at s[i] (s must be valid UTF-8); advances i past it.
char32_t next_code_point(std::string_view s, size_t& i);
// The code point that ends just before s[end] (s valid UTF-8); its start goes to *start.
char32_t previous_code_point(std::string_view s, size_t end, size_t* start);
void append_utf8(std::string& out, char32_t c);

// Byte offset where the first invalid UTF-8 sequence starts, or npos when `s` is valid.
size_t find_invalid_utf8(std::string_view s);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// The bytes of the whole characters `a` and `b` share from their start (a character that
// differs, or that one of them has only part of, ends it).
inline size_t common_prefix_bytes(std::string_view a, std::string_view b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    if (n < a.size() || n < b.size())  // back to the start of a character one of them goes on with
        while (n > 0 && ((n < a.size() && (a[n] & 0xC0) == 0x80) || (n < b.size() && (b[n] & 0xC0) == 0x80))) --n;
    return n;
}

// Rust's char::is_whitespace (the Unicode White_Space property).
bool is_whitespace(char32_t c);

}  // namespace tpx::tok
