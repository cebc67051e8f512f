// The byte-level table, built once: printable Latin-1 bytes map to themselves, the other 68
// bytes to U+0100 and up, in byte order.
#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace tpx::tok {

namespace {

struct Tables {
    std::array<std::string, 256> to_char;
    std::array<int, 512> to_byte;  // code point (< 512) -> byte, -1 when none
    Tables() {
        to_byte.fill(-1);
        int extra = 0;
        for (int b = 0; b < 256; ++b) {
            bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            char32_t c = printable ? b : 256 + extra++;
            append_utf8(to_char[b], c);
            to_byte[c] = b;
        }
    }
};

const Tables& tables() {
    static const Tables t;
    return t;
}

}  // namespace

const std::string& byte_to_char(unsigned char b) { return tables().to_char[b]; }

bool append_token_bytes(std::string_view token, std::string& out) {
    const Tables& t = tables();
    size_t mark = out.size();
    for (size_t i = 0; i < token.size();) {
        char32_t c = next_code_point(token, i);
        if (c >= 512 || t.to_byte[c] < 0) {
            out.resize(mark);
            return false;
        }
        out += static_cast<char>(t.to_byte[c]);
    }
    return true;
}

std::string to_byte_level(std::string_view text) {
    const Tables& t = tables();
    std::string out;
    out.reserve(text.size() * 2);
    for (unsigned char b : text) out += t.to_char[b];
    return out;
}

}  // namespace tpx::tok
