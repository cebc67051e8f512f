// Jinja2's filters and tests and Python's str/dict methods, as HF's chat-template environment
// provides them (tojson is transformers' own: json.dumps with ensure_ascii=False, keys unsorted).
// They throw EvalError; the renderer adds the template name and line.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "chat/ast.h"
#include "chat/value.h"

namespace tpx::chat {

// A failure inside one operation; the renderer turns it into "TEMPLATE:LINE: message".
struct EvalError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Bounds that keep a hostile template inside the machine: a string or list made by one
// operation (repetition), in bytes or items; the items of range() (Jinja2's sandbox, which
// transformers renders in, allows 100,000); the nesting of a value printed or dumped.
constexpr uint64_t kMaxBuilt = uint64_t{1} << 26;
constexpr int64_t kMaxRange = 100000;
constexpr int kMaxValueDepth = 512;

struct Args {
    std::vector<Value> positional;
    std::vector<std::pair<std::string, Value>> keyword;
    // The i-th positional or the keyword `name`; Undefined when neither was given.
    const Value& get(size_t i, const char* name) const;
};

bool find_filter(const std::string& name, Filter& out);
bool find_test(const std::string& name, Test& out);
bool find_method(const std::string& name, Method& out);

Value apply_filter(Filter f, const Value& subject, const Args& args);
bool apply_test(Test t, const Value& subject, const Args& args);
Value call_method(Method m, const std::string& name, const Value& subject, const Args& args);

// Python's binary operators and a[start:stop:step] (any part may be Undefined = omitted).
Value binary_op(BinOp op, const Value& a, const Value& b);
// Python's s.replace(old, new, count) (count < 0: all), refused where the result would pass kMaxBuilt bytes.
std::string replace_within_limit(const std::string& s, const std::string& from, const std::string& to, int64_t count);
Value slice(const Value& subject, const Value& start, const Value& stop, const Value& step);
// Python's json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...).
std::string dump_json(const json& j, int indent, const std::string& item_sep, const std::string& key_sep,
                      bool sort_keys);
// Raises Jinja2's UndefinedError message for an Undefined operand.
[[noreturn]] void fail_undefined(const Value& v);
// The JSON of a defined value; throws for Undefined (as Jinja2 does on use).
const json& need_json(const Value& v);
const std::string& need_str(const Value& v, const char* what);
long need_int(const Value& v, const char* what);
// Python's iter(x) as a list: lists, dict keys, string characters; Undefined iterates empty.
json to_list(const Value& v);

}  // namespace tpx::chat
