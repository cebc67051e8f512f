// The values a chat template computes with: JSON data (messages, tokens, tools) plus the few
// things JSON lacks (Jinja2's Undefined, namespace objects, macros). Printing, truth and
// comparison follow Python, because HF transformers renders with Python's jinja2.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace tpx::chat {

using json = nlohmann::ordered_json;
struct Macro;

// A value is either borrowed (points at JSON owned by a scope, a namespace or the caller, which
// outlives the expression that reads it) or owned; reads never copy the conversation.
class Value {
public:
    enum class Kind { Undefined, Json, Namespace, Macro, Builtin };

    Value() = default;  // Undefined
    static Value undefined(std::string name) { Value v; v.name_ = std::move(name); return v; }
    static Value owned(json j) { Value v; v.kind_ = Kind::Json; v.own_ = std::move(j); return v; }
    static Value borrowed(const json& j) { Value v; v.kind_ = Kind::Json; v.ref_ = &j; return v; }
    static Value ns(std::shared_ptr<json> object);
    static Value macro(std::shared_ptr<const Macro> m);
    // A global function (raise_exception, strftime_now, ...): defined and callable, as in HF.
    static Value builtin(std::string name) { Value v; v.kind_ = Kind::Builtin; v.name_ = std::move(name); return v; }

    Kind kind() const { return kind_; }
    bool is_undefined() const { return kind_ == Kind::Undefined; }
    bool is_json() const { return kind_ == Kind::Json; }
    // The JSON of a Json value, or the attributes of a namespace.
    const json& j() const;
    json& ns_object() const { return *ns_; }
    const std::shared_ptr<const Macro>& as_macro() const { return macro_; }
    // For Undefined: the expression that was missing ("'foo' is undefined"); for Builtin: its name.
    const std::string& undefined_name() const { return name_; }
    // True when the data lives in this Value (or a namespace it shares): what is borrowed from
    // it must be copied before this Value goes away.
    bool owns_data() const { return (kind_ == Kind::Json && !ref_) || kind_ == Kind::Namespace; }
    // An owned copy, safe to keep after the scopes it borrows from change.
    Value detach() const;

private:
    Kind kind_ = Kind::Undefined;
    const json* ref_ = nullptr;
    json own_;
    std::shared_ptr<json> ns_;
    std::shared_ptr<const Macro> macro_;
    std::string name_;
};

// Python's bool(x): empty strings, containers, 0, None and Undefined are false.
bool truthy(const Value& v);
// Python's str(x) as Jinja2 prints it: None -> "None", True -> "True", lists in repr form.
std::string to_str(const Value& v);
std::string to_str(const json& j);
// How deep `j` nests (a scalar 1, [1] 2, ...), walked without recursion: the value may be
// hostile, and every recursive walk of it (repr, ==, a copy) must stay within kMaxValueDepth.
int measure_nesting(const json& j);
// About how many bytes `j` holds: 16 a value, plus its strings' and keys' bytes; walked without
// recursion, and stopped once past `enough`.
uint64_t measure_bytes(const json& j, uint64_t enough);

// Python's repr(x) for JSON data ('quoted' strings, [1, 'a'], {'k': 1}).
std::string repr(const json& j);
// Python's repr of a float (shortest round-trip digits, "1.0", "1e+20").
std::string float_repr(double d);
// Python ==, where 1 == 1.0 and True == 1.
bool equal(const json& a, const json& b);
// Python <; throws std::invalid_argument for types Python cannot order.
bool less(const json& a, const json& b);
// Python type names for messages ("str", "int", "list", "dict", "NoneType").
std::string type_name(const json& j);
std::string type_name(const Value& v);

}  // namespace tpx::chat
