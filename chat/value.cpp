// Python semantics of template values: truth, str(), repr(), ==, < and type names.
// These decide every byte a template prints, so they follow CPython, not JSON or JavaScript.
#include "chat/value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <utility>
#include <vector>

#include "chat/ast.h"
#include "chat/builtins.h"
#include "chat/text.h"

namespace tpx::chat {

Value Value::ns(std::shared_ptr<json> object) {
    Value v;
    v.kind_ = Kind::Namespace;
    v.ns_ = std::move(object);
    return v;
}

Value Value::macro(std::shared_ptr<const Macro> m) {
    Value v;
    v.kind_ = Kind::Macro;
    v.macro_ = std::move(m);
    return v;
}

const json& Value::j() const {
    static const json kNull;
    if (kind_ == Kind::Namespace) return *ns_;
    if (kind_ != Kind::Json) return kNull;
    return ref_ ? *ref_ : own_;
}

Value Value::detach() const {
    if (kind_ != Kind::Json || !ref_) return *this;
    return owned(*ref_);
}

bool truthy(const Value& v) {
    if (v.kind() == Value::Kind::Undefined) return false;
    if (v.kind() != Value::Kind::Json) return true;
    const json& j = v.j();
    switch (j.type()) {
    case json::value_t::null: return false;
    case json::value_t::boolean: return j.get<bool>();
    case json::value_t::number_integer: return j.get<int64_t>() != 0;
    case json::value_t::number_unsigned: return j.get<uint64_t>() != 0;
    case json::value_t::number_float: return j.get<double>() != 0.0;
    case json::value_t::string: return !j.get_ref<const std::string&>().empty();
    case json::value_t::array:
    case json::value_t::object: return !j.empty();
    default: return true;
    }
}

std::string float_repr(double d) {
    if (std::isnan(d)) return "nan";
    if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
    // Shortest digits that read back as the same double, as CPython's repr chooses them.
    char buf[40];
    int prec = 1;
    for (; prec <= 17; ++prec) {
        std::snprintf(buf, sizeof buf, "%.*e", prec - 1, d);
        if (std::strtod(buf, nullptr) == d) break;
    }
    std::string s = buf;
    size_t e = s.find('e');
    int exp = std::atoi(s.c_str() + e + 1);
    std::string mant = s.substr(0, e);
    bool neg = mant[0] == '-';
    if (neg) mant.erase(0, 1);
    std::string digits;
    for (char c : mant)
        if (c != '.') digits += c;
    while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
    std::string out;
    if (exp < -4 || exp >= 16) {
        out = digits.substr(0, 1);
        if (digits.size() > 1) out += "." + digits.substr(1);
        char eb[16];
        std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
        out += eb;
    } else if (exp < 0) {
        out = "0." + std::string(-exp - 1, '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exp + 1) {
        out = digits + std::string(exp + 1 - digits.size(), '0') + ".0";
    } else {
        out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    }
    return neg ? "-" + out : out;
}

// Python's repr of a str: quoted, with \\ \n \r \t and the quote escaped, and every other
// character str.isprintable() refuses as \xNN, \uNNNN or \UNNNNNNNN.
static std::string repr_string(const std::string& s) {
    char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
    std::string out(1, q);
    for (char32_t c : text::decode(s)) {
        switch (c) {
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c == static_cast<char32_t>(q)) {
                out += '\\';
                out += q;
            } else if (!text::is_printable(c)) {
                text::append_escape(out, c);
            } else {
                text::append_utf8(out, c);
            }
        }
    }
    return out + q;
}

int measure_nesting(const json& root) {
    int deepest = 0;
    std::vector<std::pair<const json*, int>> todo = {{&root, 1}};
    while (!todo.empty()) {
        const auto [j, depth] = todo.back();
        todo.pop_back();
        deepest = std::max(deepest, depth);
        if (depth > kMaxValueDepth) break;  // deep enough to refuse: no need to walk the rest
        if (j->is_structured())
            for (const auto& child : *j) todo.push_back({&child, depth + 1});
    }
    return deepest;
}

uint64_t measure_bytes(const json& root, uint64_t enough) {
    uint64_t bytes = 0;
    std::vector<const json*> todo = {&root};
    while (!todo.empty() && bytes <= enough) {
        const json* j = todo.back();
        todo.pop_back();
        bytes += 16;
        if (j->is_string()) bytes += j->get_ref<const std::string&>().size();
        if (j->is_object())
            for (auto it = j->begin(); it != j->end(); ++it) bytes += it.key().size();
        if (j->is_structured())
            for (const auto& child : *j) todo.push_back(&child);
    }
    return bytes;
}

static std::string repr_at(const json& j, int depth) {
    if (depth > kMaxValueDepth) throw EvalError("a value nested deeper than " + std::to_string(kMaxValueDepth) + " levels");
    switch (j.type()) {
    case json::value_t::string: return repr_string(j.get_ref<const std::string&>());
    case json::value_t::array: {
        std::string s = "[";
        for (size_t i = 0; i < j.size(); ++i) s += (i ? ", " : "") + repr_at(j[i], depth + 1);
        return s + "]";
    }
    case json::value_t::object: {
        std::string s = "{";
        bool first = true;
        for (auto it = j.begin(); it != j.end(); ++it) {
            s += (first ? "" : ", ") + repr_string(it.key()) + ": " + repr_at(it.value(), depth + 1);
            first = false;
        }
        return s + "}";
    }
    default: return to_str(j);
    }
}

std::string repr(const json& j) { return repr_at(j, 0); }

std::string to_str(const json& j) {
    switch (j.type()) {
    case json::value_t::null: return "None";
    case json::value_t::boolean: return j.get<bool>() ? "True" : "False";
    case json::value_t::number_integer: return std::to_string(j.get<int64_t>());
    case json::value_t::number_unsigned: return std::to_string(j.get<uint64_t>());
    case json::value_t::number_float: return float_repr(j.get<double>());
    case json::value_t::string: return j.get<std::string>();
    default: return repr(j);
    }
}

std::string to_str(const Value& v) {
    switch (v.kind()) {
    case Value::Kind::Undefined: return "";
    case Value::Kind::Json: return to_str(v.j());
    case Value::Kind::Namespace: return "<Namespace " + repr(v.j()) + ">";
    case Value::Kind::Macro: return "<Macro '" + v.as_macro()->name + "'>";
    case Value::Kind::Builtin: return "<built-in function " + v.undefined_name() + ">";
    }
    return "";
}

static bool numeric(const json& j) { return j.is_number() || j.is_boolean(); }
static double as_double(const json& j) {
    return j.is_boolean() ? (j.get<bool>() ? 1.0 : 0.0) : j.get<double>();
}

bool equal(const json& a, const json& b) {
    if (numeric(a) && numeric(b)) {
        if (a.is_number_float() || b.is_number_float()) return as_double(a) == as_double(b);
        if (a.is_boolean() || b.is_boolean()) return as_double(a) == as_double(b);
        return a == b;
    }
    if (a.is_array() && b.is_array()) {
        if (a.size() != b.size()) return false;
        for (size_t i = 0; i < a.size(); ++i)
            if (!equal(a[i], b[i])) return false;
        return true;
    }
    return a == b;
}

bool less(const json& a, const json& b) {
    if (numeric(a) && numeric(b)) {
        if (a.is_number_integer() && b.is_number_integer()) return a.get<int64_t>() < b.get<int64_t>();
        return as_double(a) < as_double(b);
    }
    if (a.is_string() && b.is_string())
        return a.get_ref<const std::string&>() < b.get_ref<const std::string&>();
    if (a.is_array() && b.is_array()) {
        for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
            if (less(a[i], b[i])) return true;
            if (less(b[i], a[i])) return false;
        }
        return a.size() < b.size();
    }
    throw std::invalid_argument("'<' not supported between instances of '" + type_name(a) +
                                "' and '" + type_name(b) + "'");
}

std::string type_name(const json& j) {
    switch (j.type()) {
    case json::value_t::null: return "NoneType";
    case json::value_t::boolean: return "bool";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "int";
    case json::value_t::number_float: return "float";
    case json::value_t::string: return "str";
    case json::value_t::array: return "list";
    case json::value_t::object: return "dict";
    default: return "object";
    }
}

std::string type_name(const Value& v) {
    switch (v.kind()) {
    case Value::Kind::Undefined: return "Undefined";
    case Value::Kind::Namespace: return "Namespace";
    case Value::Kind::Macro: return "Macro";
    case Value::Kind::Builtin: return "builtin_function_or_method";
    default: return type_name(v.j());
    }
}

}  // namespace tpx::chat
