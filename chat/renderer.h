// Runs a parsed template over its variables: statements write to a string, expressions evaluate
// to Values. Scopes follow Jinja2: a for loop's body starts each iteration with a fresh scope,
// macros see only the top-level scope, and namespace objects are shared by reference.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "chat/ast.h"
#include "chat/builtins.h"
#include "chat/template.h"

namespace tpx::chat {

class Renderer {
public:
    Renderer(const std::string& name, const RenderOptions& options) : name_(name), options_(options) {}
    std::string run(const Body& body, const json& messages);

private:
    enum class Flow { Normal, Break, Continue };
    using Frame = std::vector<std::pair<std::string, Value>>;

    Flow exec(const Body& body, std::string& out);
    Flow exec(const Stmt& s, std::string& out);
    Flow exec_for(const Stmt& s, std::string& out);
    void exec_set(const Stmt& s);
    Value eval(const Expr& e);
    Value eval_inner(const Expr& e);
    Value eval_attr(const Value& subject, const std::string& key);
    Value eval_item(const Value& subject, const Value& key);
    Value eval_call(const Expr& e);
    Value call_global(const Expr& e, const std::string& fn, const Args& args);
    Value call_macro(const Expr& e, const Macro& m, const Args& args);
    Args eval_args(const Expr& e);  // the call's positional and keyword arguments

    Value lookup(const std::string& name) const;
    void assign(const std::string& name, Value v);
    [[noreturn]] void fail(int line, const std::string& what) const;

    static constexpr size_t kMaxMacroDepth = 100;  // macro calls in progress
    size_t macro_depth_ = 0;
    // Statements run and loop turns taken in all: nested loops of range(100000) each would
    // otherwise hold the rank for hours (a template can come inside a checkpoint).
    static constexpr uint64_t kMaxSteps = 2000000;
    uint64_t steps_ = 0;
    // Bytes of the strings and lists expressions made, in all (eval(), measure_bytes).
    static constexpr uint64_t kMaxBuiltTotal = uint64_t{1} << 30;
    uint64_t built_ = 0;
    // The lowest stack address eval and exec may reach: half of what the thread had left below
    // run()'s frame. Expressions inside blocks inside macro calls nest the C++ stack as their
    // product, which the per-kind limits above do not bound; a thread's stack may be 2 MiB or less
    // (the server's threads under `ulimit -s unlimited`).
    uintptr_t stack_floor_ = 0;
    size_t stack_budget_ = 0;
    void check_stack(int line) const;  // fails below stack_floor_
    void step(int line, const std::string& out);  // one more step; fails past kMaxSteps, or past kMaxBuilt bytes of out
    void step_output(int line, const std::string& out) const;  // fails past kMaxBuilt bytes of out

    const std::string& name_;
    const RenderOptions& options_;
    std::vector<Frame> frames_;  // [0] the caller's variables, [1] the template's top level
};

}  // namespace tpx::chat
