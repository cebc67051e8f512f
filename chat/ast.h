// The parsed form of a chat template: statements holding expressions. Filters, tests and
// methods are resolved to enums when parsing, so rendering never compares names for them and an
// unknown one is refused at load time with its line.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace tpx::chat {

enum class Filter {
    Abs, Capitalize, Default, Dictsort, Escape, First, Float, Indent, Int, Items, Join, Last,
    Length, List, Lower, Map, Max, Min, Reject, Rejectattr, Replace, Reverse, Round, Safe,
    Select, Selectattr, Sort, String, Sum, Title, Tojson, Trim, Unique, Upper, Wordcount
};
enum class Test {
    Boolean, Callable, Defined, Divisibleby, Eq, Even, False, Float, Ge, Gt, In, Integer,
    Iterable, Le, Lower, Lt, Mapping, Ne, None, Number, Odd, Sequence, String, True, Undefined,
    Upper
};
enum class Method {
    Capitalize, Count, Endswith, Find, Format, Get, Items, Join, Keys, Lower, Lstrip, Replace,
    Rfind, Rsplit, Rstrip, Split, Startswith, Strip, Title, Upper, Values
};
enum class BinOp { Add, Sub, Mul, Div, FloorDiv, Mod, Pow, Concat, Eq, Ne, Lt, Le, Gt, Ge, In, NotIn };

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
    enum class Kind {
        Literal, Name, List, Tuple, Dict, Attr, Item, Slice, Call, MethodCall, Filter, Test,
        Neg, Pos, Not, And, Or, Binary, Cond, Chain
    };
    Kind kind = Kind::Literal;
    int line = 0;
    nlohmann::ordered_json literal;    // Literal
    std::string name;          // Name, Attr, MethodCall, Filter and Test (for messages)
    BinOp op = BinOp::Add;     // Binary
    std::vector<BinOp> ops;    // Chain: a comparison chain args[0] ops[0] args[1] ops[1] ... (Python's a < b < c)
    Filter filter = Filter::Abs;
    Test test = Test::Defined;
    Method method = Method::Get;
    bool negated = false;      // "is not"
    ExprPtr a, b, c;           // operands: object, index/operand, else-branch; slice a[b:c:d]
    ExprPtr d;
    std::vector<ExprPtr> args;                              // items, call arguments, dict keys
    std::vector<std::pair<std::string, ExprPtr>> kwargs;    // keyword arguments
    std::vector<ExprPtr> values;                            // Dict values
    int depth = 1;                                          // the tree's height (Parser::check_depth)
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
    enum class Kind { Text, Output, If, For, Set, SetAttr, SetBlock, FilterBlock, Macro, Break, Continue };
    Kind kind = Kind::Text;
    int line = 0;
    std::string text;                  // Text; SetAttr's attribute
    ExprPtr expr;                      // Output, Set value, For iterable, SetAttr value, FilterBlock filter
    ExprPtr target;                    // SetAttr object; For filter condition
    std::vector<std::string> names;    // For and Set targets, Macro parameters' names
    std::vector<ExprPtr> conditions;   // If: one per branch (elif included)
    std::vector<Body> branches;        // If branches; For, Macro, SetBlock, FilterBlock body
    Body else_body;                    // If else, For else
    std::vector<ExprPtr> defaults;     // Macro parameter defaults (null when none)
    bool loop_neighbours = false;      // For: the body reads loop.previtem or loop.nextitem
};

// A macro defined by a render: its statements belong to the parsed template, which outlives it.
struct Macro {
    std::string name;
    const Stmt* def = nullptr;
};

}  // namespace tpx::chat
