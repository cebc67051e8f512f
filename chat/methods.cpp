// Jinja2's tests ("x is string") and the Python str/dict methods templates call
// ("s.startswith(p)", "d.get(k)"). Mutating methods (append, update, pop) are not here: HF's
// ImmutableSandboxedEnvironment refuses them too.
#include <algorithm>
#include <cmath>

#include "chat/builtins.h"
#include "chat/conversions.h"
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
static Span resolve_span(const std::string& s, const Args& args, const std::string& name) {
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
    if (!span.none) {
        span.lo = text::byte_offset(s, (size_t)start);
        span.hi = text::byte_offset(s, (size_t)end);
    }
    return span;
}

// What one of Python's str or dict methods takes: from `least` to `most` arguments, keywords only
// those named (split and rsplit: sep, maxsplit).
struct Arity {
    int least = 0, most = 0;
    std::vector<const char*> keywords;
};

static Arity look_up_arity(Method m) {
    switch (m) {
    case Method::Strip:
    case Method::Lstrip:
    case Method::Rstrip: return {0, 1, {}};
    case Method::Split:
    case Method::Rsplit: return {0, 2, {"sep", "maxsplit"}};
    case Method::Startswith:
    case Method::Endswith:
    case Method::Find:
    case Method::Rfind:
    case Method::Count: return {1, 3, {}};
    case Method::Replace: return {2, 3, {}};
    case Method::Join: return {1, 1, {}};
    case Method::Get: return {1, 2, {}};
    default: return {};  // upper, lower, title, capitalize, items, keys, values: none
    }
}

// Refuses a call Python would: a keyword the method does not name (or one given by position
// too), or too few or too many arguments. format takes any (its named fields).
static void check_arity(Method m, const std::string& name, const Args& args) {
    if (m == Method::Format) return;
    const Arity a = look_up_arity(m);
    for (const auto& keyword : args.keyword) {
        const std::string& k = keyword.first;
        if (a.keywords.empty()) throw EvalError(name + "() takes no keyword arguments");
        const auto at = std::find_if(a.keywords.begin(), a.keywords.end(), [&](const char* w) { return k == w; });
        if (at == a.keywords.end()) throw EvalError(name + "() got an unexpected keyword argument '" + k + "'");
        const size_t position = static_cast<size_t>(at - a.keywords.begin());
        if (position < args.positional.size())
            throw EvalError("argument for " + name + "() given by name ('" + k + "') and position (" + std::to_string(position + 1) + ")");
    }
    const int given = static_cast<int>(args.positional.size() + args.keyword.size());
    if (given >= a.least && given <= a.most) return;
    auto count = [](int n) { return std::to_string(n) + (n == 1 ? " argument" : " arguments"); };
    std::string want = "at most " + count(a.most);
    if (a.most == 0) want = "no arguments";
    else if (a.least == a.most) want = "exactly " + count(a.most);
    else if (given < a.least) want = "at least " + count(a.least);
    throw EvalError(name + "() takes " + want + " (" + std::to_string(given) + " given)");
}

// dict.get/items/keys/values.
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

// Whether the call gave argument i (by position, or by keyword as `name`): an Undefined given
// is an error in Python, where one omitted takes the default.
static bool passed(const Args& args, size_t i, const char* name) {
    if (i < args.positional.size()) return true;
    return std::any_of(args.keyword.begin(), args.keyword.end(), [&](const auto& kw) { return kw.first == name; });
}

// Python's str methods.
static Value call_string_method(Method m, const std::string& name, const Value& subject, const json& j,
                                const Args& args) {
    auto opt_str = [&](size_t i, const char* key, std::string& store) -> const std::string* {
        const Value& v = args.get(i, key);
        if (v.is_undefined() && passed(args, i, key)) fail_undefined(v);  // Python raises on an Undefined given
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
            return Value::owned(text::split(s, opt_str(0, "sep", tmp), passed(args, 1, "maxsplit") ? need_int(n, "split") : -1,
                                            m == Method::Rsplit));
        } catch (const std::invalid_argument& e) {
            throw EvalError(e.what());
        }
    }
    case Method::Startswith:
    case Method::Endswith: {
        const json& p = need_json(args.get(0, "prefix"));
        const Span span = resolve_span(s, args, name);
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
                                                 passed(args, 2, "count") ? need_int(n, "replace") : -1));
    }
    case Method::Find:
    case Method::Rfind: {
        const std::string& sub = need_str(args.get(0, "sub"), name.c_str());
        const Span span = resolve_span(s, args, name);
        if (span.none || sub.size() > span.hi - span.lo) return Value::owned(-1);
        const std::string_view in(s.data() + span.lo, span.hi - span.lo);
        const size_t pos = m == Method::Find ? in.find(sub) : in.rfind(sub);
        return Value::owned(pos == std::string::npos ? -1 : static_cast<int64_t>(text::length(s.substr(0, span.lo + pos))));
    }
    case Method::Count: {
        const std::string& sub = need_str(args.get(0, "sub"), "count");
        const Span span = resolve_span(s, args, name);
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
    case Method::Format: return Value::owned(format_fields(s, args));
    default: break;
    }
    throw EvalError("'" + type_name(subject) + "' object has no method '" + name + "'");
}

Value call_method(Method m, const std::string& name, const Value& subject, const Args& args) {
    const json& j = need_json(subject);
    if (subject.kind() == Value::Kind::Namespace)  // Jinja2's Namespace holds attributes, no dict methods
        throw EvalError("'Namespace' object has no method '" + name + "'");
    const bool dict = j.is_object();
    const bool dict_method = m == Method::Get || m == Method::Items || m == Method::Keys || m == Method::Values;
    if ((dict && dict_method) || (j.is_string() && !dict_method)) check_arity(m, name, args);
    if (dict) return call_dict_method(m, name, subject, j, args);
    if (j.is_string()) return call_string_method(m, name, subject, j, args);
    throw EvalError("'" + type_name(subject) + "' object has no method '" + name + "'");
}

}  // namespace tpx::chat
