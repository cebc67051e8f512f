// Python's int(s, base), float(s) and str.format, as conversions.h says. Every refusal is an
// EvalError (the renderer adds the template's line); a formatted result stays within kMaxBuilt.
#include "chat/conversions.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "chat/text.h"

namespace tpx::chat {
namespace {

constexpr uint64_t kTwoTo63 = uint64_t{1} << 63;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The base a prefix letter names (0x, 0o, 0b), else 0.
int64_t read_prefix_base(char c) {
    switch (c) {
    case 'x': case 'X': return 16;
    case 'o': case 'O': return 8;
    case 'b': case 'B': return 2;
    default: return 0;
    }
}

// How str.format numbers its fields: Python refuses a mix of {} and {0}.
enum class Numbering { kUnset, kAutomatic, kManual };

// A field's run of decimal digits as Python reads an index (leading zeros allowed).
size_t read_index(const std::string& digits) {
    uint64_t n = 0;
    for (char c : digits) {
        n = n * 10 + static_cast<uint64_t>(c - '0');
        if (n >= kTwoTo63) throw EvalError("str.format: too many decimal digits in format string");
    }
    return static_cast<size_t>(n);
}

bool all_digits(const std::string& s) { return !s.empty() && std::all_of(s.begin(), s.end(), is_digit); }

// Names of a dict's own methods: Jinja2's lookup gives the bound method for these (where an
// item of that name is not there, for [key]), which Python prints as "<built-in method ...>".
bool is_dict_method(const std::string& key) {
    static const char* const kNames[] = {"clear", "copy", "fromkeys", "get", "items", "keys", "pop", "popitem", "setdefault", "update", "values"};
    return std::any_of(std::begin(kNames), std::end(kNames), [&](const char* n) { return key == n; });
}

// One field's value through its .key and [key] lookups, Jinja2's getattr and getitem: a key or
// index that is not there gives Undefined (printed as nothing); a lookup on Undefined raises.
class FieldValue {
public:
    explicit FieldValue(const Value& v) : at_(v.is_undefined() ? nullptr : &need_json(v)) {}

    bool defined() const { return at_ != nullptr; }
    const json& get() const { return *at_; }

    void look_up(const std::string& field, const std::string& key, bool attribute) {
        auto refuse = [&](const std::string& why) { throw EvalError("str.format: '{" + field + "}' " + why); };
        if (!at_) refuse("looks up '" + key + "' in an undefined value");
        const bool index = !attribute && all_digits(key);
        const size_t n = index ? read_index(key) : 0;
        if (!at_->is_object()) {
            // Python reads a str's, list's or number's attributes here (methods, x.real): not
            // supported; a key that cannot name one (x[-1]) is Undefined there.
            const bool identifier = !key.empty() && !is_digit(key[0]) &&
                                    std::all_of(key.begin(), key.end(), [](char c) { return c == '_' || std::isalnum(static_cast<unsigned char>(c)); });
            if (!index && identifier) refuse("reads attribute '" + key + "' of a " + type_name(*at_) + " (a dict's keys only)");
            if (!index) {
                at_ = nullptr;
            } else if (at_->is_array()) {
                at_ = n < at_->size() ? &(*at_)[n] : nullptr;
            } else if (at_->is_string()) {
                const std::string& s = at_->get_ref<const std::string&>();
                const size_t from = text::byte_offset(s, n);
                if (from >= s.size()) {
                    at_ = nullptr;
                    return;
                }
                size_t bytes = 1;
                text::code_point_at(s, from, bytes);
                json one = s.substr(from, bytes);  // s may be char_ itself: copied out first
                char_ = std::move(one);
                at_ = &char_;
            } else {
                at_ = nullptr;
            }
            return;
        }
        // A dict: an index is an int, never one of its (string) keys. Its own attributes come
        // first for .key (the sandbox makes its __dunder__ ones Undefined), and for a [key] it
        // lacks: Python prints a bound method there.
        const bool dunder = key.size() > 4 && key.compare(0, 2, "__") == 0 && key.compare(key.size() - 2, 2, "__") == 0;
        if (!index && (is_dict_method(key) || (attribute && dunder)) && (attribute || !at_->contains(key)))
            refuse("reads the dict attribute '" + key + "' (not supported)");
        at_ = !index && at_->contains(key) ? &(*at_)[key] : nullptr;
    }

private:
    const json* at_;
    json char_;  // a string's code point picked by [index]
};

constexpr int kNoConversion = -1;

// The field's text after its conversion (!r, !s, !a or kNoConversion).
std::string convert(const FieldValue& v, int conversion) {
    if (conversion != kNoConversion && conversion != 'r' && conversion != 's' && conversion != 'a')
        throw EvalError(std::string("str.format: unknown conversion specifier ") + static_cast<char>(conversion));
    if (!v.defined()) return conversion == 'r' || conversion == 'a' ? "Undefined" : "";
    if (conversion == 'r') return repr(v.get());
    if (conversion == 'a') return text::escape_non_ascii(repr(v.get()));
    return to_str(v.get());
}

}  // namespace

std::optional<int64_t> parse_int(const std::string& s, int64_t base) {
    if (base != 0 && (base < 2 || base > 36)) return std::nullopt;
    size_t i = 0;
    const bool minus = i < s.size() && s[i] == '-';
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    // A prefix: the base it names where base is 0, else allowed where it names base.
    bool prefixed = false;
    if (i + 1 < s.size() && s[i] == '0' && read_prefix_base(s[i + 1]) != 0 && (base == 0 || base == read_prefix_base(s[i + 1]))) {
        base = read_prefix_base(s[i + 1]);
        i += 2;
        prefixed = true;
    }
    const bool no_leading_zeros = base == 0;  // base 0 without a prefix: "010" is refused, "000" is 0
    if (base == 0) base = 10;
    uint64_t n = 0;
    size_t digits = 0;
    bool underscore_ok = prefixed, nonzero = false, leading_zero = false, past_64_bits = false;
    for (; i < s.size(); ++i) {
        if (s[i] == '_') {  // single underscores between digits (and after a prefix)
            if (!underscore_ok) return std::nullopt;
            underscore_ok = false;
            continue;
        }
        const int d = text::read_digit(s[i]);
        if (d >= base) return std::nullopt;
        leading_zero |= digits == 0 && d == 0;
        nonzero |= d != 0;
        past_64_bits |= n > kTwoTo63 / static_cast<uint64_t>(base) || n * static_cast<uint64_t>(base) > kTwoTo63 - static_cast<uint64_t>(d);
        if (!past_64_bits) n = n * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
        ++digits;
        underscore_ok = true;
    }
    if (digits == 0 || !underscore_ok || (no_leading_zeros && !prefixed && leading_zero && nonzero)) return std::nullopt;
    // Checked only once the whole string reads as a number: where it does not, Jinja2 falls back.
    if (past_64_bits || (!minus && n == kTwoTo63))
        throw EvalError("cannot convert '" + s + "' to an integer of 64 bits (Python's integers are unbounded)");
    return minus ? static_cast<int64_t>(0 - n) : static_cast<int64_t>(n);
}

std::optional<double> parse_float(const std::string& s) {
    // Python's float() reads no hexadecimal ("0x1A") and no "nan(...)", which strtod would.
    if (s.find_first_of("xXpP(") != std::string::npos && (s.find_first_of("nN") == std::string::npos || s.find('(') != std::string::npos))
        return std::nullopt;
    // An underscore only between two digits ("1_0.5" is 10.5).
    std::string plain;
    plain.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '_') {
            plain += s[i];
            continue;
        }
        if (i == 0 || i + 1 >= s.size() || !is_digit(s[i - 1]) || !is_digit(s[i + 1])) return std::nullopt;
    }
    char* end = nullptr;
    const double d = std::strtod(plain.c_str(), &end);
    if (plain.empty() || end != plain.c_str() + plain.size()) return std::nullopt;
    return d;
}

std::string format_fields(const std::string& fmt, const Args& args) {
    auto fail = [](const std::string& why) { throw EvalError("str.format: " + why); };
    std::string out;
    size_t next = 0;
    Numbering numbering = Numbering::kUnset;
    for (size_t i = 0; i < fmt.size(); ++i) {
        const char c = fmt[i];
        if ((c == '{' || c == '}') && i + 1 < fmt.size() && fmt[i + 1] == c) {
            out += c;
            ++i;
            continue;
        }
        if (c == '}') fail("single '}' encountered in format string");
        if (c != '{') {
            out += c;
            continue;
        }
        if (i + 1 == fmt.size()) fail("single '{' encountered in format string");
        // The field's name runs to '!', ':' or '}' ('[' to ']' may hold any of them), as CPython's
        // parse_field scans it.
        size_t j = i + 1;
        for (; j < fmt.size() && fmt[j] != '!' && fmt[j] != ':' && fmt[j] != '}'; ++j) {
            if (fmt[j] == '{') fail("unexpected '{' in field name");
            if (fmt[j] == '[') j = std::min(fmt.find(']', j), fmt.size() - 1);
        }
        if (j >= fmt.size() || (fmt[j] != '!' && fmt[j] != ':' && fmt[j] != '}')) fail("expected '}' before end of string");
        const std::string field = fmt.substr(i + 1, j - i - 1);
        int conversion = kNoConversion;
        if (fmt[j] == '!') {
            if (j + 1 >= fmt.size()) fail("end of string while looking for conversion specifier");
            conversion = static_cast<unsigned char>(fmt[j + 1]);
            j += 2;
            if (j >= fmt.size()) fail("unmatched '{' in format spec");
            if (fmt[j] != '}' && fmt[j] != ':') fail("expected ':' after conversion specifier");
        }
        if (fmt[j] == ':') {  // an empty spec is no spec; any other is refused
            const size_t close = fmt.find('}', j);
            if (close == std::string::npos) fail("unmatched '{' in format spec");
            if (close != j + 1) fail("format specs ('" + fmt.substr(j, close - j) + "') are not supported");
            j = close;
        }
        // The argument: {} and {digits} number positionally (Python refuses a mix of the two
        // forms, counting only fields that are exactly those); any other first part is a keyword.
        const size_t name_end = std::min(field.find('.'), field.find('['));
        const std::string arg = field.substr(0, name_end);
        const Numbering kind = field.empty() ? Numbering::kAutomatic : all_digits(field) ? Numbering::kManual : Numbering::kUnset;
        if (kind != Numbering::kUnset) {
            if (numbering != Numbering::kUnset && numbering != kind)
                fail(kind == Numbering::kAutomatic ? "cannot switch from manual field specification to automatic field numbering"
                                                    : "cannot switch from automatic field numbering to manual field specification");
            numbering = kind;
        }
        const Value* v = nullptr;
        if (field.empty() || all_digits(arg)) {
            const size_t index = field.empty() ? next++ : read_index(arg);
            if (index >= args.positional.size()) fail("no positional argument " + std::to_string(index) + " for '{" + field + "}'");
            v = &args.positional[index];
        } else {
            for (const auto& kw : args.keyword)
                if (kw.first == arg) v = &kw.second;
            if (!v) fail("no argument named '" + arg + "' for '{" + field + "}'");
        }
        FieldValue value(*v);
        for (size_t k = name_end; k < field.size();) {
            const bool attribute = field[k] == '.';
            size_t end = 0;
            if (attribute) {
                end = std::min(field.find('.', k + 1), field.find('[', k + 1));
            } else {
                end = field.find(']', k);
                if (end == std::string::npos) fail("missing ']' in format string");
            }
            const std::string key = field.substr(k + 1, std::min(end, field.size()) - k - 1);
            if (key.empty()) fail("empty attribute in format string");
            k = attribute ? end : end + 1;
            if (!attribute && k < field.size() && field[k] != '.' && field[k] != '[')
                fail("only '.' or '[' may follow ']' in format field specifier");
            value.look_up(field, key, attribute);
        }
        const std::string text = convert(value, conversion);
        if (out.size() + text.size() > kMaxBuilt) fail("the result would pass " + std::to_string(kMaxBuilt) + " bytes");
        out += text;
        i = j;
    }
    return out;
}

}  // namespace tpx::chat
