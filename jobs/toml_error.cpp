// TOML++'s redefinition errors repaired (the key or table header named as its line writes it,
// and a redefined key pointed at where the key starts), and keys too deep for it refused first.
#include "jobs/toml_error.h"

#include "common/error.h"

namespace tpx {
namespace {

// Line `line` (1-based) of text, without its end; the UTF-8 byte order mark of line 1 left out.
bool line_of(const std::string& text, size_t line, std::string& out) {
    size_t begin = 0;
    for (size_t n = 1; n < line; ++n) {
        const size_t end = text.find('\n', begin);
        if (end == std::string::npos) return false;
        begin = end + 1;
    }
    if (line == 1 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) begin = 3;
    const size_t end = text.find('\n', begin);
    out = text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    if (!out.empty() && out.back() == '\r') out.pop_back();
    return true;
}

// The name a table header ([a."b"] or [[a."b"]]) on line l gives, as written and trimmed: the
// text from its first '[' (or '[[') to the first ']' outside strings; "" where l is no header.
std::string header_name(const std::string& l) {
    size_t i = l.find_first_not_of(" \t");
    if (i == std::string::npos || l[i] != '[') return "";
    i += l.compare(i, 2, "[[") == 0 ? 2 : 1;
    char quote = 0;
    for (size_t j = i; j < l.size(); ++j) {
        const char c = l[j];
        if (quote == '"' && c == '\\' && j + 1 < l.size()) ++j;
        else if (quote) quote = c == quote ? 0 : quote;
        else if (c == '"' || c == '\'') quote = c;
        else if (c == ']') {
            const size_t first = l.find_first_not_of(" \t", i), last = l.find_last_not_of(" \t", j - 1);
            return first == std::string::npos || first >= j || last < first ? "" : l.substr(first, last - first + 1);
        }
    }
    return "";
}

}  // namespace

TomlMessage describe_toml_error(std::string_view description, size_t line, size_t column, const std::string& text) {
    const std::string d(description);
    const TomlMessage as_is{d, column};
    const size_t redefine = d.find("cannot redefine existing "), open = d.find('\'', redefine), close = d.rfind('\'');
    std::string l;
    if (redefine == std::string::npos || open == std::string::npos || close <= open || line == 0 || !line_of(text, line, l)) return as_is;
    if (d.find("table header") != std::string::npos) {
        const std::string name = header_name(l);
        return name.empty() ? as_is : TomlMessage{d.substr(0, open + 1) + name + d.substr(close), column};
    }
    if (d.find("key-value pair") == std::string::npos || column == 0) return as_is;
    // Up to the column's character: the last '=' and the last ',' or '{' outside strings ('"'
    // strings with their backslash escapes, '\'' literal ones).
    char quote = 0;
    size_t eq = std::string::npos, start = 0, chars = 0;
    for (size_t i = 0; i < l.size() && chars + 1 < column; ++i) {
        const char c = l[i];
        if (((unsigned char)c & 0xC0) != 0x80) ++chars;  // a UTF-8 character's first byte
        if (quote == '"' && c == '\\' && i + 1 < l.size()) ++i, ++chars;  // the escaped character (ASCII)
        else if (quote) quote = c == quote ? 0 : quote;
        else if (c == '"' || c == '\'') quote = c;
        else if (c == '=') eq = i;
        else if (c == ',' || c == '{') start = i + 1;
    }
    if (eq == std::string::npos || eq < start) return as_is;
    const size_t first = l.find_first_not_of(" \t", start), last = l.find_last_not_of(" \t", eq - 1);
    if (first == std::string::npos || last == std::string::npos || first >= eq || last < first) return as_is;
    size_t key_column = 1;  // in characters, as TOML++ counts them
    for (size_t i = 0; i < first; ++i) key_column += ((unsigned char)l[i] & 0xC0) != 0x80;
    return {d.substr(0, open + 1) + l.substr(first, last - first + 1) + d.substr(close), key_column};
}

void refuse_deep_keys(const std::string& text, const std::string& file) {
    // Dots in a row with none of = , [ ] { } or a line's end between them, outside strings and
    // comments, are a key's or header's parts (a number or a time has at most one dot).
    size_t line = 1, column = 0, dots = 0;
    auto next = [&](size_t& i) {  // to text[i + 1], counting lines and columns
        ++i;
        if (i < text.size() && text[i] == '\n') ++line, column = 0;
        else ++column;
    };
    for (size_t i = (size_t)-1; i + 1 < text.size();) {
        next(i);
        const char c = text[i];
        if (c == '\n') {
            dots = 0;
        } else if (c == '#') {
            while (i + 1 < text.size() && text[i + 1] != '\n') next(i);
        } else if (c == '"' || c == '\'') {
            const size_t quotes = text.compare(i, 3, std::string(3, c)) == 0 ? 3 : 1;
            for (size_t q = 1; q < quotes; ++q) next(i);
            while (i + 1 < text.size()) {
                if (quotes == 1 && text[i + 1] == '\n') break;  // not closed on its line: TOML++ says so
                next(i);
                if (c == '"' && text[i] == '\\' && (quotes == 3 || (i + 1 < text.size() && text[i + 1] != '\n')))
                    next(i);  // an escape in a basic string (a single-line one's never takes its line's end)
                else if (text.compare(i, quotes, std::string(quotes, c)) == 0) {
                    for (size_t q = 1; q < quotes; ++q) next(i);
                    while (quotes == 3 && i + 1 < text.size() && text[i + 1] == c) next(i);  // quotes before the closing three
                    break;
                }
            }
        } else if (c == '=' || c == ',' || c == '[' || c == ']' || c == '{' || c == '}') {
            dots = 0;
        } else if (c == '.' && ++dots >= kMaxKeyParts) {
            throw JobError(at(file, (long)line, (long)column,
                              "a dotted key or table header of more than " + std::to_string(kMaxKeyParts) + " parts (a job's keys have a few)"));
        }
    }
}

}  // namespace tpx
