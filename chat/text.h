// Python's str methods over UTF-8 text, as chat templates call them: strip/split/case/length
// count and cut by code point, and "whitespace" is Python's (Unicode) whitespace.
// Letter classes and case mapping are Unicode's, from utf8proc.
#pragma once

#include <string>
#include <vector>

namespace tpx::chat::text {

std::vector<char32_t> decode(const std::string& s);
void append_utf8(std::string& out, char32_t cp);  // one code point's UTF-8 bytes
std::string encode(const std::vector<char32_t>& cps, size_t from = 0, size_t to = std::string::npos);
size_t length(const std::string& s);  // in code points, as Python's len()
size_t byte_offset(const std::string& s, size_t cp);  // where code point cp starts (s.size() from length(s) on)
// The code point that starts at s[i], and its length in bytes (invalid bytes read as U+FFFD).
char32_t code_point_at(const std::string& s, size_t i, size_t& len);
// The byte where s's first invalid UTF-8 sequence starts (utf8proc's rules: no overlong forms
// or surrogates), or std::string::npos.
size_t invalid_utf8_at(const std::string& s);

// str.strip/lstrip/rstrip; `chars` null strips whitespace.
std::string strip(const std::string& s, const std::string* chars, bool left, bool right);
// str.split(sep, maxsplit) and rsplit; `sep` null splits on runs of whitespace.
std::vector<std::string> split(const std::string& s, const std::string* sep, long maxsplit, bool from_right);
std::string replace(const std::string& s, const std::string& from, const std::string& to, long count);
size_t count(const std::string& s, const std::string& sub);

std::string upper(const std::string& s);
std::string lower(const std::string& s);
std::string capitalize(const std::string& s);   // str.capitalize and Jinja's capitalize
std::string title_method(const std::string& s); // str.title: a letter after a non-letter is upper
std::string title_filter(const std::string& s); // Jinja's |title: words split at spaces - ( { [ <
size_t word_count(const std::string& s);      // Jinja's |wordcount: runs of \w
bool is_lower(const std::string& s);
bool is_upper(const std::string& s);
// Python's str.isprintable() of one code point: not a control, format, surrogate, private-use,
// unassigned or separator character (the ASCII space excepted).
bool is_printable(char32_t c);
// A code point as Python's escapes write it: \xe9, \u20ac, \U0001f600 (repr, ascii(),
// backslashreplace).
void append_escape(std::string& out, char32_t c);
// Every non-ASCII code point of s through append_escape: Python's ascii().
std::string escape_non_ascii(const std::string& s);
// A digit's value in bases up to 36 (0-9, then a-z or A-Z), else 36, which no base takes.
int read_digit(char c);

}  // namespace tpx::chat::text
