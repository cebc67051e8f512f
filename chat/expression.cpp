// Parses expressions with Jinja2's operator precedence, lowest first: a if c else b; or; and;
// not; comparisons and in; + -; ~; * / // %; **; unary - +; then primaries with .attr [index]
// [a:b:c] (call), | filter and "is" test. Unknown filters, tests and methods are refused here.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <map>

#include "chat/parse_state.h"

namespace tpx::chat {

ExprPtr Parser::parse_tuple_or_expr() {
    int line = cur().line;
    ExprPtr e = parse_expr();
    if (!is_op(",")) return e;
    auto tuple = make(Expr::Kind::Tuple, line);
    tuple->args.push_back(std::move(e));
    while (is_op(",")) {
        ++p_;
        if (cur().type == T::BlockEnd || cur().type == T::VarEnd || is_op(")")) break;
        tuple->args.push_back(parse_expr());
    }
    return check_depth(std::move(tuple));
}

ExprPtr Parser::parse_expr() {
    ExprPtr e = parse_or();
    while (is_name("if")) {
        int line = cur().line;
        ++p_;
        auto c = make(Expr::Kind::Cond, line);
        c->a = std::move(e);
        c->b = parse_or();
        if (is_name("else")) {
            ++p_;
            c->c = parse_expr();
        }
        e = check_depth(std::move(c));
    }
    return e;
}

ExprPtr Parser::parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
        auto o = make(Expr::Kind::Or, cur().line);
        ++p_;
        o->a = std::move(e);
        o->b = parse_and();
        e = check_depth(std::move(o));
    }
    return e;
}

ExprPtr Parser::parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
        auto o = make(Expr::Kind::And, cur().line);
        ++p_;
        o->a = std::move(e);
        o->b = parse_not();
        e = check_depth(std::move(o));
    }
    return e;
}

ExprPtr Parser::parse_not() {
    if (is_name("not")) {
        auto n = make(Expr::Kind::Not, cur().line);
        ++p_;
        DepthGuard guard(*this, n->line);  // "not not not ..." recurses here
        n->a = parse_not();
        return check_depth(std::move(n));
    }
    return parse_compare();
}

ExprPtr Parser::parse_compare() {
    static const std::map<std::string, BinOp> kCmp = {{"==", BinOp::Eq}, {"!=", BinOp::Ne},
        {"<", BinOp::Lt}, {"<=", BinOp::Le}, {">", BinOp::Gt}, {">=", BinOp::Ge}};
    // Python's chains: a < b < c is (a < b) and (b < c), b evaluated once.
    auto chain = make(Expr::Kind::Chain, cur().line);
    chain->args.push_back(parse_math1());
    while (true) {
        BinOp op;
        if (cur().type == T::Op && kCmp.count(cur().text)) {
            op = kCmp.at(cur().text);
            ++p_;
        } else if (is_name("in")) {
            op = BinOp::In;
            ++p_;
        } else if (is_name("not") && peek().type == T::Name && peek().text == "in") {
            op = BinOp::NotIn;
            p_ += 2;
        } else {
            break;
        }
        chain->ops.push_back(op);
        chain->args.push_back(parse_math1());
    }
    if (chain->ops.empty()) return std::move(chain->args[0]);
    if (chain->ops.size() > 1) return check_depth(std::move(chain));
    auto b = make(Expr::Kind::Binary, chain->line);
    b->op = chain->ops[0];
    b->a = std::move(chain->args[0]);
    b->b = std::move(chain->args[1]);
    return check_depth(std::move(b));
}

ExprPtr Parser::parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
        auto b = make(Expr::Kind::Binary, cur().line);
        b->op = cur().text == "+" ? BinOp::Add : BinOp::Sub;
        ++p_;
        b->a = std::move(e);
        b->b = parse_concat();
        e = check_depth(std::move(b));
    }
    return e;
}

ExprPtr Parser::parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
        auto b = make(Expr::Kind::Binary, cur().line);
        b->op = BinOp::Concat;
        ++p_;
        b->a = std::move(e);
        b->b = parse_math2();
        e = check_depth(std::move(b));
    }
    return e;
}

ExprPtr Parser::parse_math2() {
    static const std::map<std::string, BinOp> kOps = {
        {"*", BinOp::Mul}, {"/", BinOp::Div}, {"//", BinOp::FloorDiv}, {"%", BinOp::Mod}};
    ExprPtr e = parse_pow();
    while (cur().type == T::Op && kOps.count(cur().text)) {
        auto b = make(Expr::Kind::Binary, cur().line);
        b->op = kOps.at(cur().text);
        ++p_;
        b->a = std::move(e);
        b->b = parse_pow();
        e = check_depth(std::move(b));
    }
    return e;
}

ExprPtr Parser::parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
        auto b = make(Expr::Kind::Binary, cur().line);
        b->op = BinOp::Pow;
        ++p_;
        b->a = std::move(e);
        b->b = parse_unary(true);
        e = check_depth(std::move(b));
    }
    return e;
}

ExprPtr Parser::parse_unary(bool with_filter) {
    // Every nested expression passes here: a bound keeps a hostile template off the stack's end.
    DepthGuard guard(*this, cur().line);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
        e = make(is_op("-") ? Expr::Kind::Neg : Expr::Kind::Pos, cur().line);
        ++p_;
        e->a = parse_unary(false);
        e = check_depth(std::move(e));
    } else {
        e = parse_postfix(parse_primary());
    }
    if (with_filter) return parse_filters(std::move(e));
    return e;
}

ExprPtr Parser::parse_primary() {
    const Token& tok = cur();
    int line = tok.line;
    switch (tok.type) {
    case T::String: {
        auto e = make(Expr::Kind::Literal, line);
        std::string s;
        while (cur().type == T::String) s += t_[p_++].text;  // adjacent literals concatenate
        e->literal = s;
        return e;
    }
    case T::Int:
    case T::Float: {
        auto e = make(Expr::Kind::Literal, line);
        errno = 0;
        if (tok.type == T::Int) {
            std::string digits;
            for (char ch : tok.text)
                if (ch != '_') digits += ch;
            const long long v = std::strtoll(digits.c_str(), nullptr, 10);
            if (errno == ERANGE) fail(line, "integer " + tok.text + " is past 64 bits (Python's integers are unbounded; a template's here are 64-bit)");
            e->literal = (int64_t)v;
        } else {
            e->literal = std::strtod(tok.text.c_str(), nullptr);  // past the range: inf or 0, as Python reads it
        }
        ++p_;
        return e;
    }
    case T::Name: {
        ++p_;
        auto e = make(Expr::Kind::Literal, line);
        if (tok.text == "true" || tok.text == "True") e->literal = true;
        else if (tok.text == "false" || tok.text == "False") e->literal = false;
        else if (tok.text == "none" || tok.text == "None") e->literal = nullptr;
        else { e->kind = Expr::Kind::Name; e->name = tok.text; }
        return e;
    }
    case T::Op:
        if (tok.text == "(") {
            ++p_;
            if (is_op(")")) { ++p_; return make(Expr::Kind::Tuple, line); }
            ExprPtr e = parse_tuple_or_expr();
            expect_op(")");
            return e;
        }
        if (tok.text == "[") {
            ++p_;
            auto e = make(Expr::Kind::List, line);
            while (!is_op("]")) {
                e->args.push_back(parse_expr());
                if (!is_op("]")) expect_op(",");
            }
            ++p_;
            return check_depth(std::move(e));
        }
        if (tok.text == "{") {
            ++p_;
            auto e = make(Expr::Kind::Dict, line);
            while (!is_op("}")) {
                e->args.push_back(parse_expr());
                expect_op(":");
                e->values.push_back(parse_expr());
                if (!is_op("}")) expect_op(",");
            }
            ++p_;
            return check_depth(std::move(e));
        }
        break;
    default: break;
    }
    fail(line, "unexpected " + describe(tok) + " in an expression");
}

void Parser::parse_call_args(Expr& call) {
    expect_op("(");
    while (!is_op(")")) {
        if (cur().type == T::Name && peek().type == T::Op && peek().text == "=") {
            std::string key = t_[p_].text;
            p_ += 2;
            call.kwargs.emplace_back(key, parse_expr());
        } else {
            if (is_op("*") || is_op("**")) fail(cur().line, "unsupported '*args' or '**kwargs' in a call");
            if (!call.kwargs.empty()) fail(cur().line, "positional argument after a keyword argument");
            call.args.push_back(parse_expr());
        }
        if (!is_op(")")) expect_op(",");
    }
    ++p_;
}

ExprPtr Parser::parse_postfix(ExprPtr e) {
    while (true) {
        int line = cur().line;
        if (is_op(".")) {
            ++p_;
            if (cur().type == T::Int) {  // foo.0 is foo[0] in Jinja2
                auto it = make(Expr::Kind::Item, line);
                it->a = std::move(e);
                it->b = make(Expr::Kind::Literal, line);
                errno = 0;
                it->b->literal = (int64_t)std::strtoll(t_[p_].text.c_str(), nullptr, 10);
                if (errno == ERANGE) fail(line, "index " + t_[p_].text + " is past 64 bits");
                ++p_;
                e = check_depth(std::move(it));
                continue;
            }
            std::string attr = expect_name();
            if (is_op("(")) {
                auto call = make(Expr::Kind::MethodCall, line);
                if (!find_method(attr, call->method)) fail(line, "unsupported method '." + attr + "()'");
                call->name = attr;
                call->a = std::move(e);
                parse_call_args(*call);
                e = check_depth(std::move(call));
            } else {
                auto a = make(Expr::Kind::Attr, line);
                a->name = attr;
                if (attr == "previtem" || attr == "nextitem")  // copied per iteration only when read
                    for (Stmt* loop : open_loops_) loop->loop_neighbours = true;
                a->a = std::move(e);
                e = check_depth(std::move(a));
            }
        } else if (is_op("[")) {
            ++p_;
            ExprPtr parts[3];
            bool slice = false;
            for (int k = 0; k < 3; ++k) {
                if (!is_op(":") && !is_op("]")) parts[k] = parse_expr();
                if (k < 2 && is_op(":")) { slice = true; ++p_; } else break;
            }
            expect_op("]");
            auto it = make(slice ? Expr::Kind::Slice : Expr::Kind::Item, line);
            it->a = std::move(e);
            if (!slice && !parts[0]) fail(line, "empty subscript '[]'");
            it->b = std::move(parts[0]);
            it->c = std::move(parts[1]);
            it->d = std::move(parts[2]);
            e = check_depth(std::move(it));
        } else if (is_op("(")) {
            auto call = make(Expr::Kind::Call, line);
            call->a = std::move(e);
            parse_call_args(*call);
            e = check_depth(std::move(call));
        } else {
            return e;
        }
    }
}

ExprPtr Parser::parse_filters(ExprPtr e) {
    while (true) {
        int line = cur().line;
        if (is_op("|")) {
            ++p_;
            std::string name = expect_name();
            auto call = make(Expr::Kind::Filter, line);
            if (!find_filter(name, call->filter)) fail(line, "unsupported filter '" + name + "'");
            call->name = name;
            call->a = std::move(e);
            if (is_op("(")) parse_call_args(*call);
            e = parse_postfix(check_depth(std::move(call)));
        } else if (is_name("is")) {
            ++p_;
            auto test = make(Expr::Kind::Test, line);
            if (is_name("not")) { test->negated = true; ++p_; }
            std::string name = cur().type == T::Name || cur().type == T::Op ? cur().text : "";
            if (!find_test(name, test->test)) fail(line, "unsupported test 'is " + describe(cur()) + "'");
            ++p_;
            test->name = name;
            test->a = std::move(e);
            if (is_op("(")) {
                parse_call_args(*test);
            } else if (cur().type == T::String || cur().type == T::Int || cur().type == T::Float ||
                       (cur().type == T::Name && !is_name("and") && !is_name("or") && !is_name("if") &&
                        !is_name("else") && !is_name("is") && !is_name("in") && !is_name("not"))) {
                test->args.push_back(parse_primary());  // "x is divisibleby 3", "x is sameas y"
            }
            e = check_depth(std::move(test));
        } else {
            return e;
        }
    }
}


}  // namespace tpx::chat
