// Python str semantics over UTF-8. Invalid UTF-8 bytes decode as U+FFFD so that cutting and
// counting never throw on odd input; templates rarely cut user text anyway.
#include "chat/text.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include <utf8proc.h>

namespace tpx::chat::text {

std::vector<char32_t> decode(const std::string& s) {
    std::vector<char32_t> out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        unsigned char c = s[i];
        int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
        bool ok = n >= 0 && i + n < s.size();
        for (int k = 1; ok && k <= n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
        if (!ok) {
            out.push_back(0xFFFD);
            ++i;
            continue;
        }
        char32_t cp = n == 0 ? c : c & (0x3F >> n);
        for (int k = 1; k <= n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
        out.push_back(cp);
        i += n + 1;
    }
    return out;
}

void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

std::string encode(const std::vector<char32_t>& cps, size_t from, size_t to) {
    std::string out;
    to = std::min(to, cps.size());
    for (size_t i = from; i < to; ++i) append_utf8(out, cps[i]);
    return out;
}

size_t length(const std::string& s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

size_t byte_offset(const std::string& s, size_t cp) {
    size_t i = 0;
    for (size_t seen = 0; i < s.size(); ++i)
        if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80 && seen++ == cp) return i;
    return i;
}

size_t invalid_utf8_at(const std::string& s) {
    const auto* bytes = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
    for (size_t i = 0; i < s.size();) {
        utf8proc_int32_t cp = 0;
        const utf8proc_ssize_t n = utf8proc_iterate(bytes + i, static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
        if (n <= 0) return i;
        i += static_cast<size_t>(n);
    }
    return std::string::npos;
}

// Python's str.isspace() code points.
static bool is_ws(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

char32_t code_point_at(const std::string& s, size_t i, size_t& len) {
    unsigned char c = s[i];
    int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
    bool ok = n >= 0 && i + n < s.size();
    for (int k = 1; ok && k <= n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (!ok) { len = 1; return 0xFFFD; }
    char32_t cp = n == 0 ? c : c & (0x3F >> n);
    for (int k = 1; k <= n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    len = n + 1;
    return cp;
}

// Walks in from either end code point by code point: the middle of the text is never decoded.
std::string strip(const std::string& s, const std::string* chars, bool left, bool right) {
    std::vector<char32_t> set = chars ? decode(*chars) : std::vector<char32_t>{};
    auto drop = [&](char32_t c) {
        return chars ? std::find(set.begin(), set.end(), c) != set.end() : is_ws(c);
    };
    size_t b = 0, e = s.size(), len = 0;
    if (left)
        while (b < e && drop(code_point_at(s, b, len))) b += len;
    if (right) {
        while (e > b) {
            size_t start = e - 1;
            while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && e - start < 4) --start;
            char32_t c = code_point_at(s, start, len);
            if (start + len != e) { c = 0xFFFD; start = e - 1; }  // a broken tail byte
            if (!drop(c)) break;
            e = start;
        }
    }
    return s.substr(b, e - b);
}

std::vector<std::string> split(const std::string& s, const std::string* sep, long maxsplit, bool from_right) {
    std::vector<std::string> parts;
    if (sep) {
        if (sep->empty()) throw std::invalid_argument("empty separator");
        if (!from_right) {
            size_t pos = 0;
            while (maxsplit != 0) {
                size_t f = s.find(*sep, pos);
                if (f == std::string::npos) break;
                parts.push_back(s.substr(pos, f - pos));
                pos = f + sep->size();
                --maxsplit;
            }
            parts.push_back(s.substr(pos));
        } else {
            size_t end = s.size();
            while (maxsplit != 0 && end >= sep->size()) {
                size_t f = s.rfind(*sep, end - sep->size());
                if (f == std::string::npos) break;
                parts.push_back(s.substr(f + sep->size(), end - f - sep->size()));
                end = f;
                --maxsplit;
            }
            parts.push_back(s.substr(0, end));
            std::reverse(parts.begin(), parts.end());
        }
        return parts;
    }
    std::vector<char32_t> cps = decode(s);
    if (from_right) {
        size_t e = cps.size();
        while (true) {
            while (e > 0 && is_ws(cps[e - 1])) --e;
            if (e == 0) break;
            size_t b = e;
            if (maxsplit == 0) { parts.push_back(encode(cps, 0, e)); break; }
            while (b > 0 && !is_ws(cps[b - 1])) --b;
            parts.push_back(encode(cps, b, e));
            e = b;
            --maxsplit;
        }
        std::reverse(parts.begin(), parts.end());
        return parts;
    }
    size_t b = 0;
    while (true) {
        while (b < cps.size() && is_ws(cps[b])) ++b;
        if (b >= cps.size()) break;
        if (maxsplit == 0) {
            size_t e = cps.size();
            while (e > b && is_ws(cps[e - 1])) --e;
            parts.push_back(encode(cps, b, e));
            break;
        }
        size_t e = b;
        while (e < cps.size() && !is_ws(cps[e])) ++e;
        parts.push_back(encode(cps, b, e));
        b = e;
        --maxsplit;
    }
    return parts;
}

std::string replace(const std::string& s, const std::string& from, const std::string& to, long count) {
    std::string out;
    if (from.empty()) {  // Python inserts `to` between every code point and at both ends
        std::vector<char32_t> cps = decode(s);
        for (size_t i = 0; i <= cps.size(); ++i) {
            if (count < 0 || static_cast<long>(i) < count) out += to;
            if (i < cps.size()) append_utf8(out, cps[i]);
        }
        return out;
    }
    size_t pos = 0;
    while (count != 0) {
        size_t f = s.find(from, pos);
        if (f == std::string::npos) break;
        out += s.substr(pos, f - pos) + to;
        pos = f + from.size();
        --count;
    }
    return out + s.substr(pos);
}

size_t count(const std::string& s, const std::string& sub) {
    if (sub.empty()) return length(s) + 1;
    size_t n = 0;
    for (size_t f = s.find(sub); f != std::string::npos; f = s.find(sub, f + sub.size())) ++n;
    return n;
}

// Case and letter classes come from utf8proc's Unicode tables (simple case mapping: Python's
// special cases such as "\u00df".upper() == "SS" are not reproduced).
static bool is_letter(char32_t c) {
    utf8proc_category_t k = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}
static bool is_cased(char32_t c) {
    utf8proc_category_t k = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}
static char32_t up(char32_t c) { return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c))); }
static char32_t down(char32_t c) { return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))); }

template <typename F>
static std::string map_cps(const std::string& s, F f) {
    std::vector<char32_t> cps = decode(s);
    for (size_t i = 0; i < cps.size(); ++i) cps[i] = f(cps[i], i, i ? cps[i - 1] : 0);
    return encode(cps);
}

std::string upper(const std::string& s) { return map_cps(s, [](char32_t c, size_t, char32_t) { return up(c); }); }
std::string lower(const std::string& s) { return map_cps(s, [](char32_t c, size_t, char32_t) { return down(c); }); }

std::string capitalize(const std::string& s) {
    return map_cps(s, [](char32_t c, size_t i, char32_t) { return i == 0 ? up(c) : down(c); });
}

std::string title_method(const std::string& s) {
    std::vector<char32_t> cps = decode(s);
    bool prev_cased = false;
    for (char32_t& c : cps) {
        bool cased = is_cased(c);
        if (cased) c = prev_cased ? down(c) : up(c);
        prev_cased = cased;
    }
    return encode(cps);
}

std::string title_filter(const std::string& s) {
    std::vector<char32_t> cps = decode(s);
    bool word_start = true;
    for (char32_t& c : cps) {
        bool sep = is_ws(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
        if (!sep) c = word_start ? up(c) : down(c);
        word_start = sep;
    }
    return encode(cps);
}

size_t word_count(const std::string& s) {
    size_t n = 0;
    bool in_word = false;
    for (char32_t c : decode(s)) {
        utf8proc_category_t k = utf8proc_category(static_cast<utf8proc_int32_t>(c));
        bool w = c == '_' || is_letter(c) || (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
        n += w && !in_word;
        in_word = w;
    }
    return n;
}

bool is_lower(const std::string& s) {
    bool cased = false;
    for (char32_t c : decode(s)) {
        if (!is_cased(c)) continue;
        if (down(c) != c || up(c) == c) return false;
        cased = true;
    }
    return cased;
}

bool is_upper(const std::string& s) {
    bool cased = false;
    for (char32_t c : decode(s)) {
        if (!is_cased(c)) continue;
        if (up(c) != c || down(c) == c) return false;
        cased = true;
    }
    return cased;
}

bool is_printable(char32_t c) {
    if (c == ' ') return true;
    switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_CS: case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN: case UTF8PROC_CATEGORY_ZS: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP: return false;
    default: return true;
    }
}

void append_escape(std::string& out, char32_t c) {
    char buf[16];
    const char* form = c < 0x100 ? "\\x%02x" : c < 0x10000 ? "\\u%04x" : "\\U%08x";
    std::snprintf(buf, sizeof buf, form, static_cast<unsigned>(c));
    out += buf;
}

std::string escape_non_ascii(const std::string& s) {
    std::string out;
    for (char32_t c : decode(s)) {
        if (c < 0x80) out += static_cast<char>(c);
        else append_escape(out, c);
    }
    return out;
}

int read_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'z') return c - 'a' + 10;
    if (c >= 'A' && c <= 'Z') return c - 'A' + 10;
    return 36;
}

}  // namespace tpx::chat::text
