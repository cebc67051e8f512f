// Expression evaluation for the Renderer: names, literals, attribute and item access with
// Jinja2's Undefined rules (a missing key is Undefined; using an Undefined's attribute fails),
// calls of macros and of HF's globals (raise_exception, strftime_now, namespace, range).
#include <algorithm>
#include <cstdint>
#include <ctime>
#include <iterator>
#include <memory>
#include <new>
#include <stdexcept>

#include "chat/renderer.h"
#include "chat/text.h"
#include "common/json_object.h"

namespace tpx::chat {

Value Renderer::eval(const Expr& e) {
    check_stack(e.line);
    try {
        Value v = eval_inner(e);
        // Strings and lists the template makes count against its budget (each within kMaxBuilt,
        // but a loop of them would otherwise run for hours, or take the host's memory: a list
        // grown a message a turn is copied whole each turn).
        if (v.owns_data() && v.is_json() && (v.j().is_string() || v.j().is_structured()) &&
            (built_ += measure_bytes(v.j(), kMaxBuiltTotal - built_)) > kMaxBuiltTotal)
            fail(e.line, "the template made more than " + std::to_string(kMaxBuiltTotal >> 20) + " MiB of strings and lists in all");
        return v;
    } catch (const EvalError& err) {
        fail(e.line, err.what());
    } catch (const nlohmann::json::exception& err) {  // an operation on a value of the wrong type
        fail(e.line, "cannot evaluate: " + strip_json_tag(err));
    } catch (const std::length_error&) {
        fail(e.line, "a value too large to make");
    } catch (const std::bad_alloc&) {
        fail(e.line, "a value too large for the memory");
    }
}

Args Renderer::eval_args(const Expr& e) {
    Args args;
    for (const auto& a : e.args) args.positional.push_back(eval(*a));
    for (const auto& kw : e.kwargs) args.keyword.emplace_back(kw.first, eval(*kw.second));
    return args;
}

Value Renderer::eval_attr(const Value& subject, const std::string& key) {
    if (subject.is_undefined()) fail_undefined(subject);
    if (subject.kind() == Value::Kind::Macro || subject.kind() == Value::Kind::Builtin)
        return Value::undefined("'" + type_name(subject) + "' object has no attribute '" + key + "'");
    const json& j = subject.j();
    if (j.is_object()) {
        auto it = j.find(key);
        if (it != j.end()) return Value::borrowed(*it);
    }
    return Value::undefined("'" + std::string(subject.kind() == Value::Kind::Namespace ? "Namespace" : type_name(j) + " object") +
                            "' has no attribute '" + key + "'");
}

Value Renderer::eval_item(const Value& subject, const Value& key) {
    if (subject.is_undefined()) fail_undefined(subject);
    const json& k = need_json(key);
    if (k.is_string()) return eval_attr(subject, k.get<std::string>());
    const json& j = subject.j();
    if (k.is_number_integer() && (j.is_array() || j.is_string())) {
        int64_t i = k.get<int64_t>();
        if (j.is_array()) {
            int64_t n = static_cast<int64_t>(j.size());
            if (i < 0) i += n;
            if (i >= 0 && i < n) return Value::borrowed(j[static_cast<size_t>(i)]);
        } else {
            std::vector<char32_t> cps = text::decode(j.get_ref<const std::string&>());
            int64_t n = static_cast<int64_t>(cps.size());
            if (i < 0) i += n;
            if (i >= 0 && i < n) return Value::owned(text::encode(cps, static_cast<size_t>(i), static_cast<size_t>(i) + 1));
        }
    }
    return Value::undefined("'" + type_name(j) + " object' has no element " + repr(k));
}

Value Renderer::eval_inner(const Expr& e) {
    switch (e.kind) {
    case Expr::Kind::Literal: return Value::borrowed(e.literal);
    case Expr::Kind::Name: return lookup(e.name);
    case Expr::Kind::List:
    case Expr::Kind::Tuple: {  // its items are copies: [l, l, l] holds l three times
        std::vector<Value> items;
        uint64_t bytes = 0;
        for (const auto& a : e.args) {
            items.push_back(eval(*a));
            if ((bytes += measure_bytes(need_json(items.back()), kMaxBuilt)) > kMaxBuilt)
                throw EvalError("the list would hold more than " + std::to_string(kMaxBuilt) + " bytes");
        }
        json out = json::array();
        for (const Value& v : items) out.push_back(need_json(v));
        return Value::owned(std::move(out));
    }
    case Expr::Kind::Dict: {
        json out = json::object();
        for (size_t i = 0; i < e.args.size(); ++i) {
            Value k = eval(*e.args[i]);
            if (!need_json(k).is_string()) throw EvalError("dict keys must be strings here, got " + type_name(k));
            out[k.j().get<std::string>()] = need_json(eval(*e.values[i]));
        }
        return Value::owned(std::move(out));
    }
    // A part of a temporary (owned) subject is copied out before the subject goes away.
    case Expr::Kind::Attr: {
        Value subject = eval(*e.a);
        Value r = eval_attr(subject, e.name);
        return subject.owns_data() ? r.detach() : r;
    }
    case Expr::Kind::Item: {
        Value subject = eval(*e.a);
        Value r = eval_item(subject, eval(*e.b));
        return subject.owns_data() ? r.detach() : r;
    }
    case Expr::Kind::Slice: {
        Value subject = eval(*e.a);
        Value none;
        return slice(subject, e.b ? eval(*e.b) : none, e.c ? eval(*e.c) : none, e.d ? eval(*e.d) : none);
    }
    case Expr::Kind::Call: return eval_call(e);
    case Expr::Kind::MethodCall: {
        Value subject = eval(*e.a);
        Value r = call_method(e.method, e.name, subject, eval_args(e));
        return subject.owns_data() ? r.detach() : r;
    }
    case Expr::Kind::Filter: {
        Value subject = eval(*e.a);
        Value r = apply_filter(e.filter, subject, eval_args(e));
        return subject.owns_data() ? r.detach() : r;
    }
    case Expr::Kind::Test: {
        Value subject = eval(*e.a);
        return Value::owned(apply_test(e.test, subject, eval_args(e)) != e.negated);
    }
    case Expr::Kind::Neg:
    case Expr::Kind::Pos: {
        const json& x = need_json(eval(*e.a));
        if (!x.is_number() && !x.is_boolean()) throw EvalError("bad operand type for unary " + std::string(e.kind == Expr::Kind::Neg ? "-" : "+") + ": '" + type_name(x) + "'");
        if (e.kind == Expr::Kind::Pos) return Value::owned(x);
        if (x.is_number_float()) return Value::owned(-x.get<double>());
        const int64_t v = x.is_boolean() ? int64_t(x.get<bool>()) : x.get<int64_t>();
        if (v == INT64_MIN) throw EvalError("integer overflow: -(" + x.dump() + ") is past 64 bits (Python's integers are unbounded; a template's here are 64-bit)");
        return Value::owned(-v);
    }
    case Expr::Kind::Not: return Value::owned(!truthy(eval(*e.a)));
    case Expr::Kind::And: {
        Value a = eval(*e.a);
        return truthy(a) ? eval(*e.b) : a;
    }
    case Expr::Kind::Or: {
        Value a = eval(*e.a);
        return truthy(a) ? a : eval(*e.b);
    }
    case Expr::Kind::Binary: {
        Value a = eval(*e.a);
        return binary_op(e.op, a, eval(*e.b));
    }
    case Expr::Kind::Cond:
        if (truthy(eval(*e.b))) return eval(*e.a);
        return e.c ? eval(*e.c) : Value::undefined("the else branch of an 'if' expression");
    case Expr::Kind::Chain: {  // the first false comparison, else the last
        Value left = eval(*e.args[0]), r;
        for (size_t i = 0; i < e.ops.size(); ++i) {
            Value right = eval(*e.args[i + 1]);
            r = binary_op(e.ops[i], left, right);
            if (!truthy(r)) return r;
            left = std::move(right);
        }
        return r;
    }
    }
    throw EvalError("unknown expression");
}

Value Renderer::eval_call(const Expr& e) {
    if (e.a->kind != Expr::Kind::Name) throw EvalError("only macros and global functions can be called here");
    const std::string& fn = e.a->name;
    Value callee = lookup(fn);
    Args args = eval_args(e);
    if (callee.kind() == Value::Kind::Macro) return call_macro(e, *callee.as_macro(), args);
    if (callee.kind() == Value::Kind::Builtin) return call_global(e, callee.undefined_name(), args);
    if (!callee.is_undefined()) throw EvalError("'" + type_name(callee) + "' object '" + fn + "' is not callable");
    throw EvalError("'" + fn + "' is undefined (not a macro or one of the global functions raise_exception, "
                    "strftime_now, namespace, dict, range)");
}

Value Renderer::call_global(const Expr& e, const std::string& fn, const Args& args) {
    if (fn == "raise_exception") {
        std::string message = to_str(args.get(0, "message"));
        throw TemplateRaised(at(name_, e.line, 0, "the chat template raised an error: " + message), message);
    }
    if (fn == "namespace" || fn == "dict") {
        auto object = std::make_shared<json>(json::object());
        for (const Value& p : args.positional) {  // namespace({...}) starts from a mapping
            if (!need_json(p).is_object()) throw EvalError(fn + "() takes a mapping or keyword arguments");
            for (auto it = p.j().begin(); it != p.j().end(); ++it) (*object)[it.key()] = it.value();
        }
        for (const auto& kw : args.keyword) (*object)[kw.first] = need_json(kw.second);
        return fn == "dict" ? Value::owned(*object) : Value::ns(object);
    }
    if (fn == "range") {
        int64_t start = 0, stop, step = 1;
        size_t n = args.positional.size();
        if (n < 1 || n > 3) throw EvalError("range() takes 1 to 3 arguments");
        if (n == 1) stop = need_int(args.positional[0], "range");
        else { start = need_int(args.positional[0], "range"); stop = need_int(args.positional[1], "range"); }
        if (n == 3) step = need_int(args.positional[2], "range");
        if (step == 0) throw EvalError("range() arg 3 must not be zero");
        // Counted first (i += step could wrap), and bounded as Jinja2's sandbox bounds it.
        const __int128 span = step > 0 ? (__int128)stop - start : (__int128)start - stop, by = step > 0 ? (__int128)step : -(__int128)step;
        const __int128 count = span > 0 ? (span - 1) / by + 1 : 0;
        if (count > kMaxRange)
            throw EvalError("range too big: " + std::to_string((long long)std::min<__int128>(count, INT64_MAX)) + " items, more than the " +
                            std::to_string(kMaxRange) + " Jinja2's sandbox allows");
        json out = json::array();
        for (int64_t k = 0; k < (int64_t)count; ++k) out.push_back((int64_t)((__int128)start + (__int128)k * step));
        return Value::owned(std::move(out));
    }
    if (fn == "strftime_now") {
        std::time_t now = options_.now ? *options_.now : std::time(nullptr);
        std::tm tm{};
        localtime_r(&now, &tm);
        // strftime answers 0 both for an empty result and for a buffer too small: grown up to 64 KiB.
        const std::string format = need_str(args.get(0, "format"), "strftime_now");
        std::string buf;
        size_t len = 0;
        for (size_t size = 256; size <= (size_t{64} << 10) && len == 0 && !format.empty(); size *= 4) {
            buf.resize(size);
            len = std::strftime(buf.data(), buf.size(), format.c_str(), &tm);
        }
        return Value::owned(buf.substr(0, len));
    }
    throw EvalError("unknown global function '" + fn + "'");
}

Value Renderer::call_macro(const Expr& e, const Macro& m, const Args& args) {
    const Stmt& def = *m.def;
    // A macro may call itself; Python stops such recursion (RecursionError), and so do we.
    if (macro_depth_ >= kMaxMacroDepth)
        throw EvalError("macro '" + m.name + "' nested deeper than " + std::to_string(kMaxMacroDepth) + " calls");
    struct Depth {
        size_t& d;
        ~Depth() { --d; }
    } depth{++macro_depth_};
    if (args.positional.size() > def.names.size())
        throw EvalError("macro '" + m.name + "' takes " + std::to_string(def.names.size()) + " arguments, " +
                        std::to_string(args.positional.size()) + " given");
    for (const auto& kw : args.keyword) {
        bool known = false;
        for (const auto& n : def.names) known = known || n == kw.first;
        if (!known) throw EvalError("macro '" + m.name + "' has no parameter '" + kw.first + "'");
    }
    // A macro sees the caller's variables and the template's top level, not the caller's loops.
    // Frames move (never copy) aside: values borrowed from them by the caller stay valid.
    std::vector<Frame> saved(std::make_move_iterator(frames_.begin() + 2), std::make_move_iterator(frames_.end()));
    frames_.resize(2);
    auto restore = [&] {
        frames_.resize(2);
        for (Frame& f : saved) frames_.push_back(std::move(f));
    };
    frames_.emplace_back();
    std::string out;
    try {
        for (size_t i = 0; i < def.names.size(); ++i) {
            Value v = args.get(i, def.names[i].c_str());
            if (i < args.positional.size()) v = args.positional[i];
            if (v.is_undefined() && def.defaults[i]) v = eval(*def.defaults[i]);
            assign(def.names[i], v.is_undefined() ? Value::undefined(def.names[i]) : v);
        }
        exec(def.branches[0], out);
    } catch (...) {
        restore();
        throw;
    }
    restore();
    (void)e;
    return Value::owned(std::move(out));
}

}  // namespace tpx::chat
