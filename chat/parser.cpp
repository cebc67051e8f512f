// Parses template tokens into statements: if/elif/else, for (with loop filter and else), set
// (names, tuples, namespace attributes, blocks), macro, filter blocks, break/continue and HF's
// generation tag. Any other tag is refused here with its line.
#include "chat/parser.h"

#include "chat/parse_state.h"

namespace tpx::chat {

std::unique_ptr<Stmt> new_stmt(Stmt::Kind kind, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = line;
    return s;
}


std::unique_ptr<Stmt> Parser::parse_statement(const std::string& tag, int line) {
    if (tag == "if") return parse_if(line);
    if (tag == "for") return parse_for(line);
    if (tag == "set") return parse_set(line);
    if (tag == "macro") return parse_macro(line);
    if (tag == "filter") {  // {% filter trim %}...{% endfilter %}: the body's text through a filter
        auto s = new_stmt(Stmt::Kind::FilterBlock, line);
        auto placeholder = make(Expr::Kind::Literal, line);
        placeholder->literal = "";
        s->expr = parse_filters_after(std::move(placeholder));
        expect_block_end("filter");
        std::string end;
        s->branches.push_back(parse_body({"endfilter"}, end));
        expect_block_end("endfilter");
        return s;
    }
    if (tag == "break" || tag == "continue") {
        // Jinja2 refuses these at compile time too (a macro's body is a function of its own).
        if (loop_bodies_ == 0) fail(line, "'{% " + tag + " %}' outside a for loop");
        expect_block_end(tag.c_str());
        return new_stmt(tag == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue, line);
    }
    if (tag == "generation") {
        // HF's AssistantTracker tag marks assistant text for masks; rendering is its body as is.
        expect_block_end("generation");
        const OwnFunction own(*this);  // Jinja2's call block: break and continue refused inside
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
               "filter, break, continue, generation)");
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
    s->names.push_back(expect_target());
    while (is_op(",")) {
        ++p_;
        s->names.push_back(expect_target());
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
    open_loops_.push_back(s.get());
    ++loop_bodies_;
    s->branches.push_back(parse_body({"else", "endfor"}, end));
    --loop_bodies_;
    open_loops_.pop_back();
    if (end == "else") {
        expect_block_end("else");
        s->else_body = parse_body({"endfor"}, end);
    }
    expect_block_end("endfor");
    return s;
}

std::unique_ptr<Stmt> Parser::parse_set(int line) {
    auto s = new_stmt(Stmt::Kind::Set, line);
    std::string first = expect_target();
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
        s->names.push_back(expect_target());
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
    s->text = expect_target();
    expect_op("(");
    while (!is_op(")")) {
        s->names.push_back(expect_target());
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
    const OwnFunction own(*this);
    s->branches.push_back(parse_body({"endmacro"}, end));
    expect_block_end("endmacro");
    return s;
}


Body parse_template(const std::vector<Token>& tokens, const std::string& name) {
    return Parser(tokens, name).parse_all();
}

}  // namespace tpx::chat
