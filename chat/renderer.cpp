// Statement execution and expression evaluation. Values read from scopes are borrowed, not
// copied; a value is copied (detached) only when stored, so a conversation is never copied per
// lookup. Errors carry the template's name and the line of the failing expression.
#include "chat/renderer.h"

#include <pthread.h>

#include <algorithm>
#include <memory>

namespace tpx::chat {
namespace {

// Bytes of stack this thread has below the caller's frame (the stack grows down), or 256 KiB
// where the thread's stack cannot be read.
size_t stack_left(const char* here) {
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) != 0) return size_t{256} << 10;
    void* low = nullptr;
    size_t size = 0;
    const bool read = pthread_attr_getstack(&attr, &low, &size) == 0;
    pthread_attr_destroy(&attr);
    if (!read || here <= static_cast<const char*>(low)) return size_t{256} << 10;
    return static_cast<size_t>(here - static_cast<const char*>(low));
}

}  // namespace

void Renderer::fail(int line, const std::string& what) const { throw JobError(at(name_, line, 0, what)); }

void Renderer::check_stack(int line) const {
    const char here = 0;
    if (reinterpret_cast<uintptr_t>(&here) < stack_floor_)
        fail(line, "the template nests too deeply here (expressions inside blocks inside macro calls need more than the " +
                       std::to_string((stack_budget_ + 1023) >> 10) + " KiB of stack a render may take)");
}

std::string Renderer::run(const Body& body, const json& messages) {
    const char here = 0;
    stack_budget_ = std::min(stack_left(&here) / 2, size_t{8} << 20);
    stack_floor_ = reinterpret_cast<uintptr_t>(&here) - stack_budget_;
    frames_.assign(2, Frame{});
    Frame& ctx = frames_[0];
    for (auto it = options_.variables.begin(); it != options_.variables.end(); ++it)
        ctx.emplace_back(it.key(), Value::borrowed(it.value()));
    auto put = [&](const char* key, Value v) {
        for (auto& kv : ctx)
            if (kv.first == key) { kv.second = std::move(v); return; }
        ctx.emplace_back(key, std::move(v));
    };
    put("messages", Value::borrowed(messages));
    put("add_generation_prompt", Value::owned(options_.add_generation_prompt));
    const std::pair<const char*, const std::optional<std::string>*> tokens[] = {
        {"bos_token", &options_.bos_token}, {"eos_token", &options_.eos_token},
        {"pad_token", &options_.pad_token}, {"unk_token", &options_.unk_token}};
    for (const auto& t : tokens)
        if (*t.second) put(t.first, Value::owned(**t.second));
    for (const char* key : {"tools", "documents"}) {
        bool given = false;
        for (auto& kv : ctx) given = given || kv.first == key;
        if (!given) put(key, Value::owned(nullptr));
    }
    std::string out;
    if (exec(body, out) != Flow::Normal) fail(0, "'{% break %}' or '{% continue %}' outside a for loop");  // the parser refuses these
    step_output(0, out);
    return out;
}

Value Renderer::lookup(const std::string& name) const {
    for (size_t f = frames_.size(); f-- > 0;)
        for (const auto& kv : frames_[f])
            if (kv.first == name) return kv.second.kind() == Value::Kind::Json ? Value::borrowed(kv.second.j()) : kv.second;
    for (const char* fn : {"raise_exception", "strftime_now", "namespace", "dict", "range"})
        if (name == fn) return Value::builtin(name);  // Llama 3.2 asks "strftime_now is defined"
    return Value::undefined(name);
}

void Renderer::assign(const std::string& name, Value v) {
    Frame& f = frames_.back();
    for (auto& kv : f)
        if (kv.first == name) { kv.second = v.detach(); return; }
    f.emplace_back(name, v.detach());
}

Renderer::Flow Renderer::exec(const Body& body, std::string& out) {
    for (const auto& s : body) {
        Flow flow = exec(*s, out);
        if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
}

void Renderer::step(int line, const std::string& out) {
    if (++steps_ > kMaxSteps)
        fail(line, "the template took more than " + std::to_string(kMaxSteps) + " steps (statements and loop turns): a loop without end?");
    step_output(line, out);
}

void Renderer::step_output(int line, const std::string& out) const {
    if (out.size() > kMaxBuilt) fail(line, "the template's output passed " + std::to_string(kMaxBuilt >> 20) + " MiB");
}

Renderer::Flow Renderer::exec(const Stmt& s, std::string& out) {
    check_stack(s.line);
    step(s.line, out);
    switch (s.kind) {
    case Stmt::Kind::Text: out += s.text; step_output(s.line, out); return Flow::Normal;
    case Stmt::Kind::Output: out += to_str(eval(*s.expr)); step_output(s.line, out); return Flow::Normal;
    case Stmt::Kind::If:
        for (size_t i = 0; i < s.conditions.size(); ++i)
            if (truthy(eval(*s.conditions[i]))) return exec(s.branches[i], out);
        return exec(s.else_body, out);
    case Stmt::Kind::For: return exec_for(s, out);
    case Stmt::Kind::Set:
    case Stmt::Kind::SetAttr: exec_set(s); return Flow::Normal;
    // A break or continue inside a set or filter block leaves the loop around it, the block's
    // text unused (as Jinja2's compiled loop does).
    case Stmt::Kind::SetBlock: {
        std::string captured;
        if (const Flow f = exec(s.branches[0], captured); f != Flow::Normal) return f;
        assign(s.names[0], Value::owned(captured));
        return Flow::Normal;
    }
    case Stmt::Kind::FilterBlock: {
        // The placeholder at the bottom of the filter chain stands for the body's text.
        std::string captured;
        if (const Flow f = exec(s.branches[0], captured); f != Flow::Normal) return f;
        Value v = Value::owned(captured);
        std::vector<const Expr*> chain;
        for (const Expr* f = s.expr.get(); f->kind == Expr::Kind::Filter; f = f->a.get()) chain.push_back(f);
        for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
            try {
                v = apply_filter((*it)->filter, v, eval_args(**it)).detach();
            } catch (const EvalError& e) {
                fail(s.line, e.what());
            }
        }
        out += to_str(v);
        step_output(s.line, out);
        return Flow::Normal;
    }
    case Stmt::Kind::Macro: {
        auto m = std::make_shared<Macro>();
        m->name = s.text;
        m->def = &s;
        assign(s.text, Value::macro(std::move(m)));
        return Flow::Normal;
    }
    case Stmt::Kind::Break: return Flow::Break;
    case Stmt::Kind::Continue: return Flow::Continue;
    }
    return Flow::Normal;
}

void Renderer::exec_set(const Stmt& s) {
    Value v = eval(*s.expr);
    // A value may grow a level a store ({% set x = [x] %} in a loop): bounded here, where values
    // are kept, every recursive walk of it (repr, ==, a copy) stays off the stack's end.
    if (v.is_json() && measure_nesting(v.j()) > kMaxValueDepth)
        fail(s.line, "the value set would be nested deeper than " + std::to_string(kMaxValueDepth) + " levels");
    if (s.kind == Stmt::Kind::SetAttr) {
        Value target = lookup(s.names[0]);
        if (target.kind() != Value::Kind::Namespace)
            fail(s.line, "cannot assign attribute '" + s.text + "' on '" + s.names[0] + "' (" + type_name(target) +
                             "): only a namespace() takes '{% set " + s.names[0] + "." + s.text + " = ... %}'");
        if (!v.is_json()) fail(s.line, "only data can be stored in a namespace");
        json copy = v.j();  // before the insert, which may move the namespace's other values
        target.ns_object()[s.text] = std::move(copy);
        return;
    }
    if (s.names.size() == 1) {
        assign(s.names[0], std::move(v));
        return;
    }
    json items;
    try {
        items = to_list(v);
    } catch (const EvalError& e) {
        fail(s.line, e.what());
    }
    if (items.size() != s.names.size())
        fail(s.line, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(s.names.size()) + " names");
    for (size_t i = 0; i < s.names.size(); ++i) assign(s.names[i], Value::owned(items[i]));
}

Renderer::Flow Renderer::exec_for(const Stmt& s, std::string& out) {
    // Iterated in place: a borrowed sequence never points into a namespace (reads from one are
    // copies), and a loop body cannot reassign a variable of an outer scope.
    Value seq = eval(*s.expr);
    json converted;
    const json* items = &converted;
    try {
        if (seq.is_json() && seq.j().is_array()) items = &seq.j();
        else converted = to_list(seq);
    } catch (const EvalError& e) {
        fail(s.line, e.what());
    }
    frames_.emplace_back();
    auto bind = [&](const json& item) {
        frames_.back().clear();
        if (s.names.size() == 1) {
            frames_.back().emplace_back(s.names[0], Value::borrowed(item));
            return;
        }
        json parts = item.is_array() ? item : json::array();
        if (item.is_string() || parts.size() != s.names.size())
            fail(s.line, "cannot unpack a " + type_name(item) + " into " + std::to_string(s.names.size()) + " loop names");
        for (size_t k = 0; k < s.names.size(); ++k) frames_.back().emplace_back(s.names[k], Value::owned(parts[k]));
    };
    std::vector<size_t> kept;  // Jinja2 filters first, so loop.length counts only kept items
    for (size_t i = 0; i < items->size(); ++i) {
        if (s.target) {
            bind((*items)[i]);
            if (!truthy(eval(*s.target))) continue;
        }
        kept.push_back(i);
    }
    size_t n = kept.size();
    for (size_t k = 0; k < n; ++k) {
        step(s.line, out);
        bind((*items)[kept[k]]);
        json loop = {{"index", k + 1}, {"index0", k}, {"revindex", n - k}, {"revindex0", n - k - 1},
                     {"first", k == 0}, {"last", k + 1 == n}, {"length", n}, {"depth", 1}, {"depth0", 0}};
        if (s.loop_neighbours && k > 0) loop["previtem"] = (*items)[kept[k - 1]];
        if (s.loop_neighbours && k + 1 < n) loop["nextitem"] = (*items)[kept[k + 1]];
        frames_.back().emplace_back("loop", Value::owned(std::move(loop)));
        if (exec(s.branches[0], out) == Flow::Break) break;
    }
    frames_.pop_back();
    if (n == 0) return exec(s.else_body, out);
    return Flow::Normal;
}

}  // namespace tpx::chat
