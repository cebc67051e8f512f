// The parser's state and methods, shared by parser.cpp (statements) and expression.cpp
// (expressions). Internal to chat/: the rest of the code sees only parse_template().
#pragma once

#include <algorithm>

#include <memory>
#include <string>
#include <vector>

#include "chat/ast.h"
#include "chat/builtins.h"
#include "chat/lexer.h"
#include "common/error.h"

namespace tpx::chat {

std::unique_ptr<Stmt> new_stmt(Stmt::Kind kind, int line);

class Parser {
public:
    Parser(const std::vector<Token>& tokens, const std::string& name) : t_(tokens), name_(name) {}

    Body parse_all() {
        std::string end;
        Body body = parse_body({}, end);
        return body;
    }

private:
    using T = Token::Type;
    const std::vector<Token>& t_;
    const std::string& name_;
    size_t p_ = 0;
    std::vector<Stmt*> open_loops_;  // for-loops being parsed, to mark those reading loop neighbours
    // For-loop bodies open around the statement being parsed, counted from the innermost macro or
    // generation body (functions of their own in Jinja2, whose loops around are not theirs):
    // where break and continue may stand. OwnFunction starts the count afresh.
    int loop_bodies_ = 0;
    struct OwnFunction {
        Parser& p;
        int saved;
        explicit OwnFunction(Parser& parser) : p(parser), saved(parser.loop_bodies_) { p.loop_bodies_ = 0; }
        ~OwnFunction() { p.loop_bodies_ = saved; }
    };

    const Token& cur() const { return t_[p_]; }
    const Token& peek(size_t k = 1) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
    bool is_op(const char* op) const { return cur().type == T::Op && cur().text == op; }
    bool is_name(const char* n) const { return cur().type == T::Name && cur().text == n; }

    [[noreturn]] void fail(int line, const std::string& what) const {
        throw JobError(at(name_, line, 0, what));
    }
    std::string describe(const Token& t) const {
        switch (t.type) {
        case T::End: return "end of template";
        case T::BlockEnd: return "'%}'";
        case T::VarEnd: return "'}}'";
        case T::Text: return "text";
        case T::String: return "string '" + t.text + "'";
        default: return "'" + t.text + "'";
        }
    }
    void expect_op(const char* op) {
        if (!is_op(op)) fail(cur().line, std::string("expected '") + op + "', found " + describe(cur()));
        ++p_;
    }
    std::string expect_name() {
        if (cur().type != T::Name) fail(cur().line, "expected a name, found " + describe(cur()));
        return t_[p_++].text;
    }
    // A name that a set, a for or a macro assigns: Jinja2 refuses its constants there.
    std::string expect_target() {
        static const char* const kConstants[] = {"true", "false", "none", "True", "False", "None"};
        for (const char* c : kConstants)
            if (is_name(c)) fail(cur().line, std::string("cannot assign to the constant '") + c + "'");
        return expect_name();
    }
    void expect_block_end(const char* tag) {
        if (cur().type != T::BlockEnd)
            fail(cur().line, std::string("unexpected ") + describe(cur()) + " in '" + tag + "' tag");
        ++p_;
    }

    // Parses statements until a block tag whose name is in `ends`; leaves that name in `end`
    // and the position after it (its arguments follow).
    // Nesting of expressions and blocks; real templates stay under 20.
    static constexpr int kMaxDepth = 200;
    int depth_ = 0;
    struct DepthGuard {
        Parser& p;
        DepthGuard(Parser& parser, int line) : p(parser) {
            if (++p.depth_ > kMaxDepth) p.fail(line, "template nested deeper than " + std::to_string(kMaxDepth) + " levels");
        }
        ~DepthGuard() { --p.depth_; }
    };

    Body parse_body(const std::vector<std::string>& ends, std::string& end) {
        const int opened = p_ > 0 ? t_[p_ - 1].line : 1;  // the line of the opening tag's '%}'
        DepthGuard guard(*this, opened);
        Body body;
        while (true) {
            const Token& tok = cur();
            if (tok.type == T::End) {
                if (!ends.empty())
                    fail(tok.line, "missing '{% " + ends.back() + " %}' before end of template (the block opens on line " + std::to_string(opened) + ")");
                return body;
            }
            if (tok.type == T::Text) {
                auto s = new_stmt(Stmt::Kind::Text, tok.line);
                s->text = tok.text;
                body.push_back(std::move(s));
                ++p_;
            } else if (tok.type == T::VarBegin) {
                ++p_;
                auto s = new_stmt(Stmt::Kind::Output, tok.line);
                s->expr = parse_tuple_or_expr();
                if (cur().type != T::VarEnd) fail(cur().line, "unexpected " + describe(cur()) + " in '{{ }}'");
                ++p_;
                body.push_back(std::move(s));
            } else {
                ++p_;  // BlockBegin
                int line = cur().line;
                std::string tag = expect_name();
                for (const std::string& e : ends)
                    if (tag == e) { end = tag; return body; }
                body.push_back(parse_statement(tag, line));
            }
        }
    }

    std::unique_ptr<Stmt> parse_statement(const std::string& tag, int line);
    std::unique_ptr<Stmt> parse_if(int line);
    std::unique_ptr<Stmt> parse_for(int line);
    std::unique_ptr<Stmt> parse_set(int line);
    std::unique_ptr<Stmt> parse_macro(int line);

    ExprPtr make(Expr::Kind k, int line) { auto e = std::make_unique<Expr>(); e->kind = k; e->line = line; return e; }
    // `e` with its operands attached: its height checked, since evaluating (and freeing) the tree
    // recurses once a level. Operator chains ("1 + 1 + ...", "x|trim|trim...") grow it without
    // nesting the source; real templates stay under 20.
    static constexpr int kMaxExprDepth = 1000;
    ExprPtr check_depth(ExprPtr e) {
        int d = 0;
        for (const ExprPtr* c : {&e->a, &e->b, &e->c, &e->d})
            if (*c) d = std::max(d, (*c)->depth);
        for (const ExprPtr& x : e->args) d = std::max(d, x->depth);
        for (const ExprPtr& x : e->values) d = std::max(d, x->depth);
        for (const auto& kw : e->kwargs) d = std::max(d, kw.second->depth);
        e->depth = d + 1;
        if (e->depth > kMaxExprDepth) fail(e->line, "expression deeper than " + std::to_string(kMaxExprDepth) + " operations");
        return e;
    }
    ExprPtr parse_tuple_or_expr();
    ExprPtr parse_expr();
    ExprPtr parse_or();
    ExprPtr parse_and();
    ExprPtr parse_not();
    ExprPtr parse_compare();
    ExprPtr parse_math1();
    ExprPtr parse_concat();
    ExprPtr parse_math2();
    ExprPtr parse_pow();
    ExprPtr parse_unary(bool with_filter);
    ExprPtr parse_primary();
    ExprPtr parse_postfix(ExprPtr e);
    ExprPtr parse_filters(ExprPtr e);
    // The filters of a {% filter %} tag: "trim", "indent(2)|upper" (no "|" before the first).
    ExprPtr parse_filters_after(ExprPtr subject) {
        int line = cur().line;
        std::string name = expect_name();
        auto call = make(Expr::Kind::Filter, line);
        if (!find_filter(name, call->filter)) fail(line, "unsupported filter '" + name + "'");
        call->name = name;
        call->a = std::move(subject);
        if (is_op("(")) parse_call_args(*call);
        return parse_filters(std::move(call));
    }
    void parse_call_args(Expr& call);
};

}  // namespace tpx::chat
