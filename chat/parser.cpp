// Recursive-descent parser for the Jinja subset chat templates use. Precedence, lowest first,
// as in Jinja2's parser: a if c else b; or; and; not; comparisons and in; + -; ~; * / // %; **;
// unary - +; then primaries with .attr [index] (call) | filter and "is" test.
#include "chat/parser.h"

#include <map>

#include "chat/builtins.h"
#include "common/error.h"

namespace tpx::chat {
namespace {

std::unique_ptr<Stmt> new_stmt(Stmt::Kind kind, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = line;
    return s;
}

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
    void expect_block_end(const char* tag) {
        if (cur().type != T::BlockEnd)
            fail(cur().line, std::string("unexpected ") + describe(cur()) + " in '" + tag + "' tag");
        ++p_;
    }

    // Parses statements until a block tag whose name is in `ends`; leaves that name in `end`
    // and the position after it (its arguments follow).
    Body parse_body(const std::vector<std::string>& ends, std::string& end) {
        Body body;
        while (true) {
            const Token& tok = cur();
            if (tok.type == T::End) {
                if (!ends.empty()) fail(tok.line, "missing '{% " + ends.back() + " %}' before end of template");
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
    void parse_call_args(Expr& call);
};

std::unique_ptr<Stmt> Parser::parse_statement(const std::string& tag, int line) {
    if (tag == "if") return parse_if(line);
    if (tag == "for") return parse_for(line);
    if (tag == "set") return parse_set(line);
    if (tag == "macro") return parse_macro(line);
    if (tag == "break" || tag == "continue") {
        expect_block_end(tag.c_str());
        return new_stmt(tag == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue, line);
    }
    if (tag == "generation") {
        // HF's AssistantTracker tag marks assistant text for masks; rendering is its body as is.
        expect_block_end("generation");
        auto s = new_stmt(Stmt::Kind::If, line);
        auto yes = make(Expr::Kind::Literal, line);
        yes->literal = true;
        s->conditions.push_back(std::move(yes));
        std::string end;
        s->branches.push_back(parse_body({"endgeneration"}, end));
        expect_block_end("endgeneration");
        return s;
    }
    if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif")
        fail(line, "unexpected '{% " + tag + " %}' with no open block to close");
    fail(line, "unsupported tag '{% " + tag + " %}' (chat templates support if, for, set, macro, "
               "break, continue, generation)");
}

std::unique_ptr<Stmt> Parser::parse_if(int line) {
    auto s = new_stmt(Stmt::Kind::If, line);
    s->conditions.push_back(parse_tuple_or_expr());
    expect_block_end("if");
    while (true) {
        std::string end;
        Body body = parse_body({"elif", "else", "endif"}, end);
        if (end == "elif") {
            s->branches.push_back(std::move(body));
            s->conditions.push_back(parse_tuple_or_expr());
            expect_block_end("elif");
        } else if (end == "else") {
            s->branches.push_back(std::move(body));
            expect_block_end("else");
            s->else_body = parse_body({"endif"}, end);
            expect_block_end("endif");
            return s;
        } else {
            s->branches.push_back(std::move(body));
            expect_block_end("endif");
            return s;
        }
    }
}

std::unique_ptr<Stmt> Parser::parse_for(int line) {
    auto s = new_stmt(Stmt::Kind::For, line);
    s->names.push_back(expect_name());
    while (is_op(",")) {
        ++p_;
        s->names.push_back(expect_name());
    }
    if (!is_name("in")) fail(cur().line, "expected 'in' in '{% for %}', found " + describe(cur()));
    ++p_;
    s->expr = parse_or();  // Jinja2 stops the iterable before "if" (the loop filter)
    if (is_name("if")) {
        ++p_;
        s->target = parse_expr();
    }
    if (is_name("recursive")) fail(cur().line, "unsupported 'recursive' loop in '{% for %}'");
    expect_block_end("for");
    std::string end;
    s->branches.push_back(parse_body({"else", "endfor"}, end));
    if (end == "else") {
        expect_block_end("else");
        s->else_body = parse_body({"endfor"}, end);
    }
    expect_block_end("endfor");
    return s;
}

std::unique_ptr<Stmt> Parser::parse_set(int line) {
    auto s = new_stmt(Stmt::Kind::Set, line);
    std::string first = expect_name();
    if (is_op(".")) {  // {% set ns.attr = value %}
        ++p_;
        s->kind = Stmt::Kind::SetAttr;
        s->names.push_back(first);
        s->text = expect_name();
        expect_op("=");
        s->expr = parse_tuple_or_expr();
        expect_block_end("set");
        return s;
    }
    s->names.push_back(first);
    while (is_op(",")) {
        ++p_;
        s->names.push_back(expect_name());
    }
    if (cur().type == T::BlockEnd || is_op("|")) {  // {% set x %}...{% endset %}
        if (s->names.size() != 1) fail(line, "a block '{% set %}' takes one name");
        if (is_op("|")) fail(cur().line, "unsupported filter on a block '{% set %}'");
        ++p_;
        s->kind = Stmt::Kind::SetBlock;
        std::string end;
        s->branches.push_back(parse_body({"endset"}, end));
        expect_block_end("endset");
        return s;
    }
    expect_op("=");
    s->expr = parse_tuple_or_expr();
    expect_block_end("set");
    return s;
}

std::unique_ptr<Stmt> Parser::parse_macro(int line) {
    auto s = new_stmt(Stmt::Kind::Macro, line);
    s->text = expect_name();
    expect_op("(");
    while (!is_op(")")) {
        s->names.push_back(expect_name());
        if (is_op("=")) {
            ++p_;
            s->defaults.push_back(parse_expr());
        } else {
            s->defaults.push_back(nullptr);
        }
        if (!is_op(")")) expect_op(",");
    }
    ++p_;
    expect_block_end("macro");
    std::string end;
    s->branches.push_back(parse_body({"endmacro"}, end));
    expect_block_end("endmacro");
    return s;
}

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
    return tuple;
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
        e = std::move(c);
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
        e = std::move(o);
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
        e = std::move(o);
    }
    return e;
}

ExprPtr Parser::parse_not() {
    if (is_name("not")) {
        auto n = make(Expr::Kind::Not, cur().line);
        ++p_;
        n->a = parse_not();
        return n;
    }
    return parse_compare();
}

ExprPtr Parser::parse_compare() {
    static const std::map<std::string, BinOp> kCmp = {{"==", BinOp::Eq}, {"!=", BinOp::Ne},
        {"<", BinOp::Lt}, {"<=", BinOp::Le}, {">", BinOp::Gt}, {">=", BinOp::Ge}};
    ExprPtr e = parse_math1();
    while (true) {
        int line = cur().line;
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
            return e;
        }
        auto b = make(Expr::Kind::Binary, line);
        b->op = op;
        b->a = std::move(e);
        b->b = parse_math1();
        e = std::move(b);
    }
}

ExprPtr Parser::parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
        auto b = make(Expr::Kind::Binary, cur().line);
        b->op = cur().text == "+" ? BinOp::Add : BinOp::Sub;
        ++p_;
        b->a = std::move(e);
        b->b = parse_concat();
        e = std::move(b);
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
        e = std::move(b);
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
        e = std::move(b);
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
        e = std::move(b);
    }
    return e;
}

ExprPtr Parser::parse_unary(bool with_filter) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
        e = make(is_op("-") ? Expr::Kind::Neg : Expr::Kind::Pos, cur().line);
        ++p_;
        e->a = parse_unary(false);
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
        if (tok.type == T::Int) e->literal = std::stoll(tok.text);
        else e->literal = std::stod(tok.text);
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
            return e;
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
            return e;
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
                it->b->literal = std::stoll(t_[p_++].text);
                e = std::move(it);
                continue;
            }
            std::string attr = expect_name();
            if (is_op("(")) {
                auto call = make(Expr::Kind::MethodCall, line);
                if (!find_method(attr, call->method)) fail(line, "unsupported method '." + attr + "()'");
                call->name = attr;
                call->a = std::move(e);
                parse_call_args(*call);
                e = std::move(call);
            } else {
                auto a = make(Expr::Kind::Attr, line);
                a->name = attr;
                a->a = std::move(e);
                e = std::move(a);
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
            e = std::move(it);
        } else if (is_op("(")) {
            auto call = make(Expr::Kind::Call, line);
            call->a = std::move(e);
            parse_call_args(*call);
            e = std::move(call);
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
            e = parse_postfix(std::move(call));
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
            e = std::move(test);
        } else {
            return e;
        }
    }
}

}  // namespace

Body parse_template(const std::vector<Token>& tokens, const std::string& name) {
    return Parser(tokens, name).parse_all();
}

}  // namespace tpx::chat
