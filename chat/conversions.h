// Python's conversions between strings and values as chat templates reach them: int(s, base)
// and float(s) under Jinja2's int and float filters, and str.format under Jinja2's sandboxed
// formatter.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "chat/builtins.h"

namespace tpx::chat {

// Python's int(s, base) on a stripped s: nullopt wherever Python raises ValueError (a base outside
// 2..36 and 0 among those); a valid number past 64 bits throws EvalError (Python's are unbounded).
std::optional<int64_t> parse_int(const std::string& s, int64_t base);
// Python's float(s) on a stripped s: nullopt where Python raises ValueError.
std::optional<double> parse_float(const std::string& s);

// Python's fmt.format(*positional, **keyword) as Jinja2's sandboxed formatter runs it. Format
// specs (":>5") are refused rather than ignored, as is an attribute of anything but a dict.
std::string format_fields(const std::string& fmt, const Args& args);

}  // namespace tpx::chat
