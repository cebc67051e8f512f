// Python's binary operators on template values (+ on str/list/number, / always float, // and %
// floored, ~ concatenating str() forms) and slicing. Undefined operands fail as in Jinja2,
// except for ~ and ==, where Undefined prints as "" and equals only Undefined.
#include <cmath>

#include "chat/builtins.h"
#include "chat/text.h"

namespace tpx::chat {
namespace {

bool is_num(const json& j) { return j.is_number() || j.is_boolean(); }
bool is_int(const json& j) { return j.is_number_integer() || j.is_boolean(); }
int64_t as_int(const json& j) { return j.is_boolean() ? j.get<bool>() : j.get<int64_t>(); }
double as_dbl(const json& j) { return j.is_boolean() ? j.get<bool>() : j.get<double>(); }

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
        json out = seq.is_string() ? json("") : json::array();
        for (int64_t i = 0; i < as_int(n); ++i) {
            if (seq.is_string()) out.get_ref<std::string&>() += seq.get_ref<const std::string&>();
            else out.insert(out.end(), seq.begin(), seq.end());
        }
        return out;
    }
    if (!is_num(a) || !is_num(b)) unsupported(sym, a, b);
    bool ints = is_int(a) && is_int(b);
    double x = as_dbl(a), y = as_dbl(b);
    switch (op) {
    case BinOp::Add: return ints ? json(as_int(a) + as_int(b)) : json(x + y);
    case BinOp::Sub: return ints ? json(as_int(a) - as_int(b)) : json(x - y);
    case BinOp::Mul: return ints ? json(as_int(a) * as_int(b)) : json(x * y);
    case BinOp::Div:
        if (y == 0) throw EvalError("division by zero");
        return x / y;
    case BinOp::FloorDiv:
    case BinOp::Mod: {
        if (y == 0) throw EvalError("integer division or modulo by zero");
        if (ints) {
            int64_t p = as_int(a), q = as_int(b);
            int64_t d = p / q, r = p % q;
            if (r != 0 && ((r < 0) != (q < 0))) { --d; r += q; }
            return op == BinOp::FloorDiv ? json(d) : json(r);
        }
        double d = std::floor(x / y), r = x - d * y;
        return op == BinOp::FloorDiv ? json(d) : json(r);
    }
    case BinOp::Pow:
        if (ints && as_int(b) >= 0) {
            int64_t r = 1;
            for (int64_t i = 0; i < as_int(b); ++i) r *= as_int(a);
            return r;
        }
        return std::pow(x, y);
    default: break;
    }
    unsupported(sym, a, b);
}

}  // namespace

Value binary_op(BinOp op, const Value& a, const Value& b) {
    switch (op) {
    case BinOp::Concat: return Value::owned(to_str(a) + to_str(b));
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
    std::vector<char32_t> out_cps;
    json out = json::array();
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (is_str) out_cps.push_back(cps[static_cast<size_t>(i)]);
        else out.push_back(j[static_cast<size_t>(i)]);
    }
    return is_str ? Value::owned(text::encode(out_cps)) : Value::owned(out);
}

}  // namespace tpx::chat
