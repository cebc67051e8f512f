// UTF-8 walking, validation and lossy repair as Rust's standard library defines them.
// utf8_lossy must replace exactly what from_utf8_lossy replaces: decodes are compared byte for
// byte against HF, which calls it on the bytes of a byte-level decode.
#include "tokenizer/utf8.h"

namespace tpx::tok {

char32_t next_code_point(std::string_view s, size_t& i) {
    unsigned char b = static_cast<unsigned char>(s[i]);
    int n = utf8_length(b);
    char32_t c = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
    for (int k = 1; k < n; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    i += n;
    return c;
}

char32_t previous_code_point(std::string_view s, size_t end, size_t* start) {
    size_t i = end - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    if (start) *start = i;
    size_t j = i;
    return next_code_point(s, j);
}

void append_utf8(std::string& out, char32_t c) {
    if (c < 0x80) {
        out += static_cast<char>(c);
    } else if (c < 0x800) {
        out += static_cast<char>(0xC0 | (c >> 6));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out += static_cast<char>(0xE0 | (c >> 12));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (c >> 18));
        out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    }
}

namespace {

// How many bytes of a valid sequence start at s[i] (0 when s[i] cannot start one); on an
// invalid sequence, *valid_prefix is the length of its longest valid prefix (>= 1), the unit
// that from_utf8_lossy replaces with one U+FFFD.
int check_sequence(std::string_view s, size_t i, int* valid_prefix) {
    unsigned char b = static_cast<unsigned char>(s[i]);
    *valid_prefix = 1;
    if (b < 0x80) return 1;
    int n;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) n = 2;
    else if (b == 0xE0) n = 3, lo = 0xA0;
    else if (b == 0xED) n = 3, hi = 0x9F;
    else if (b >= 0xE1 && b <= 0xEF) n = 3;
    else if (b == 0xF0) n = 4, lo = 0x90;
    else if (b == 0xF4) n = 4, hi = 0x8F;
    else if (b >= 0xF1 && b <= 0xF3) n = 4;
    else return 0;
    for (int k = 1; k < n; ++k) {
        if (i + k >= s.size()) return 0;
        unsigned char c = static_cast<unsigned char>(s[i + k]);
        bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
        if (!ok) return 0;
        *valid_prefix = k + 1;
    }
    return n;
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        if (static_cast<unsigned char>(s[i]) < 0x80) { ++i; continue; }
        int prefix;
        int n = check_sequence(s, i, &prefix);
        if (n == 0) return i;
        i += n;
    }
    return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        int prefix;
        int n = check_sequence(s, i, &prefix);
        if (n > 0) {
            out.append(s.data() + i, n);
            i += n;
        } else {
            out += "\xEF\xBF\xBD";
            i += prefix;
        }
    }
    return out;
}

bool is_whitespace(char32_t c) {
    if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
    switch (c) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return true;
    default:
        return c >= 0x2000 && c <= 0x200A;
    }
}

}  // namespace tpx::tok
