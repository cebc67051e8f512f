// Filters, tests and methods of HF's chat-template environment (Jinja2 3.x defaults plus
// transformers' tojson). Semantics follow Jinja2's Python source: e.g. |sort and |dictsort
// ignore case by default, |indent skips the first line, |length counts code points.
#include "chat/builtins.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>

#include "chat/conversions.h"
#include "chat/text.h"

namespace tpx::chat {
namespace {

const std::map<std::string, Filter> kFilters = {
    {"abs", Filter::Abs}, {"capitalize", Filter::Capitalize}, {"default", Filter::Default},
    {"d", Filter::Default}, {"dictsort", Filter::Dictsort}, {"escape", Filter::Escape},
    {"e", Filter::Escape}, {"first", Filter::First}, {"float", Filter::Float},
    {"indent", Filter::Indent}, {"int", Filter::Int}, {"items", Filter::Items},
    {"join", Filter::Join}, {"last", Filter::Last}, {"length", Filter::Length},
    {"count", Filter::Length}, {"list", Filter::List}, {"lower", Filter::Lower},
    {"map", Filter::Map}, {"max", Filter::Max}, {"min", Filter::Min}, {"reject", Filter::Reject},
    {"rejectattr", Filter::Rejectattr}, {"replace", Filter::Replace}, {"reverse", Filter::Reverse},
    {"round", Filter::Round}, {"safe", Filter::Safe}, {"select", Filter::Select},
    {"selectattr", Filter::Selectattr}, {"sort", Filter::Sort}, {"string", Filter::String},
    {"sum", Filter::Sum}, {"title", Filter::Title}, {"tojson", Filter::Tojson},
    {"trim", Filter::Trim}, {"unique", Filter::Unique}, {"upper", Filter::Upper},
    {"wordcount", Filter::Wordcount}};

const std::map<std::string, Test> kTests = {
    {"boolean", Test::Boolean}, {"callable", Test::Callable}, {"defined", Test::Defined},
    {"divisibleby", Test::Divisibleby}, {"eq", Test::Eq}, {"equalto", Test::Eq}, {"==", Test::Eq},
    {"even", Test::Even}, {"false", Test::False}, {"float", Test::Float}, {"ge", Test::Ge},
    {">=", Test::Ge}, {"gt", Test::Gt}, {">", Test::Gt}, {"greaterthan", Test::Gt},
    {"in", Test::In}, {"integer", Test::Integer}, {"iterable", Test::Iterable}, {"le", Test::Le},
    {"<=", Test::Le}, {"lower", Test::Lower}, {"lt", Test::Lt}, {"<", Test::Lt},
    {"lessthan", Test::Lt}, {"mapping", Test::Mapping}, {"ne", Test::Ne}, {"!=", Test::Ne},
    {"none", Test::None}, {"number", Test::Number}, {"odd", Test::Odd},
    {"sequence", Test::Sequence}, {"string", Test::String}, {"true", Test::True},
    {"undefined", Test::Undefined}, {"upper", Test::Upper}};

const std::map<std::string, Method> kMethods = {
    {"capitalize", Method::Capitalize}, {"count", Method::Count}, {"endswith", Method::Endswith},
    {"find", Method::Find}, {"format", Method::Format}, {"get", Method::Get},
    {"items", Method::Items}, {"join", Method::Join}, {"keys", Method::Keys},
    {"lower", Method::Lower}, {"lstrip", Method::Lstrip}, {"replace", Method::Replace},
    {"rfind", Method::Rfind}, {"rsplit", Method::Rsplit}, {"rstrip", Method::Rstrip},
    {"split", Method::Split}, {"startswith", Method::Startswith}, {"strip", Method::Strip},
    {"title", Method::Title}, {"upper", Method::Upper}, {"values", Method::Values}};

const Value kUndefined;

// Jinja2's attribute lookup for map/selectattr/sort: "a.b" walks nested keys, missing is Undefined.
Value attribute_of(const json& item, const std::string& path) {
    const json* cur = &item;
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t dot = path.find('.', pos);
        std::string key = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
        if (cur->is_object() && cur->contains(key)) cur = &(*cur)[key];
        else if (cur->is_array() && !key.empty() && std::all_of(key.begin(), key.end(), ::isdigit) &&
                 std::stoul(key) < cur->size()) cur = &(*cur)[std::stoul(key)];
        else return Value::undefined("'" + type_name(*cur) + " object' has no attribute '" + key + "'");
        if (dot == std::string::npos) break;
        pos = dot + 1;
    }
    return Value::borrowed(*cur);
}

// Jinja2's sort key: strings compare case-folded unless case_sensitive.
json sort_key(const json& j, bool case_sensitive) {
    return (!case_sensitive && j.is_string()) ? json(text::lower(j.get<std::string>())) : j;
}

void sort_json(std::vector<json>& items, bool case_sensitive, bool reverse, const std::string* attribute) {
    auto key = [&](const json& j) {
        return sort_key(attribute ? need_json(attribute_of(j, *attribute)) : j, case_sensitive);
    };
    try {
        std::stable_sort(items.begin(), items.end(), [&](const json& a, const json& b) {
            return reverse ? less(key(b), key(a)) : less(key(a), key(b));
        });
    } catch (const std::invalid_argument& e) {
        throw EvalError(e.what());
    }
}

// select/reject and selectattr/rejectattr: keep items whose test (or truth) equals `keep`.
json filter_items(const Value& subject, const Args& args, bool by_attr, bool keep) {
    json items = to_list(subject);
    json out = json::array();
    size_t next = 0;
    std::string attr;
    if (by_attr) attr = need_str(args.get(next++, "attribute"), "selectattr");
    bool has_test = args.positional.size() > next;
    Test test = Test::Defined;
    Args test_args;
    if (has_test) {
        const std::string& name = need_str(args.positional[next], "select");
        if (!find_test(name, test)) throw EvalError("no test named '" + name + "'");
        test_args.positional.assign(args.positional.begin() + next + 1, args.positional.end());
    }
    for (const json& item : items) {
        Value v = by_attr ? attribute_of(item, attr) : Value::borrowed(item);
        bool ok = has_test ? apply_test(test, v, test_args) : truthy(v);
        if (ok == keep) out.push_back(item);
    }
    return out;
}

// Python's " " * n: none below 0; past kMaxBuilt refused, as every string a filter makes.
size_t indent_width(int64_t n) {
    if (n > (int64_t)kMaxBuilt) throw EvalError("indent width " + std::to_string(n) + " is more than " + std::to_string(kMaxBuilt));
    return n < 0 ? 0 : (size_t)n;
}

std::string indent_text(std::string s, const Value& width_v, bool first, bool blank) {
    std::string pad = width_v.is_undefined() ? "    "
                      : need_json(width_v).is_string() ? need_json(width_v).get<std::string>()
                      : std::string(indent_width(need_int(width_v, "indent")), ' ');
    const uint64_t line_count = (uint64_t)std::count(s.begin(), s.end(), '\n') + 1;
    if (!pad.empty() && line_count > (kMaxBuilt - std::min<uint64_t>(s.size(), kMaxBuilt)) / pad.size())
        throw EvalError("indent would make more than " + std::to_string(kMaxBuilt) + " bytes (" + std::to_string(line_count) + " lines)");
    s += "\n";  // Jinja2 appends a newline so that splitlines() sees the last line
    std::vector<std::string> lines;
    size_t pos = 0;
    for (size_t f; (f = s.find('\n', pos)) != std::string::npos; pos = f + 1) lines.push_back(s.substr(pos, f - pos));
    std::string rv;
    for (size_t i = 0; i < lines.size(); ++i) {
        if (i == 0) { rv = lines[0]; continue; }
        rv += "\n" + ((blank || !lines[i].empty()) ? pad : "") + lines[i];
    }
    return first ? pad + rv : rv;
}

std::string html_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        switch (c) {
        case '&': o += "&amp;"; break;
        case '<': o += "&lt;"; break;
        case '>': o += "&gt;"; break;
        case '"': o += "&#34;"; break;
        case '\'': o += "&#39;"; break;
        default: o += c;
        }
    }
    return o;
}

void dump_string(const std::string& s, std::string& out) {
    out += '"';
    for (unsigned char c : s) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        default:
            if (c < 0x20) {
                char b[8];
                std::snprintf(b, sizeof b, "\\u%04x", c);
                out += b;
            } else {
                out += static_cast<char>(c);
            }
        }
    }
    out += '"';
}

void dump(const json& j, int indent, int depth, const std::string& item_sep, const std::string& key_sep,
          bool sort_keys, std::string& out) {
    if (depth > kMaxValueDepth) throw EvalError("a value nested deeper than " + std::to_string(kMaxValueDepth) + " levels");
    std::string nl = indent >= 0 ? "\n" + std::string(static_cast<size_t>(indent) * (depth + 1), ' ') : "";
    std::string close = indent >= 0 ? "\n" + std::string(static_cast<size_t>(indent) * depth, ' ') : "";
    switch (j.type()) {
    case json::value_t::null: out += "null"; return;
    case json::value_t::boolean: out += j.get<bool>() ? "true" : "false"; return;
    case json::value_t::number_float: {
        double d = j.get<double>();
        out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : float_repr(d);
        return;
    }
    case json::value_t::string: dump_string(j.get_ref<const std::string&>(), out); return;
    case json::value_t::array:
        if (j.empty()) { out += "[]"; return; }
        out += "[" + nl;
        for (size_t i = 0; i < j.size(); ++i) {
            if (i) out += item_sep + nl;
            dump(j[i], indent, depth + 1, item_sep, key_sep, sort_keys, out);
        }
        out += close + "]";
        return;
    case json::value_t::object: {
        if (j.empty()) { out += "{}"; return; }
        std::vector<std::string> keys;
        for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
        if (sort_keys) std::sort(keys.begin(), keys.end());
        out += "{" + nl;
        for (size_t i = 0; i < keys.size(); ++i) {
            if (i) out += item_sep + nl;
            dump_string(keys[i], out);
            out += key_sep;
            dump(j[keys[i]], indent, depth + 1, item_sep, key_sep, sort_keys, out);
        }
        out += close + "}";
        return;
    }
    default: out += j.dump(); return;
    }
}

// Python's int() of a float: NaN is not a number (Jinja2's int filter then gives its default),
// infinities and values past 64 bits are refused (Python would make a larger integer).
std::optional<int64_t> truncate_to_int(double d, const std::string& shown) {
    if (std::isnan(d)) return std::nullopt;
    if (!(d > -9223372036854775808.0 && d < 9223372036854775808.0))
        throw EvalError("cannot convert " + shown + " to an integer of 64 bits (Python's integers are unbounded)");
    return (int64_t)std::trunc(d);
}

// Jinja2's int(value, default, base) and float(value, default): a string through Python's
// int(s, base), else int(float(s)); anything unreadable gives the default.
json to_number(const Value& v, bool as_float, const Value& fallback, int64_t base = 10) {
    const json& j = v.is_undefined() ? json() : v.j();
    const json dflt = fallback.is_undefined() ? (as_float ? json(0.0) : json(0)) : fallback.j();
    if (j.is_number() || j.is_boolean()) {
        double d = j.is_boolean() ? j.get<bool>() : j.get<double>();
        if (as_float) return d;
        if (j.is_number_integer() || j.is_boolean()) return j.is_boolean() ? json((int64_t)j.get<bool>()) : json(j.get<int64_t>());
        const std::optional<int64_t> n = truncate_to_int(d, j.dump());
        return n ? json(*n) : dflt;
    }
    if (j.is_string()) {
        const std::string& raw = j.get_ref<const std::string&>();
        std::string s = text::strip(raw, nullptr, true, true);
        // int() and float() strip ASCII whitespace but \x1c to \x1f (which str.strip takes), and
        // stop at one of those: the number is then not read.
        const size_t lead = s.empty() ? raw.size() : raw.find(s), trail = std::min(raw.size(), lead + s.size());
        auto separator = [](char c) { return c >= '\x1c' && c <= '\x1f'; };
        if (std::any_of(raw.begin(), raw.begin() + lead, separator) || std::any_of(raw.begin() + trail, raw.end(), separator)) return dflt;
        if (!as_float) {
            if (const std::optional<int64_t> n = parse_int(s, base)) return *n;
        }
        if (const std::optional<double> d = parse_float(s)) {  // Jinja2's int() also reads "3.7" as 3
            if (as_float) return *d;
            if (std::isinf(*d)) return dflt;  // int(float('inf')) raises OverflowError, which Jinja2 catches here
            const std::optional<int64_t> n = truncate_to_int(*d, "'" + s + "'");
            return n ? json(*n) : dflt;
        }
    }
    return dflt;
}

}  // namespace

const std::string& need_str(const Value& v, const char* what) {
    const json& j = need_json(v);
    if (!j.is_string()) throw EvalError(std::string(what) + " needs a string, got " + type_name(j));
    return j.get_ref<const std::string&>();
}

long need_int(const Value& v, const char* what) {
    const json& j = need_json(v);
    if (j.is_boolean()) return j.get<bool>();
    if (!j.is_number_integer()) throw EvalError(std::string(what) + " needs an integer, got " + type_name(j));
    return static_cast<long>(j.get<int64_t>());
}

const Value& Args::get(size_t i, const char* name) const {
    if (i < positional.size()) return positional[i];
    for (const auto& kw : keyword)
        if (kw.first == name) return kw.second;
    return kUndefined;
}

bool find_filter(const std::string& name, Filter& out) {
    auto it = kFilters.find(name);
    if (it == kFilters.end()) return false;
    out = it->second;
    return true;
}
bool find_test(const std::string& name, Test& out) {
    auto it = kTests.find(name);
    if (it == kTests.end()) return false;
    out = it->second;
    return true;
}
bool find_method(const std::string& name, Method& out) {
    auto it = kMethods.find(name);
    if (it == kMethods.end()) return false;
    out = it->second;
    return true;
}

void fail_undefined(const Value& v) {
    const std::string& n = v.undefined_name();
    throw EvalError(n.empty() ? "value is undefined" : n.find(' ') == std::string::npos ? "'" + n + "' is undefined" : n);
}

const json& need_json(const Value& v) {
    if (v.is_undefined()) fail_undefined(v);
    if (v.kind() == Value::Kind::Macro || v.kind() == Value::Kind::Builtin) throw EvalError("a function is not a value here");
    return v.j();
}

json to_list(const Value& v) {
    if (v.is_undefined()) return json::array();
    const json& j = need_json(v);
    if (j.is_array()) return j;
    json out = json::array();
    if (j.is_object()) {
        for (auto it = j.begin(); it != j.end(); ++it) out.push_back(it.key());
    } else if (j.is_string()) {
        std::vector<char32_t> cps = text::decode(j.get_ref<const std::string&>());
        for (size_t i = 0; i < cps.size(); ++i) out.push_back(text::encode(cps, i, i + 1));
    } else {
        throw EvalError("'" + type_name(j) + "' object is not iterable");
    }
    return out;
}

std::string dump_json(const json& j, int indent, const std::string& item_sep, const std::string& key_sep,
                      bool sort_keys) {
    std::string out;
    dump(j, indent, 0, item_sep, key_sep, sort_keys, out);
    return out;
}

}  // namespace tpx::chat

namespace tpx::chat {

// Filters over sequences and mappings (first, join, sort, map, selectattr, ...).
static Value apply_sequence_filter(Filter f, const Value& subject, const Args& args) {
    switch (f) {
    case Filter::First:
    case Filter::Last: {
        json items = to_list(subject);
        if (items.empty()) return Value::undefined("no first item, sequence was empty");
        return Value::owned(f == Filter::First ? items.front() : items.back());
    }
    case Filter::Join: {
        const Value& sep_v = args.get(0, "d");
        std::string sep = sep_v.is_undefined() ? "" : to_str(sep_v);
        const Value& attr = args.get(1, "attribute");
        std::string out;
        bool first = true;
        for (const json& item : to_list(subject)) {
            out += (first ? "" : sep) + (attr.is_undefined() ? to_str(item) : to_str(attribute_of(item, need_str(attr, "join"))));
            first = false;
        }
        return Value::owned(out);
    }
    case Filter::List: return Value::owned(to_list(subject));
    case Filter::Items: {
        if (subject.is_undefined()) return Value::owned(json::array());
        const json& j = need_json(subject);
        if (!j.is_object()) throw EvalError("|items needs a mapping, got " + type_name(j));
        json out = json::array();
        for (auto it = j.begin(); it != j.end(); ++it) out.push_back(json::array({it.key(), it.value()}));
        return Value::owned(out);
    }
    case Filter::Dictsort: {
        const json& j = need_json(subject);
        if (!j.is_object()) throw EvalError("|dictsort needs a mapping, got " + type_name(j));
        bool by_value = !args.get(1, "by").is_undefined() && need_str(args.get(1, "by"), "dictsort") == "value";
        std::vector<json> pairs;
        for (auto it = j.begin(); it != j.end(); ++it) pairs.push_back(json::array({it.key(), it.value()}));
        std::string key = by_value ? "1" : "0";
        sort_json(pairs, truthy(args.get(0, "case_sensitive")), truthy(args.get(2, "reverse")), &key);
        return Value::owned(json(pairs));
    }
    case Filter::Sort: {
        json l = to_list(subject);
        std::vector<json> items(l.begin(), l.end());
        const Value& attr = args.get(2, "attribute");
        std::string a = attr.is_undefined() ? "" : need_str(attr, "sort");
        sort_json(items, truthy(args.get(1, "case_sensitive")), truthy(args.get(0, "reverse")),
                  attr.is_undefined() ? nullptr : &a);
        return Value::owned(json(items));
    }
    case Filter::Reverse: {
        if (subject.is_json() && subject.j().is_string()) {
            std::vector<char32_t> cps = text::decode(subject.j().get<std::string>());
            std::reverse(cps.begin(), cps.end());
            return Value::owned(text::encode(cps));
        }
        json l = to_list(subject);
        std::reverse(l.begin(), l.end());
        return Value::owned(l);
    }
    case Filter::Unique: {
        json out = json::array();
        for (const json& item : to_list(subject)) {
            bool seen = false;
            for (const json& o : out) seen = seen || equal(sort_key(o, false), sort_key(item, false));
            if (!seen) out.push_back(item);
        }
        return Value::owned(out);
    }
    case Filter::Min:
    case Filter::Max: {
        json l = to_list(subject);
        if (l.empty()) return Value::undefined("no min/max item, sequence was empty");
        std::vector<json> items(l.begin(), l.end());
        sort_json(items, truthy(args.get(0, "case_sensitive")), false, nullptr);
        return Value::owned(f == Filter::Min ? items.front() : items.back());
    }
    case Filter::Sum: {
        const Value& start = args.get(1, "start");
        json total = start.is_undefined() ? json(0) : need_json(start);
        const Value& attr = args.get(0, "attribute");
        for (const json& item : to_list(subject)) {
            const json& v = attr.is_undefined() ? item : need_json(attribute_of(item, need_str(attr, "sum")));
            if (!v.is_number() || !total.is_number()) throw EvalError("|sum needs numbers, got " + type_name(v));
            if (v.is_number_float() || total.is_number_float()) total = total.get<double>() + v.get<double>();
            else {
                int64_t sum = 0;
                if (__builtin_add_overflow(total.get<int64_t>(), v.get<int64_t>(), &sum))
                    throw EvalError("|sum: " + std::to_string(total.get<int64_t>()) + " + " + std::to_string(v.get<int64_t>()) + " is past 64 bits");
                total = sum;
            }
        }
        return Value::owned(total);
    }
    case Filter::Map: {
        json out = json::array();
        const Value& attr = args.get(99, "attribute");
        if (!attr.is_undefined()) {
            const Value& dflt = args.get(99, "default");
            for (const json& item : to_list(subject)) {
                Value v = attribute_of(item, need_str(attr, "map"));
                out.push_back(v.is_undefined() ? (dflt.is_undefined() ? json() : need_json(dflt)) : v.j());
            }
            return Value::owned(out);
        }
        Filter inner;
        const std::string& name = need_str(args.get(0, "filter"), "map");
        if (!find_filter(name, inner)) throw EvalError("no filter named '" + name + "'");
        Args rest;
        rest.positional.assign(args.positional.begin() + 1, args.positional.end());
        rest.keyword = args.keyword;
        for (const json& item : to_list(subject)) out.push_back(need_json(apply_filter(inner, Value::borrowed(item), rest)));
        return Value::owned(out);
    }
    case Filter::Select: return Value::owned(filter_items(subject, args, false, true));
    case Filter::Reject: return Value::owned(filter_items(subject, args, false, false));
    case Filter::Selectattr: return Value::owned(filter_items(subject, args, true, true));
    case Filter::Rejectattr: return Value::owned(filter_items(subject, args, true, false));
    default: break;
    }
    throw EvalError("unknown filter");
}

// Filters over one value: text, numbers, defaults and tojson.
static Value apply_value_filter(Filter f, const Value& subject, const Args& args) {
    auto str_of = [&]() { return to_str(subject); };
    switch (f) {
    case Filter::Default: {
        bool boolean = truthy(args.get(1, "boolean"));
        bool use_default = subject.is_undefined() || (boolean && !truthy(subject));
        if (!use_default) return subject;
        const Value& d = args.get(0, "default_value");
        return d.is_undefined() ? Value::owned("") : d;
    }
    case Filter::Safe: return subject;
    case Filter::Trim: {
        const Value& chars = args.get(0, "chars");
        std::string c = chars.is_undefined() || need_json(chars).is_null() ? "" : need_str(chars, "trim");
        return Value::owned(text::strip(str_of(), chars.is_undefined() || need_json(chars).is_null() ? nullptr : &c, true, true));
    }
    case Filter::Length:
        if (subject.is_undefined()) return Value::owned(0);
        if (subject.kind() == Value::Kind::Json && subject.j().is_string())
            return Value::owned(text::length(subject.j().get_ref<const std::string&>()));
        if (subject.kind() == Value::Kind::Json && (subject.j().is_array() || subject.j().is_object()))
            return Value::owned(subject.j().size());
        throw EvalError("object of type '" + type_name(subject) + "' has no len()");
    case Filter::Upper: return Value::owned(text::upper(str_of()));
    case Filter::Lower: return Value::owned(text::lower(str_of()));
    case Filter::Capitalize: return Value::owned(text::capitalize(str_of()));
    case Filter::Title: return Value::owned(text::title_filter(str_of()));
    case Filter::String: return Value::owned(str_of());
    case Filter::Escape: return Value::owned(html_escape(str_of()));
    case Filter::Wordcount: return Value::owned(text::word_count(str_of()));
    case Filter::Int: {
        // A base that is not an int raises TypeError inside Jinja2's int, which then reads int(float(s)).
        const Value& base = args.get(1, "base");
        const json& b = base.is_undefined() ? json(10) : need_json(base);
        const int64_t radix = b.is_number_integer() ? b.get<int64_t>() : b.is_boolean() ? b.get<bool>() : -1;
        return Value::owned(to_number(subject, false, args.get(0, "default"), radix));
    }
    case Filter::Float: return Value::owned(to_number(subject, true, args.get(0, "default")));
    case Filter::Abs: {
        const json& j = need_json(subject);
        if (j.is_number_integer() && j.get<int64_t>() == INT64_MIN)
            throw EvalError("integer overflow: abs(" + j.dump() + ") is past 64 bits (Python's integers are unbounded; a template's here are 64-bit)");
        if (j.is_number_integer()) return Value::owned(std::llabs(j.get<int64_t>()));
        if (j.is_number_float()) return Value::owned(std::fabs(j.get<double>()));
        throw EvalError("bad operand type for abs(): '" + type_name(j) + "'");
    }
    case Filter::Round: {
        const json& x = need_json(subject);
        if (!x.is_number() && !x.is_boolean()) throw EvalError("round needs a number, got " + type_name(x));
        const double d = x.is_boolean() ? x.get<bool>() : x.get<double>();
        const int64_t prec = args.get(0, "precision").is_undefined() ? 0 : need_int(args.get(0, "precision"), "round");
        const Value& m = args.get(1, "method");
        std::string method = m.is_undefined() ? "common" : need_str(m, "round");
        if (method != "common" && method != "ceil" && method != "floor") throw EvalError("round's method must be common, ceil or floor");
        const double scale = std::pow(10.0, (double)std::max<int64_t>(std::min<int64_t>(prec, 400), -400));
        if (method == "ceil") return Value::owned(std::ceil(d * scale) / scale);
        if (method == "floor") return Value::owned(std::floor(d * scale) / scale);
        // Python's round(): an int stays an int (a negative precision rounds it to tens,
        // hundreds, ..., ties to even); a float is rounded in decimal, ties to even, as printf
        // rounds the exact binary value; to tens and beyond by the same rule on d / 10^-prec.
        if (x.is_number_integer() || x.is_boolean()) {
            const int64_t v = x.is_boolean() ? x.get<bool>() : x.get<int64_t>();
            if (prec >= 0) return Value::owned(v);
            if (prec <= -19) {  // to 10^19 or more, past 64 bits: 0, unless v rounds up to 10^19
                if (prec == -19 && (v > 5000000000000000000 || v < -5000000000000000000))
                    throw EvalError("integer overflow: round(" + x.dump() + ", -19) is past 64 bits");
                return Value::owned(0);
            }
            int64_t unit = 1;
            for (int64_t k = 0; k < -prec; ++k) unit *= 10;
            int64_t q = v / unit, r = v % unit;
            if (r < 0) --q, r += unit;  // floored
            if (2 * (__int128)r > unit || (2 * (__int128)r == unit && (q & 1))) ++q;
            int64_t out = 0;
            if (__builtin_mul_overflow(q, unit, &out)) throw EvalError("integer overflow: round(" + x.dump() + ", " + std::to_string(prec) + ") is past 64 bits");
            return Value::owned(out);
        }
        if (prec < 0 || !std::isfinite(d)) return Value::owned(std::isfinite(d) ? std::nearbyint(d * scale) / scale : d);
        char buf[512];
        std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::min<int64_t>(prec, 300)), d);
        return Value::owned(std::strtod(buf, nullptr));
    }
    case Filter::Replace: {
        const Value& n = args.get(2, "count");
        return Value::owned(replace_within_limit(str_of(), to_str(args.get(0, "old")), to_str(args.get(1, "new")),
                                                 n.is_undefined() || need_json(n).is_null() ? -1 : need_int(n, "replace")));
    }
    case Filter::Indent:
        return Value::owned(indent_text(str_of(), args.get(0, "width"), truthy(args.get(1, "first")),
                                        truthy(args.get(2, "blank"))));
    case Filter::Tojson: {
        if (truthy(args.get(0, "ensure_ascii"))) throw EvalError("tojson(ensure_ascii=True) is not supported");
        const Value& ind = args.get(1, "indent");
        int indent = ind.is_undefined() || need_json(ind).is_null() ? -1 : static_cast<int>(need_int(ind, "tojson"));
        std::string item_sep = indent >= 0 ? "," : ", ", key_sep = ": ";
        const Value& seps = args.get(2, "separators");
        if (!seps.is_undefined() && !need_json(seps).is_null()) {
            const json& s = need_json(seps);
            if (!s.is_array() || s.size() != 2 || !s[0].is_string() || !s[1].is_string())
                throw EvalError("tojson separators must be two strings");
            item_sep = s[0].get<std::string>();
            key_sep = s[1].get<std::string>();
        }
        if (subject.kind() != Value::Kind::Json && subject.kind() != Value::Kind::Namespace)
            throw EvalError("Object of type " + type_name(subject) + " is not JSON serializable");
        return Value::owned(dump_json(subject.j(), indent, item_sep, key_sep, truthy(args.get(3, "sort_keys"))));
    }
    default: break;
    }
    throw EvalError("unknown filter");
}

std::string replace_within_limit(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
    uint64_t n = text::count(s, from);
    if (count >= 0) n = std::min<uint64_t>(n, (uint64_t)count);
    if (to.size() > from.size() && n > 0 && n > (kMaxBuilt - std::min<uint64_t>(s.size(), kMaxBuilt)) / (to.size() - from.size()))
        throw EvalError("replace would make more than " + std::to_string(kMaxBuilt) + " bytes (" + std::to_string(n) + " replacements)");
    return text::replace(s, from, to, count);
}

Value apply_filter(Filter f, const Value& subject, const Args& args) {
    switch (f) {
    case Filter::First: case Filter::Last: case Filter::Join: case Filter::List: case Filter::Items:
    case Filter::Dictsort: case Filter::Sort: case Filter::Reverse: case Filter::Unique:
    case Filter::Min: case Filter::Max: case Filter::Sum: case Filter::Map: case Filter::Select:
    case Filter::Reject: case Filter::Selectattr: case Filter::Rejectattr:
        return apply_sequence_filter(f, subject, args);
    default: return apply_value_filter(f, subject, args);
    }
}

}  // namespace tpx::chat
