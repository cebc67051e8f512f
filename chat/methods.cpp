// Jinja2's tests ("x is string") and the Python str/dict methods templates call
// ("s.startswith(p)", "d.get(k)"). Mutating methods (append, update, pop) are not here: HF's
// ImmutableSandboxedEnvironment refuses them too.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>

#include "chat/builtins.h"
#include "chat/text.h"

namespace tpx::chat {
namespace {

bool compare_test(Test t, const json& a, const json& b) {
    try {
        switch (t) {
        case Test::Eq: return equal(a, b);
        case Test::Ne: return !equal(a, b);
        case Test::Lt: return less(a, b);
        case Test::Le: return !less(b, a);
        case Test::Gt: return less(b, a);
        case Test::Ge: return !less(a, b);
        default: return false;
        }
    } catch (const std::invalid_argument& e) {
        throw EvalError(e.what());
    }
}

// Python's "x in container".
bool contains(const json& container, const json& x) {
    if (container.is_string()) {
        if (!x.is_string()) throw EvalError("'in <string>' requires string as left operand, not " + type_name(x));
        return container.get_ref<const std::string&>().find(x.get_ref<const std::string&>()) != std::string::npos;
    }
    if (container.is_array()) {
        for (const json& item : container)
            if (equal(item, x)) return true;
        return false;
    }
    if (container.is_object()) return x.is_string() && container.contains(x.get_ref<const std::string&>());
    throw EvalError("argument of type '" + type_name(container) + "' is not iterable");
}

// Python's ascii(x): repr with every non-ASCII code point escaped.
std::string ascii_repr(const json& j) {
    std::string out;
    char buf[16];
    for (char32_t c : text::decode(repr(j))) {
        if (c < 0x80) out += static_cast<char>(c);
        else out += (std::snprintf(buf, sizeof buf, c < 0x100 ? "\\x%02x" : c < 0x10000 ? "\\u%04x" : "\\U%08x", (unsigned)c), buf);
    }
    return out;
}

// Python's str.format as Jinja2's sandboxed formatter runs it: fields {}, {0}, {name}, each
// followed by .key or [key] lookups ([digits]: an index, which no dict key equals; a key or index
// that is not there prints as Undefined does, nothing), then !r, !s or !a. Format specs (":>5") are refused, not ignored.
std::string python_format(const std::string& fmt, const Args& args) {
    std::string out;
    size_t next = 0;
    int numbering = 0;  // 1: automatic ({}), 2: manual ({0}): Python refuses a mix
    auto fail = [](const std::string& why) -> void { throw EvalError("str.format: " + why); };
    auto all_digits = [](const std::string& k) { return !k.empty() && std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; }); };
    for (size_t i = 0; i < fmt.size(); ++i) {
        const char c = fmt[i];
        if ((c == '{' || c == '}') && i + 1 < fmt.size() && fmt[i + 1] == c) { out += c; ++i; continue; }
        if (c == '}') fail("single '}' encountered in format string");
        if (c != '{') { out += c; continue; }
        if (i + 1 == fmt.size()) fail("single '{' encountered in format string");
        // The field: its name up to '!', ':' or '}' (a [key] may hold any of them but ']').
        size_t j = i + 1;
        while (j < fmt.size() && fmt[j] != '!' && fmt[j] != ':' && fmt[j] != '}') {
            if (fmt[j] == '[') j = fmt.find(']', j);
            if (j == std::string::npos) fail("expected '}' before end of string");
            ++j;
        }
        if (j >= fmt.size()) fail("expected '}' before end of string");
        const std::string field = fmt.substr(i + 1, j - i - 1);
        char conversion = 0;
        if (fmt[j] == '!') {
            if (j + 2 >= fmt.size() || (fmt[j + 2] != '}' && fmt[j + 2] != ':')) fail("expected ':' after conversion specifier");
            conversion = fmt[j + 1], j += 2;
            if (conversion != 'r' && conversion != 's' && conversion != 'a') fail(std::string("unknown conversion specifier ") + conversion);
        }
        if (fmt[j] == ':') {
            const size_t close = fmt.find('}', j);
            fail("format specs ('" + fmt.substr(j, close == std::string::npos ? std::string::npos : close - j) + "') are not supported");
        }
        // The argument, then its lookups.
        const size_t name_end = std::min(field.find('.'), field.find('['));
        const std::string arg = field.substr(0, name_end);
        const Value* v = nullptr;
        if (arg.empty() || all_digits(arg)) {
            const int kind = arg.empty() ? 1 : 2;
            if (numbering && numbering != kind)
                fail(kind == 1 ? "cannot switch from manual field specification to automatic field numbering"
                               : "cannot switch from automatic field numbering to manual field specification");
            numbering = kind;
            const size_t index = arg.empty() ? next++ : std::stoul(arg);
            if (index >= args.positional.size()) fail("no positional argument " + std::to_string(index) + " for '{" + field + "}'");
            v = &args.positional[index];
        } else {
            for (const auto& kw : args.keyword)
                if (kw.first == arg) v = &kw.second;
            if (!v) fail("no argument named '" + arg + "' for '{" + field + "}'");
        }
        std::optional<json> j_at;  // nullopt: a lookup found nothing (printed as nothing)
        if (!v->is_undefined()) j_at = need_json(*v);
        for (size_t k = name_end; k < field.size();) {
            std::string key;
            const bool dot = field[k] == '.';
            if (dot) {
                const size_t end = std::min(field.find('.', k + 1), field.find('[', k + 1));
                key = field.substr(k + 1, end - k - 1), k = end;
            } else if (field[k] == '[') {
                const size_t end = field.find(']', k);
                key = field.substr(k + 1, end - k - 1), k = end + 1;
                if (k < field.size() && field[k] != '.' && field[k] != '[') fail("only '.' or '[' may follow ']' in format field specifier");
            } else {
                fail("only '.' or '[' may follow ']' in format field specifier");
            }
            if (key.empty()) fail("empty attribute in format string");
            if (!j_at) continue;
            if (dot && !j_at->is_object()) fail("'{" + field + "}' reads attribute '" + key + "' of a " + type_name(*j_at) + " (a dict's keys only)");
            const bool index = !dot && all_digits(key);  // an int: never one of a dict's (string) keys
            if (!index && j_at->is_object() && j_at->contains(key)) j_at = json((*j_at)[key]);
            else if (index && key.size() < 18 && (j_at->is_array() || j_at->is_string())) {
                const size_t n = std::stoull(key);
                if (j_at->is_array()) j_at = n < j_at->size() ? std::optional<json>((*j_at)[n]) : std::nullopt;
                else {
                    const std::string& str = j_at->get_ref<const std::string&>();
                    j_at = n < text::length(str) ? std::optional<json>(str.substr(text::byte_offset(str, n), text::byte_offset(str, n + 1) - text::byte_offset(str, n)))
                                                 : std::nullopt;
                }
            } else {
                j_at = std::nullopt;
            }
        }
        if (j_at) out += conversion == 'r' ? repr(*j_at) : conversion == 'a' ? ascii_repr(*j_at) : to_str(*j_at);
        else if (conversion == 'r' || conversion == 'a') out += "Undefined";
        i = j;
    }
    return out;
}

}  // namespace

bool apply_test(Test t, const Value& subject, const Args& args) {
    bool defined = !subject.is_undefined();
    const json& j = subject.is_json() ? subject.j() : json();
    bool js = subject.is_json();
    switch (t) {
    case Test::Defined: return defined;
    case Test::Undefined: return !defined;
    case Test::None: return js && j.is_null();
    case Test::String: return js && j.is_string();
    case Test::Number: return js && (j.is_number() || j.is_boolean());  // Python: bool is a Number
    case Test::Integer: return js && j.is_number_integer();
    case Test::Float: return js && j.is_number_float();
    case Test::Boolean: return js && j.is_boolean();
    case Test::True: return js && j.is_boolean() && j.get<bool>();
    case Test::False: return js && j.is_boolean() && !j.get<bool>();
    case Test::Mapping: return (js && j.is_object()) ;
    // Jinja2's Undefined can be iterated and has a length, so it passes both.
    case Test::Iterable: return !defined || (js && (j.is_string() || j.is_array() || j.is_object()));
    case Test::Sequence: return !defined || (js && (j.is_string() || j.is_array() || j.is_object()));
    case Test::Callable: return subject.kind() == Value::Kind::Macro || subject.kind() == Value::Kind::Builtin;
    case Test::Lower: return js && j.is_string() && text::is_lower(j.get<std::string>());
    case Test::Upper: return js && j.is_string() && text::is_upper(j.get<std::string>());
    case Test::Even:
    case Test::Odd: {
        long n = need_int(subject, "is even/odd");
        return (((n % 2) + 2) % 2 == 0) == (t == Test::Even);
    }
    case Test::Divisibleby: {
        long d = need_int(args.get(0, "num"), "divisibleby");
        if (d == 0) throw EvalError("integer modulo by zero in 'divisibleby'");
        return need_int(subject, "divisibleby") % d == 0;
    }
    case Test::In: return contains(need_json(args.get(0, "seq")), need_json(subject));
    case Test::Eq:
    case Test::Ne:
        if (!defined || args.get(0, "other").is_undefined()) {  // Undefined equals only Undefined
            bool eq = !defined && args.get(0, "other").is_undefined();
            return eq == (t == Test::Eq);
        }
        return compare_test(t, need_json(subject), need_json(args.get(0, "other")));
    case Test::Lt:
    case Test::Le:
    case Test::Gt:
    case Test::Ge: return compare_test(t, need_json(subject), need_json(args.get(0, "other")));
    }
    return false;
}

// The bytes of s[start:end] for the methods that take a start and an end after their first
// argument (positional only: absent or None, else ints; an Undefined passed fails, as in
// Python). start and end count code points, negative ones from the end, as CPython adjusts them;
// a start past the end gives `none`: nothing matches there, not even "".
struct Span {
    size_t lo = 0, hi = 0;
    bool none = false;
};
static Span span_of(const std::string& s, const Args& args, const std::string& name) {
    Span span{0, s.size(), false};
    const Value &from = args.get(1, "start"), &to = args.get(2, "end");
    auto absent = [&](const Value& v, size_t i) { return v.is_undefined() ? i >= args.positional.size() : need_json(v).is_null(); };
    if (absent(from, 1) && absent(to, 2)) return span;
    const int64_t n = static_cast<int64_t>(text::length(s));
    auto index = [&](const Value& v, size_t i, int64_t dflt) -> int64_t {
        if (absent(v, i)) return dflt;
        const int64_t k = need_int(v, name.c_str());
        return k < 0 ? std::max<int64_t>(k + n, 0) : k;
    };
    const int64_t start = index(from, 1, 0), end = std::min(index(to, 2, n), n);
    span.none = start > end;
    if (!span.none) span.lo = text::byte_offset(s, (size_t)start), span.hi = text::byte_offset(s, (size_t)end);
    return span;
}

// What Python's str and dict methods take: positional arguments from min to max (max < 0: any),
// keywords only where Python names them (split and rsplit: sep, maxsplit; format: its fields).
static void check_arity(Method m, const std::string& name, const Args& args) {
    int lo = 0, hi = 0;
    std::vector<const char*> keywords;
    switch (m) {
    case Method::Strip:
    case Method::Lstrip:
    case Method::Rstrip: hi = 1; break;
    case Method::Split:
    case Method::Rsplit: hi = 2, keywords = {"sep", "maxsplit"}; break;
    case Method::Startswith:
    case Method::Endswith:
    case Method::Find:
    case Method::Rfind:
    case Method::Count: lo = 1, hi = 3; break;
    case Method::Replace: lo = 2, hi = 3; break;
    case Method::Join: lo = hi = 1; break;
    case Method::Get: lo = 1, hi = 2; break;
    case Method::Format: return;
    default: break;  // upper, lower, title, capitalize, items, keys, values: none
    }
    for (size_t i = 0; i < args.keyword.size(); ++i) {
        const std::string& k = args.keyword[i].first;
        if (keywords.empty()) throw EvalError(name + "() takes no keyword arguments");
        const auto at = std::find_if(keywords.begin(), keywords.end(), [&](const char* w) { return k == w; });
        if (at == keywords.end()) throw EvalError(name + "() got an unexpected keyword argument '" + k + "'");
        if (static_cast<size_t>(at - keywords.begin()) < args.positional.size())
            throw EvalError("argument for " + name + "() given by name ('" + k + "') and position (" +
                            std::to_string(at - keywords.begin() + 1) + ")");
    }
    const int given = static_cast<int>(args.positional.size() + args.keyword.size());
    auto count = [](int n) { return std::to_string(n) + (n == 1 ? " argument" : " arguments"); };
    if (given < lo || given > hi)
        throw EvalError(name + "() takes " +
                        (hi == 0 ? std::string("no arguments") : lo == hi ? "exactly " + count(hi) : given < lo ? "at least " + count(lo) : "at most " + count(hi)) +
                        " (" + std::to_string(given) + " given)");
}

// dict.get/items/keys/values, also on namespace objects.
static Value call_dict_method(Method m, const std::string& name, const Value& subject, const json& j, const Args& args) {
    switch (m) {
    case Method::Get: {
        const Value& key = args.get(0, "key");
        const json& k = need_json(key);
        if (k.is_string() && j.contains(k.get_ref<const std::string&>()))
            return Value::borrowed(j[k.get_ref<const std::string&>()]);
        const Value& d = args.get(1, "default");
        return d.is_undefined() ? Value::owned(nullptr) : d;
    }
    case Method::Items: {
        json out = json::array();
        for (auto it = j.begin(); it != j.end(); ++it) out.push_back(json::array({it.key(), it.value()}));
        return Value::owned(out);
    }
    case Method::Keys: {
        json out = json::array();
        for (auto it = j.begin(); it != j.end(); ++it) out.push_back(it.key());
        return Value::owned(out);
    }
    case Method::Values: {
        json out = json::array();
        for (auto it = j.begin(); it != j.end(); ++it) out.push_back(it.value());
        return Value::owned(out);
    }
    default: break;
    }
    throw EvalError("'" + type_name(subject) + "' object has no method '" + name + "'");
}

// Python's str methods.
static Value call_string_method(Method m, const std::string& name, const Value& subject, const json& j,
                                const Args& args) {
    auto opt_str = [&](size_t i, const char* key, std::string& store) -> const std::string* {
        const Value& v = args.get(i, key);
        if (v.is_undefined() || need_json(v).is_null()) return nullptr;
        store = need_str(v, name.c_str());
        return &store;
    };
    const std::string& s = j.get_ref<const std::string&>();
    std::string tmp;
    switch (m) {
    case Method::Strip: return Value::owned(text::strip(s, opt_str(0, "chars", tmp), true, true));
    case Method::Lstrip: return Value::owned(text::strip(s, opt_str(0, "chars", tmp), true, false));
    case Method::Rstrip: return Value::owned(text::strip(s, opt_str(0, "chars", tmp), false, true));
    case Method::Upper: return Value::owned(text::upper(s));
    case Method::Lower: return Value::owned(text::lower(s));
    case Method::Title: return Value::owned(text::title_method(s));
    case Method::Capitalize: return Value::owned(text::capitalize(s));
    case Method::Split:
    case Method::Rsplit: {
        const Value& n = args.get(1, "maxsplit");
        try {
            return Value::owned(text::split(s, opt_str(0, "sep", tmp), n.is_undefined() ? -1 : need_int(n, "split"),
                                            m == Method::Rsplit));
        } catch (const std::invalid_argument& e) {
            throw EvalError(e.what());
        }
    }
    case Method::Startswith:
    case Method::Endswith: {
        const json& p = need_json(args.get(0, "prefix"));
        const Span span = span_of(s, args, name);
        // A tuple's items are checked as they are reached: ('a', 1) matches 'abc', as in Python.
        for (const json& o : p.is_array() ? p : json::array({p})) {
            if (!o.is_string()) throw EvalError(name + " needs a string or a tuple of strings");
            const std::string& x = o.get_ref<const std::string&>();
            if (!span.none && x.size() <= span.hi - span.lo &&
                s.compare(m == Method::Startswith ? span.lo : span.hi - x.size(), x.size(), x) == 0)
                return Value::owned(true);
        }
        return Value::owned(false);
    }
    case Method::Replace: {
        const Value& n = args.get(2, "count");
        return Value::owned(replace_within_limit(s, need_str(args.get(0, "old"), "replace"), need_str(args.get(1, "new"), "replace"),
                                                 n.is_undefined() ? -1 : need_int(n, "replace")));
    }
    case Method::Find:
    case Method::Rfind: {
        const std::string& sub = need_str(args.get(0, "sub"), name.c_str());
        const Span span = span_of(s, args, name);
        if (span.none || sub.size() > span.hi - span.lo) return Value::owned(-1);
        const std::string_view in(s.data() + span.lo, span.hi - span.lo);
        const size_t pos = m == Method::Find ? in.find(sub) : in.rfind(sub);
        return Value::owned(pos == std::string::npos ? -1 : static_cast<int64_t>(text::length(s.substr(0, span.lo + pos))));
    }
    case Method::Count: {
        const std::string& sub = need_str(args.get(0, "sub"), "count");
        const Span span = span_of(s, args, name);
        return Value::owned(span.none ? 0 : text::count(s.substr(span.lo, span.hi - span.lo), sub));
    }
    case Method::Join: {
        std::string out;
        bool first = true;
        for (const json& item : to_list(args.get(0, "iterable"))) {
            if (!item.is_string()) throw EvalError("str.join: expected str instance, " + type_name(item) + " found");
            out += (first ? "" : s) + item.get<std::string>();
            first = false;
        }
        return Value::owned(out);
    }
    case Method::Format: return Value::owned(python_format(s, args));
    default: break;
    }
    throw EvalError("'" + type_name(subject) + "' object has no method '" + name + "'");
}

Value call_method(Method m, const std::string& name, const Value& subject, const Args& args) {
    const json& j = need_json(subject);
    const bool dict = j.is_object() || subject.kind() == Value::Kind::Namespace;
    const bool dict_method = m == Method::Get || m == Method::Items || m == Method::Keys || m == Method::Values;
    if ((dict && dict_method) || (j.is_string() && !dict_method)) check_arity(m, name, args);
    if (dict) return call_dict_method(m, name, subject, j, args);
    if (j.is_string()) return call_string_method(m, name, subject, j, args);
    throw EvalError("'" + type_name(subject) + "' object has no method '" + name + "'");
}

}  // namespace tpx::chat
