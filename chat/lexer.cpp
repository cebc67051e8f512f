// Jinja2's lexer rules for chat templates. Whitespace control is decided per text piece from
// the tags on either side of it, exactly as Jinja2's regexes do (see the rules in lex_pieces).
#include "chat/lexer.h"

#include <cctype>
#include <cstring>

#include "chat/text.h"
#include "common/error.h"

namespace tpx::chat {
namespace {

// One text run or tag of the source, before whitespace control.
struct Piece {
    enum class Kind { Text, Var, Block, Comment } kind;
    std::string text;            // Text only
    std::vector<Token> tokens;   // Var and Block: the expression tokens
    int line = 0;
    bool strip_before = false;   // "{%-": remove all whitespace before
    bool strip_after = false;    // "-%}": remove all whitespace after
    bool keep_before = false;    // "{%+": no lstrip_blocks
    bool keep_after = false;     // "+%}": no trim_blocks
};

[[noreturn]] void fail(const std::string& name, int line, const std::string& what) {
    throw JobError(at(name, line, 0, what));
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Reads a quoted string starting at s[i] (the quote), with the escapes of Python's
// unicode-escape codec (Jinja2's lexer decodes a literal through it): \n \t \r \a \b \f \v,
// octal \ooo (one to three digits), \xXX, \uXXXX and \UXXXXXXXX (exactly that many hex digits),
// a backslash-newline continuation; an unknown escape is kept as written. \N{name} is refused
// (no name table here), as is a surrogate code point, which no UTF-8 text can hold. Errors name
// the literal's first line, as Jinja2's do.
std::string read_string(const std::string& s, size_t& i, int& line, const std::string& name) {
    char q = s[i++];
    std::string out;
    int start_line = line;
    while (i < s.size() && s[i] != q) {
        char c = s[i++];
        if (c == '\n') ++line;
        if (c != '\\' || i >= s.size()) {
            out += c;
            continue;
        }
        char e = s[i++];
        switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case '\n': ++line; break;  // a line continuation
        case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': {
            char32_t cp = (char32_t)(e - '0');
            for (int k = 1; k < 3 && i < s.size() && s[i] >= '0' && s[i] <= '7'; ++k) cp = cp * 8 + (char32_t)(s[i++] - '0');
            text::append_utf8(out, cp);
            break;
        }
        case 'x':
        case 'u':
        case 'U': {
            const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            char32_t cp = 0;
            for (size_t k = 0; k < n; ++k, ++i) {
                const int d = i < s.size() ? text::read_digit(s[i]) : 36;
                if (d >= 16) fail(name, start_line, std::string("truncated \\") + e + std::string(n, 'X') + " escape in a string");
                cp = cp * 16 + (char32_t)d;
            }
            if (cp > 0x10FFFF) fail(name, start_line, "illegal Unicode character in a string's \\U escape");
            if (cp >= 0xD800 && cp <= 0xDFFF) fail(name, start_line, "a surrogate code point in a string's escape (not UTF-8 text)");
            text::append_utf8(out, cp);
            break;
        }
        case 'N': fail(name, start_line, "unsupported \\N{...} escape in a string (write the character itself)");
        default:  // Python keeps an unknown escape as written
            if (static_cast<unsigned char>(e) < 0x80) {
                out += '\\';
                out += e;
                break;
            }
            // Jinja2 encodes the literal with backslashreplace before decoding its escapes: a
            // backslash and a non-ASCII character read as the backslash and that character's
            // escape as text ('\é' is the four characters \xe9).
            size_t bytes = 1;
            text::append_escape(out, text::code_point_at(s, i - 1, bytes));
            i += bytes - 1;
        }
    }
    if (i >= s.size()) fail(name, start_line, "unterminated string literal");
    ++i;
    return out;
}

// Tokenizes the inside of a tag from s[i] up to its closer ("}}" or "%}"), which it consumes.
void lex_tag(const std::string& s, size_t& i, int& line, const std::string& name, const char* closer,
             Piece& piece) {
    static const char* kOps2[] = {"//", "**", "==", "!=", "<=", ">="};
    int depth = 0;  // brackets open inside the tag: "}}" closes a dict literal there, not the tag
    int start_line = line;
    while (true) {
        while (i < s.size() && is_space(s[i])) {
            if (s[i] == '\n') ++line;
            ++i;
        }
        if (i >= s.size()) fail(name, start_line, std::string("tag not closed by '") + closer + "'");
        for (char marker : {'-', '+'}) {
            if (depth == 0 && s[i] == marker && s.compare(i + 1, 2, closer) == 0) {
                (marker == '-' ? piece.strip_after : piece.keep_after) = true;
                i += 3;
                return;
            }
        }
        if (depth == 0 && s.compare(i, 2, closer) == 0) {
            i += 2;
            return;
        }
        char c = s[i];
        Token t{Token::Type::Op, "", line};
        if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
            size_t b = i;
            while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '_')) ++i;
            t = {Token::Type::Name, s.substr(b, i - b), line};
        } else if (std::isdigit(static_cast<unsigned char>(c))) {
            size_t b = i;
            bool is_float = false;
            while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '_')) ++i;
            if (i + 1 < s.size() && s[i] == '.' && std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
                is_float = true;
                for (++i; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i) {}
            }
            if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
                is_float = true;
                ++i;
                if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
                while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
            }
            std::string num;
            for (size_t k = b; k < i; ++k)
                if (s[k] != '_') num += s[k];
            t = {is_float ? Token::Type::Float : Token::Type::Int, num, line};
        } else if (c == '\'' || c == '"') {
            t.type = Token::Type::String;
            t.text = read_string(s, i, line, name);
        } else {
            std::string op(1, c);
            for (const char* o : kOps2)
                if (s.compare(i, 2, o) == 0) op = o;
            if (!std::strchr("+-*/%~<>=()[]{},.:|!", c) || op == "!")
                fail(name, line, std::string("unexpected character '") + c + "' in a tag");
            if (op == "(" || op == "[" || op == "{") ++depth;
            if (op == ")" || op == "]" || op == "}") --depth;
            i += op.size();
            t.text = op;
        }
        piece.tokens.push_back(std::move(t));
    }
}

std::vector<Piece> lex_pieces(const std::string& s, const std::string& name) {
    std::vector<Piece> pieces;
    size_t i = 0;
    int line = 1;
    while (i < s.size()) {
        size_t open = s.find('{', i);
        while (open != std::string::npos && open + 1 < s.size() && !std::strchr("{%#", s[open + 1]))
            open = s.find('{', open + 1);
        if (open == std::string::npos || open + 1 >= s.size()) open = s.size();
        if (open > i) {
            Piece text{Piece::Kind::Text, s.substr(i, open - i), {}, line};
            for (size_t k = i; k < open; ++k) line += s[k] == '\n';
            pieces.push_back(std::move(text));
        }
        if (open >= s.size()) break;
        char kind = s[open + 1];
        Piece tag{kind == '{' ? Piece::Kind::Var : kind == '%' ? Piece::Kind::Block : Piece::Kind::Comment,
                  "", {}, line};
        i = open + 2;
        if (i < s.size() && s[i] == '-') { tag.strip_before = true; ++i; }
        else if (i < s.size() && s[i] == '+') { tag.keep_before = true; ++i; }
        if (tag.kind == Piece::Kind::Comment) {
            size_t close = s.find("#}", i);
            if (close == std::string::npos) fail(name, line, "comment not closed by '#}'");
            if (close > i && s[close - 1] == '-') tag.strip_after = true;
            if (close > i && s[close - 1] == '+') tag.keep_after = true;
            for (size_t k = i; k < close; ++k) line += s[k] == '\n';
            i = close + 2;
        } else {
            lex_tag(s, i, line, name, tag.kind == Piece::Kind::Var ? "}}" : "%}", tag);
        }
        pieces.push_back(std::move(tag));
    }
    return pieces;
}

bool is_stmt(const Piece& p) { return p.kind == Piece::Kind::Block || p.kind == Piece::Kind::Comment; }

// Applies Jinja2's whitespace rules to text piece k from its neighbours:
//  - after "-%}" all whitespace goes; else after a block or comment tag (trim_blocks) one "\n";
//  - before "{%-" all whitespace goes; else before a block or comment tag (lstrip_blocks) the
//    spaces and tabs that start its line, when only they stand between line start and the tag.
std::string shape_text(const std::vector<Piece>& pieces, size_t k) {
    std::string t = pieces[k].text;
    bool line_starting = k == 0;
    if (k > 0) {
        const Piece& prev = pieces[k - 1];
        if (prev.strip_after) {
            size_t n = 0;
            while (n < t.size() && is_space(t[n])) ++n;
            line_starting = n > 0 && t[n - 1] == '\n';
            t.erase(0, n);
        } else if (is_stmt(prev) && !prev.keep_after && !t.empty() && t[0] == '\n') {
            t.erase(0, 1);
            line_starting = true;
        }
    }
    if (k + 1 < pieces.size()) {
        const Piece& next = pieces[k + 1];
        if (next.strip_before) {
            size_t n = t.size();
            while (n > 0 && is_space(t[n - 1])) --n;
            t.erase(n);
        } else if (is_stmt(next) && !next.keep_before) {
            size_t nl = t.rfind('\n');
            size_t from = nl == std::string::npos ? 0 : nl + 1;
            if (nl != std::string::npos || line_starting) {
                bool blank = true;
                for (size_t q = from; q < t.size(); ++q) blank = blank && is_space(t[q]);
                if (blank) t.erase(from);
            }
        }
    }
    return t;
}

}  // namespace

std::vector<Token> tokenize(const std::string& source, const std::string& name) {
    // Jinja2 reads "\r\n" and "\r" as "\n" and drops one trailing newline (keep_trailing_newline=False).
    std::string s;
    s.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
        if (source[i] == '\r') {
            s += '\n';
            if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
        } else {
            s += source[i];
        }
    }
    if (!s.empty() && s.back() == '\n') s.pop_back();

    std::vector<Piece> pieces = lex_pieces(s, name);
    std::vector<Token> out;
    for (size_t k = 0; k < pieces.size(); ++k) {
        Piece& p = pieces[k];
        switch (p.kind) {
        case Piece::Kind::Text: {
            std::string t = shape_text(pieces, k);
            if (!t.empty()) out.push_back({Token::Type::Text, std::move(t), p.line});
            break;
        }
        case Piece::Kind::Comment: break;
        case Piece::Kind::Var:
        case Piece::Kind::Block: {
            bool var = p.kind == Piece::Kind::Var;
            out.push_back({var ? Token::Type::VarBegin : Token::Type::BlockBegin, "", p.line});
            for (Token& t : p.tokens) out.push_back(std::move(t));
            out.push_back({var ? Token::Type::VarEnd : Token::Type::BlockEnd, "", p.line});
            break;
        }
        }
    }
    out.push_back({Token::Type::End, "", 0});
    return out;
}

}  // namespace tpx::chat
