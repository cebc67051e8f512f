// Python's binary operators on template values (+ on str/list/number, / always float, // and %
// floored, ~ concatenating str() forms) and slicing. Undefined operands fail as in Jinja2,
// except for ~ and ==, where Undefined prints as "" and equals only Undefined.
#include <cmath>
#include <cstdint>
#include <string>

#include "chat/builtins.h"
#include "chat/text.h"

namespace tpx::chat {
namespace {

bool is_num(const json& j) { return j.is_number() || j.is_boolean(); }
bool is_int(const json& j) { return j.is_number_integer() || j.is_boolean(); }
int64_t as_int(const json& j) { return j.is_boolean() ? j.get<bool>() : j.get<int64_t>(); }
double as_dbl(const json& j) { return j.is_boolean() ? j.get<bool>() : j.get<double>(); }

[[noreturn]] void overflow(const json& a, const char* op, const json& b) {
    throw EvalError("integer overflow: " + a.dump() + " " + op + " " + b.dump() +
                    " is past 64 bits (Python's integers are unbounded; a template's here are 64-bit)");
}

[[noreturn]] void unsupported(const char* op, const json& a, const json& b) {
    throw EvalError(std::string("unsupported operand type(s) for ") + op + ": '" + type_name(a) + "' and '" +
                    type_name(b) + "'");
}

json arithmetic(BinOp op, const json& a, const json& b) {
    static const char* kSym[] = {"+", "-", "*", "/", "//", "%", "**"};
    const char* sym = kSym[static_cast<int>(op)];
    if (op == BinOp::Add) {
        if (a.is_string() && b.is_string()) return a.get<std::string>() + b.get<std::string>();
        if (a.is_array() && b.is_array()) {
            const uint64_t bytes = measure_bytes(a, kMaxBuilt) + measure_bytes(b, kMaxBuilt);
            if (bytes > kMaxBuilt) throw EvalError("list + list would hold more than " + std::to_string(kMaxBuilt) + " bytes");
            json out = a;
            out.insert(out.end(), b.begin(), b.end());
            return out;
        }
        if (a.is_string() || b.is_string())
            throw EvalError("can only concatenate str (not \"" + type_name(a.is_string() ? b : a) + "\") to str");
    }
    if (op == BinOp::Mul && (a.is_string() || a.is_array() || b.is_string() || b.is_array())) {
        const json& seq = a.is_string() || a.is_array() ? a : b;
        const json& n = &seq == &a ? b : a;
        if (!is_int(n)) unsupported(sym, a, b);
        // A list's copies are deep: [[1] * 100000] * 10000 holds 10^9 values.
        const uint64_t unit = seq.is_string() ? seq.get_ref<const std::string&>().size() : measure_bytes(seq, kMaxBuilt) - 16;
        if (as_int(n) > 0 && unit > 0 && (uint64_t)as_int(n) > kMaxBuilt / unit)
            throw EvalError("'" + type_name(seq) + "' * " + std::to_string(as_int(n)) + " would hold more than " + std::to_string(kMaxBuilt) + " bytes");
        if (seq.is_string()) {  // by doubling: 'a' * 60000000 took 0.6 s a byte at a time
            const std::string& unit_text = seq.get_ref<const std::string&>();
            const uint64_t want = as_int(n) > 0 ? unit_text.size() * (uint64_t)as_int(n) : 0;
            std::string out;
            out.reserve(want);
            if (want > 0) out = unit_text;
            while (!out.empty() && out.size() * 2 <= want) out.append(out);
            out.append(out, 0, want - out.size());
            return out;
        }
        json out = json::array();
        for (int64_t i = 0; i < as_int(n); ++i) out.insert(out.end(), seq.begin(), seq.end());
        return out;
    }
    if (!is_num(a) || !is_num(b)) unsupported(sym, a, b);
    bool ints = is_int(a) && is_int(b);
    double x = as_dbl(a), y = as_dbl(b);
    switch (op) {
    case BinOp::Add:
    case BinOp::Sub:
    case BinOp::Mul: {
        if (!ints) return op == BinOp::Add ? json(x + y) : op == BinOp::Sub ? json(x - y) : json(x * y);
        int64_t r = 0;
        const bool past = op == BinOp::Add ? __builtin_add_overflow(as_int(a), as_int(b), &r)
                          : op == BinOp::Sub ? __builtin_sub_overflow(as_int(a), as_int(b), &r)
                                             : __builtin_mul_overflow(as_int(a), as_int(b), &r);
        if (past) overflow(a, sym, b);
        return r;
    }
    case BinOp::Div:
        if (y == 0) throw EvalError("division by zero");
        return x / y;
    case BinOp::FloorDiv:
    case BinOp::Mod: {
        if (y == 0) throw EvalError("integer division or modulo by zero");
        if (ints) {
            int64_t p = as_int(a), q = as_int(b);
            if (p == INT64_MIN && q == -1) {  // p / q is past 64 bits (and p % q would trap)
                if (op == BinOp::Mod) return 0;
                overflow(a, sym, b);
            }
            int64_t d = p / q, r = p % q;
            if (r != 0 && ((r < 0) != (q < 0))) { --d; r += q; }
            return op == BinOp::FloorDiv ? json(d) : json(r);
        }
        double d = std::floor(x / y), r = x - d * y;
        return op == BinOp::FloorDiv ? json(d) : json(r);
    }
    case BinOp::Pow:
        if (ints && as_int(b) >= 0) {  // by squaring, every product checked
            int64_t r = 1, base = as_int(a);
            for (int64_t e = as_int(b); e > 0; e >>= 1) {
                if ((e & 1) && __builtin_mul_overflow(r, base, &r)) overflow(a, sym, b);
                if (e > 1 && __builtin_mul_overflow(base, base, &base)) {
                    if (r == 0) return 0;
                    overflow(a, sym, b);
                }
            }
            return r;
        }
        // Finite operands where Python raises rather than give inf, or gives a complex number.
        if (!std::isfinite(x) || !std::isfinite(y)) return std::pow(x, y);
        if (x == 0 && y < 0) throw EvalError("0 cannot be raised to a negative power");
        if (x < 0 && y != std::floor(y)) throw EvalError("a negative number to a fractional power is a complex number (not supported)");
        if (const double r = std::pow(x, y); std::isfinite(r)) return r;
        throw EvalError("** result out of range: past the largest float");
    default: break;
    }
    unsupported(sym, a, b);
}

}  // namespace

Value binary_op(BinOp op, const Value& a, const Value& b) {
    switch (op) {
    case BinOp::Concat: {
        std::string joined = to_str(a);
        const std::string right = to_str(b);
        if (joined.size() + right.size() > kMaxBuilt)
            throw EvalError("'~' would make " + std::to_string(joined.size() + right.size()) + " bytes, more than " + std::to_string(kMaxBuilt));
        joined += right;
        return Value::owned(std::move(joined));
    }
    case BinOp::Eq:
    case BinOp::Ne: {
        bool eq = (a.is_undefined() || b.is_undefined()) ? (a.is_undefined() && b.is_undefined())
                                                          : equal(need_json(a), need_json(b));
        return Value::owned(op == BinOp::Eq ? eq : !eq);
    }
    case BinOp::Lt:
    case BinOp::Le:
    case BinOp::Gt:
    case BinOp::Ge: {
        const json& x = need_json(a);
        const json& y = need_json(b);
        try {
            bool r = op == BinOp::Lt ? less(x, y) : op == BinOp::Gt ? less(y, x) : op == BinOp::Le ? !less(y, x) : !less(x, y);
            return Value::owned(r);
        } catch (const std::invalid_argument& e) {
            throw EvalError(e.what());
        }
    }
    case BinOp::In:
    case BinOp::NotIn: {
        Args args;
        args.positional.push_back(b);
        bool in = b.is_undefined() ? false : apply_test(Test::In, a, args);
        return Value::owned(op == BinOp::In ? in : !in);
    }
    default: return Value::owned(arithmetic(op, need_json(a), need_json(b)));
    }
}

Value slice(const Value& subject, const Value& start_v, const Value& stop_v, const Value& step_v) {
    const json& j = need_json(subject);
    auto opt = [](const Value& v, bool& given) -> int64_t {
        given = !v.is_undefined() && !v.j().is_null();
        return given ? need_int(v, "slice") : 0;
    };
    bool has_start, has_stop, has_step;
    int64_t start = opt(start_v, has_start), stop = opt(stop_v, has_stop), step = opt(step_v, has_step);
    if (!has_step) step = 1;
    if (step == 0) throw EvalError("slice step cannot be zero");
    std::vector<char32_t> cps;
    bool is_str = j.is_string();
    if (is_str) cps = text::decode(j.get_ref<const std::string&>());
    else if (!j.is_array()) throw EvalError("'" + type_name(j) + "' object is not subscriptable");
    int64_t n = is_str ? static_cast<int64_t>(cps.size()) : static_cast<int64_t>(j.size());
    // Python's slice.indices(n).
    auto clamp = [&](int64_t v, bool given, int64_t dflt) {
        if (!given) return dflt;
        if (v < 0) v += n;
        if (step > 0) return std::min(std::max<int64_t>(v, 0), n);
        return std::min(std::max<int64_t>(v, -1), n - 1);
    };
    start = clamp(start, has_start, step > 0 ? 0 : n - 1);
    stop = clamp(stop, has_stop, step > 0 ? n : -1);
    // The items start, start + step, ... before stop, counted first (i += step could wrap past
    // the end for a step near 2^63).
    const __int128 span = step > 0 ? (__int128)stop - start : (__int128)start - stop, by = step > 0 ? (__int128)step : -(__int128)step;
    const int64_t count = span > 0 ? (int64_t)((span - 1) / by + 1) : 0;
    std::vector<char32_t> out_cps;
    json out = json::array();
    for (int64_t k = 0; k < count; ++k) {
        const size_t i = (size_t)((__int128)start + (__int128)k * step);
        if (is_str) out_cps.push_back(cps[i]);
        else out.push_back(j[i]);
    }
    return is_str ? Value::owned(text::encode(out_cps)) : Value::owned(out);
}

}  // namespace tpx::chat
