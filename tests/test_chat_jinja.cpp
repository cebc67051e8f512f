// chat/'s Jinja interpreter, case by case: Jinja2's semantics with expected strings worked out by
// hand from Jinja2's rules and checked with Python jinja2 3.1.6 in HF's configuration
// (trim_blocks, lstrip_blocks), its errors, and the bounds on what a template may take.
// test_chat.cpp checks real templates against Python jinja2 and @huggingface/jinja.
#include <gtest/gtest.h>
#include <pthread.h>

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

#include "chat/template.h"
#include "common/error.h"

using json = nlohmann::ordered_json;
using tpx::chat::ChatTemplate;
using tpx::chat::RenderOptions;

namespace {

std::string render(const std::string& source, const json& vars = json::object(), const json& messages = json::array()) {
    RenderOptions options;
    options.variables = vars;
    return ChatTemplate::parse(source, "t.jinja").render(messages, options);
}

// The message of the exit-2 error a template raises at parse or render time ("" if none).
std::string error_of(const std::string& source, const json& vars = json::object()) {
    try {
        render(source, vars);
    } catch (const tpx::JobError& e) {
        EXPECT_EQ(e.exit_code(), tpx::kExitBadInput);
        return e.what();
    }
    return "";
}

}  // namespace

TEST(ChatJinja, WhitespaceControlAsHfConfiguresJinja2) {
    // trim_blocks drops the newline after a block tag; lstrip_blocks the indent before one.
    EXPECT_EQ(render("{% if true %}\n  yes\n{% endif %}\nend"), "  yes\nend");
    EXPECT_EQ(render("a\n    {% if true %}\nb\n    {% endif %}\nc"), "a\nb\nc");
    // "-" strips all whitespace on its side, newlines included; variables are not trimmed.
    EXPECT_EQ(render("a  \n {{- 'b' -}} \n\n c"), "abc");
    EXPECT_EQ(render("{{ 'x' }}\ny"), "x\ny");
    // "+" keeps what trim/lstrip would remove; comments trim like blocks.
    EXPECT_EQ(render("  {%+ if true %}a{% endif +%}\nb"), "  a\nb");
    EXPECT_EQ(render("a\n  {# note #}\nb"), "a\nb");
    // One trailing newline of the source is dropped (keep_trailing_newline=False); \r\n reads as \n.
    EXPECT_EQ(render("x\n"), "x");
    EXPECT_EQ(render("x\r\ny\n\n"), "x\ny\n");
}

TEST(ChatJinja, LoopsAndTheirLoopVariable) {
    EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
                     "{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", {{"xs", {"a", "b"}}}),
              "1021TrueFalse2;2110FalseTrue2;");
    // The loop filter runs first, so loop.length counts the kept items; else runs on no items.
    EXPECT_EQ(render("{% for x in xs if x > 1 %}{{ x }}/{{ loop.length }} {% endfor %}", {{"xs", {1, 2, 3}}}), "2/2 3/2 ");
    EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
    EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", {{"d", {{"a", 1}, {"b", "z"}}}}), "a=1,b=z,");
    EXPECT_EQ(render("{% for c in 'h\xc3\xa9' %}[{{ c }}]{% endfor %}"), "[h][\xc3\xa9]");
    EXPECT_EQ(render("{% for x in range(5) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}"
                     "{{ x }}{% endfor %}"), "02");
    EXPECT_EQ(render("{% for x in [1,2,3] %}{{ loop.previtem }}{{ loop.nextitem }}|{% endfor %}"), "2|13|2|");
    // A break or continue inside a set or filter block leaves that block's text unused, as Python
    // jinja2 renders these; one in a loop's else belongs to the loop around it.
    EXPECT_EQ(render("{% for i in [1,2] %}{% set x %}{% break %}{% endset %}{{ i }}{% endfor %}"), "");
    EXPECT_EQ(render("{% for i in [1,2,3] %}{% set x %}{{ i }}{% if i == 2 %}{% continue %}{% endif %}{% endset %}{{ x }}{% endfor %}"), "13");
    EXPECT_EQ(render("{% for i in [1,2,3] %}{% filter upper %}a{{ i }}{% if i == 2 %}{% break %}{% endif %}{% endfilter %}{% endfor %}"), "A1");
    EXPECT_EQ(render("{% for i in [1,2,3] %}{% filter upper %}a{{ i }}{% if i == 2 %}{% continue %}{% endif %}{% endfilter %}{% endfor %}"), "A1A3");
    EXPECT_EQ(render("{% for j in [1,2] %}{{ j }}{% for i in [] %}{% else %}{% break %}{% endfor %}{% endfor %}"), "1");
    EXPECT_EQ(render("{% macro m() %}{% for i in [1,2] %}{{ i }}{% break %}{% endfor %}{% endmacro %}{{ m() }}"), "1");
}

TEST(ChatJinja, ScopesAndNamespaces) {
    // A set in a loop body lasts one iteration and never leaks out; a namespace is shared.
    EXPECT_EQ(render("{% set x = 5 %}{% for m in [1, 2] %}{{ x }}{% set x = m %}{{ x }}{% endfor %}{{ x }}"), "51525");
    EXPECT_EQ(render("{% set ns = namespace(n=0, s='') %}{% for m in [1, 2, 3] %}{% set ns.n = ns.n + m %}"
                     "{% set ns.s = ns.s ~ m %}{% endfor %}{{ ns.n }} {{ ns.s }}"), "6 123");
    EXPECT_EQ(render("{% set a, b = 1, 'two' %}{{ b }}{{ a }}"), "two1");
    EXPECT_EQ(render("{% set block %}in {{ 'side' }}{% endset %}[{{ block }}]"), "[in side]");
    // A filter block (Firefunction's template trims its system text so) filters its body's text.
    EXPECT_EQ(render("[{% filter trim %}\n  body {{ 1 }}  \n{% endfilter %}][{% filter upper|replace('A', 'a') %}abc{% endfilter %}]"),
              "[body 1][aBC]");
    // A macro sees the top level at call time, its own parameters and defaults, not loop variables.
    EXPECT_EQ(render("{% macro f(a, b='q') %}{{ a }}{{ b }}{{ y }}{% endmacro %}{% set y = 7 %}{{ f(1) }}{{ f(1, b=2) }}"),
              "1q7127");
}

TEST(ChatJinja, ExpressionsFollowPython) {
    EXPECT_EQ(render("{{ 1/2 }} {{ 4/2 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ 1e20 }} {{ 0.1+0.2 }}"),
              "0.5 2.0 3 -4 2 1024 1e+20 0.30000000000000004");
    EXPECT_EQ(render("{{ [1, 'a', none, true, 1.5, {'k': 'v'}] }} {{ none }} {{ 'x' * 3 }}"),
              "[1, 'a', None, True, 1.5, {'k': 'v'}] None xxx");
    EXPECT_EQ(render("{{ 'abc'[::-1] }} {{ [1,2,3][1:] }} {{ 'h\xc3\xa9llo'[1:3] }} {{ xs[-1] }}", {{"xs", {1, 2}}}),
              "cba [2, 3] \xc3\xa9l 2");
    EXPECT_EQ(render("{{ 'a' if false else 'b' }}{{ 'c' if true }}{{ 'x' if false }}|{{ 1 ~ 2 }}{{ 'b' in 'abc' }}"
                     "{{ 3 not in [1, 2] }}{{ not 1 == 2 }}"), "bc|12TrueTrueTrue");
    // "|" binds tighter than "+": a + b|trim is a + (b|trim), as chat templates rely on.
    EXPECT_EQ(render("{{ '<' + ' x '|trim + '>' }}"), "<x>");
    EXPECT_EQ(render("{{ 1 == 1.0 }}{{ true == 1 }}{{ 'ab' < 'b' }}{{ [] or 'e' }}{{ 0 and 1 }}"), "TrueTrueTrue" "e0");
    EXPECT_EQ(render("{{ 2 ** -1 }} {{ 2.0 ** 0.5 }} {{ (-8) ** 2.0 }} {{ (-2.0) ** 3 }} {{ 0 ** 0 }}"), "0.5 1.4142135623730951 64.0 -8.0 1");
    // str.startswith and endswith within s[start:end], in code points, as CPython's (a start past
    // the end matches nothing, not even '').
    EXPECT_EQ(render("{{ 'abc'.startswith('b', 1) }}{{ 'abc'.startswith('', 4) }}{{ 'abc'.startswith('', 3) }}"
                     "{{ 'abc'.endswith('b', 0, 2) }}{{ 'abc'.startswith(('x', 'c'), -1) }}{{ 'h\xc3\xa9" "ab'.startswith('a', 2) }}"
                     "{{ 'abc'.endswith('', 1, 0) }}{{ 'abc'.startswith('a', -10) }}{{ 'abc'.endswith('bc', -2, 10) }}"
                     "{{ 'abc'.startswith('a', none) }}{{ 'abc'.startswith(('a', 1)) }}"),
              "TrueFalseTrueTrueTrueTrueFalseTrueTrueTrueTrue");
    // Escapes: octal of one to three digits, \a \b \f \v, \x \u \U of exactly 2, 4 and 8 digits,
    // unknown ones kept as written.
    EXPECT_EQ(render("{{ '\\101|\\0|\\012|\\7|\\777|\\0000|\\a\\b\\f\\v|\\x41\\u00e9\\U0001F600|\\q\\8'|tojson }}"),
              "\"A|\\u0000|\\n|\\u0007|\xc7\xbf|\\u00000|\\u0007\\b\\f\\u000b|A\xc3\xa9\xf0\x9f\x98\x80|\\\\q\\\\8\"");
    // str.format's fields as Jinja2's sandboxed formatter looks them up: a missing key or index
    // prints nothing; [digits] is an index, never a dict's key; !r !s !a.
    EXPECT_EQ(render("{{ '{0[5]}|{0[0]}{0[-1]}|{0[1]}'.format('ab') }}|{{ '{0.zz}{0[a]}{0[1]}'.format({'a': 1, '1': 7}) }}"
                     "|{{ '{a[0][b]}{a[0].b}'.format(a=[{'b': 'x'}]) }}|{{ '{!r}{!s}{!a}'.format('\xc3\xa9', 'x', '\xc3\xa9\xf0\x9f\x98\x80') }}"
                     "|{{ '{{}}{}{{'.format(1) }}|{{ '{}'.format(nothing) }}{{ '{!r}'.format(nothing) }}"),
              "|a|b|1|xx|'\xc3\xa9'x'\\xe9\\U0001f600'|{}1{|Undefined");
    // Only a field that is exactly {} or {digits} counts toward the numbering; an index reads any
    // number of leading zeros; an empty spec is no spec.
    EXPECT_EQ(render("{{ '{0[0]}{}'.format('ab') }}|{{ '{}{0[0]}'.format('ab') }}|{{ '{0[000000000000000000000]}'.format(['a']) }}"
                     "|{{ '{:}{!r:}'.format('a', 'a') }}"),
              "aab|aba|a|a'a'");
    // Python's repr escapes what str.isprintable() refuses; a backslash before a non-ASCII
    // character reads as that character's escape (Jinja2 backslash-replaces the literal first).
    EXPECT_EQ(render("{{ ['\\u00a0', '\\u200b', '\xc3\xa9', '\\x00'] }}|{{ '\\\xc3\xa9|\\\xe2\x82\xac'|length }}{{ '\\\xc3\xa9' }}"),
              "['\\xa0', '\\u200b', '\xc3\xa9', '\\x00']|11\\xe9");
    // find, rfind and count take the same start and end (positions still counted from the start).
    EXPECT_EQ(render("{{ 'abc'.find('b', 1) }} {{ 'abc'.find('b', 2) }} {{ 'abcb'.rfind('b', 0, 3) }} {{ 'abcb'.rfind('b', -1) }}"
                     " {{ 'abc'.find('', 3) }} {{ 'abc'.find('', 4) }} {{ 'abc'.count('', 4) }} {{ 'abc'.count('', 1) }}"
                     " {{ '\xc3\xa9' 'bcb'.find('b', 2) }} {{ 'abcabc'.count('b', 0, -2) }} {{ 'abc'.find('a', none, 2) }}"),
              "1 -1 1 3 3 -1 0 3 3 1 0");
    // Infinite operands take Python's float pow rules.
    EXPECT_EQ(render("{{ (-1e308 * 10) ** 0.5 }} {{ (-1e308 * 10) ** -0.5 }} {{ 0 ** (-1e308 * 10) }}"), "inf 0.0 inf");
}

// Python's answers (jinja2 3.1 in transformers' sandbox) where 64-bit arithmetic, a loop's
// step or a chain of comparisons could go another way; what Python would answer with an integer
// past 64 bits, or a sandbox limit, is refused by name rather than wrapped or left to crash.
TEST(ChatJinja, IntegersSlicesAndChainsAsPython) {
    EXPECT_EQ(render("{{ 3 > 2 > 1 }}|{{ 1 < 3 < 2 }}|{{ 2 == 2 == 2 }}|{{ 1 != 2 != 1 }}|{{ 1 in [1] in [[1]] }}|{{ 1 < 2 == 2 }}"),
              "True|False|True|True|True|True");
    EXPECT_EQ(render("{{ (-9223372036854775807 - 1) % -1 }}|{{ (-2) ** 63 }}|{{ 1 ** 1000000000000 }}|{{ 0 ** 5 }}|{{ 2 ** 62 }}"),
              "0|-9223372036854775808|1|0|4611686018427387904");
    EXPECT_EQ(render("{{ [1,2,3][1:9223372036854775807:9223372036854775807] }}|{{ 'abc'[2:9223372036854775807:9223372036854775806] }}"
                     "|{{ 'abcdef'[::-2] }}|{{ [1,2,3,4][-1:0:-1] }}|{{ [1,2,3][::-9223372036854775807] }}"),
              "[2]|c|fdb|[4, 3, 2]|[3]");
    EXPECT_EQ(render("{{ range(-9223372036854775807 - 1, 9223372036854775807, 4611686018427387904) | list }}|{{ range(100000) | length }}"),
              "[-9223372036854775808, -4611686018427387904, 0, 4611686018427387904]|100000");
    EXPECT_EQ(render("{{ 1|round }}|{{ 7|round(-1) }}|{{ 15|round(-1) }}|{{ 25|round(-1) }}|{{ 12345.678|round(-2) }}|{{ 2.675|round(2) }}"
                     "|{{ 1.5|round(0, 'floor') }}"),
              "1|10|20|20|12300.0|2.67|1.0");
    EXPECT_EQ(render("{{ '0x1A'|int }}|{{ ' 12 '|int }}|{{ '3.7'|int }}|{{ 'nan'|float|int }}|{{ 1e999 }}|{{ 'ab'|indent(-5) }}"), "0|12|3|0|inf|ab");
    const std::pair<std::string, std::string> refused[] = {
        {"{{ (-9223372036854775807 - 1) // -1 }}", "integer overflow: -9223372036854775808 // -1 is past 64 bits"},
        {"{{ 2 ** 64 }}", "integer overflow: 2 ** 64"},
        {"{{ 9223372036854775807 + 1 }}", "integer overflow: 9223372036854775807 + 1"},
        {"{{ 9223372036854775807 * 2 }}", "integer overflow"},
        {"{{ -(-9223372036854775807 - 1) }}", "integer overflow: -(-9223372036854775808)"},
        {"{{ (-9223372036854775807 - 1)|abs }}", "integer overflow: abs(-9223372036854775808)"},
        {"{{ 1e30|int }}", "cannot convert 1e+30 to an integer of 64 bits"},
        {"{{ '99999999999999999999'|int }}", "cannot convert '99999999999999999999' to an integer of 64 bits"},
        {"{{ 9223372036854775808 }}", "t.jinja:1: integer 9223372036854775808 is past 64 bits"},
        {"{{ range(100001)|length }}", "range too big: 100001 items, more than the 100000"},
        {"{{ range(1000000000)|length }}", "range too big"},
        {"{{ 'a' * 1000000000000 }}", "'str' * 1000000000000 would hold more than 67108864 bytes"},
        {"{{ ([1, 2] * 4611686018427387904)|length }}", "'list' * 4611686018427387904 would hold more than"},
        {"{{ 2|round(2, 'nope') }}", "round's method must be common, ceil or floor"},
        {"{{ [1, 2, 3]|round }}", "round needs a number, got list"},
        {"{{ " + std::string(40, '9') + " }}", "is past 64 bits"},
    };
    for (const auto& [source, message] : refused) {
        std::string what = error_of(source);
        EXPECT_NE(what.find(message), std::string::npos) << source.substr(0, 80) << "\n  gave: " << what;
    }
}

// Expressions and values deep enough to end the process by its stack are refused by name:
// operator chains ("1 + 1 + ...", "not not ...", "x|trim|trim...") and data nested in messages.
TEST(ChatJinja, DeepExpressionsAndValuesAreRefused) {
    std::string plus = "{{ 1", nots = "{{ ", trims = "{{ 'x'";
    for (int i = 0; i < 15000; ++i) plus += " + 1", nots += "not ", trims += "|trim";
    EXPECT_NE(error_of(plus + " }}").find("t.jinja:1: expression deeper than 1000 operations"), std::string::npos);
    EXPECT_NE(error_of(trims + " }}").find("t.jinja:1: expression deeper than 1000 operations"), std::string::npos);
    EXPECT_NE(error_of(nots + "true }}").find("t.jinja:1: template nested deeper than 200 levels"), std::string::npos);
    std::string chain = "{{ 1";
    for (int i = 0; i < 900; ++i) chain += " + 1";
    EXPECT_EQ(render(chain + " }}"), "901");
    json deep = json::array();
    for (int i = 0; i < 50000; ++i) deep = json::array({std::move(deep)});
    EXPECT_NE(error_of("{{ d }}", {{"d", deep}}).find("'d' is nested deeper than 512 levels"), std::string::npos);
    // A value a template grows a level a store.
    EXPECT_NE(error_of("{% set ns = namespace(x=[]) %}{% for i in range(600) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x == ns.x }}")
                  .find("t.jinja:1: the value set would be nested deeper than 512 levels"),
              std::string::npos);
}

// Expressions inside blocks inside macro calls nest the C++ stack as their product, within
// each kind's own limit: refused by the stack a render may take, on a thread of 1 MiB (the
// server's threads may have 2 MiB or less), not a crash.
TEST(ChatJinja, NestingThatOutgrowsTheThreadsStackIsRefused) {
    std::string concat = "{{ f(n - 1)";
    for (int i = 0; i < 100; ++i) concat += " ~ ''";
    struct Job {
        std::string deep, recursive, deep_error, recursive_out;
    } job{"{% macro f(n) %}{% if n > 0 %}" + concat + " }}{% endif %}x{% endmacro %}{{ f(99) }}",
          "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}x{% endmacro %}{{ f(99) }}", "", ""};
    auto run = [](void* p) -> void* {
        Job& j = *static_cast<Job*>(p);
        j.deep_error = error_of(j.deep);
        j.recursive_out = render(j.recursive);
        return nullptr;
    };
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, size_t{1} << 20);
    pthread_t thread;
    ASSERT_EQ(pthread_create(&thread, &attr, run, &job), 0);
    pthread_join(thread, nullptr);
    pthread_attr_destroy(&attr);
    EXPECT_NE(job.deep_error.find("t.jinja:1: the template nests too deeply here"), std::string::npos) << job.deep_error;
    EXPECT_EQ(job.recursive_out, std::string(100, 'x'));  // the 100 macro calls allowed still fit
}

// A template's total work and output are bounded (a template can come inside a checkpoint):
// nested loops, each within range()'s limit, would otherwise run for hours.
TEST(ChatJinja, EndlessWorkAndOutputAreRefused) {
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_NE(error_of("{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}")
                  .find("t.jinja:1: the template took more than 2000000 steps (statements and loop turns)"),
              std::string::npos);
    EXPECT_NE(error_of("{% for a in range(99999) %}{% for b in range(99999) %}{{ 'x' * 4096 }}{% endfor %}{% endfor %}")
                  .find("t.jinja:1: the template's output passed 64 MiB"),
              std::string::npos);
    // The last statement's output too, and '~' as '*' (each within 2^26 bytes), and strings made
    // in a loop though never written out.
    EXPECT_NE(error_of("{{ 'x' * 60000000 }}{{ 'x' * 60000000 }}").find("t.jinja:1: the template's output passed 64 MiB"),
              std::string::npos);
    EXPECT_NE(error_of("{% set x = 'x' * 40000000 %}{{ x ~ x }}").find("'~' would make 80000000 bytes, more than 67108864"), std::string::npos);
    EXPECT_NE(error_of("{% for i in range(100) %}{% set y = 'a' * 60000000 %}{% endfor %}").find("more than 1024 MiB of strings and lists in all"),
              std::string::npos);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
    // A long conversation's loop stays far inside the bounds.
    EXPECT_EQ(render("{% for i in range(100000) %}{% if i % 2 == 0 %}a{% endif %}{% endfor %}").size(), 50000u);
}

// Lists count against the budget as strings do, their copies deep: each refused before it is
// made, not by the host's memory (10^9 values, or 3 GB, before).
TEST(ChatJinja, ListsAndGrownStringsAreBoundedBeforeTheyAreMade) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& [source, message] : std::vector<std::pair<std::string, std::string>>{
             {"{{ ([range(100000)|list] * 10000)|length }}", "'list' * 10000 would hold more than 67108864 bytes"},
             {"{% set l = range(100000)|list %}{% set l2 = [l, l, l, l, l, l, l, l, l, l] %}{{ [l2, l2, l2, l2, l2]|length }}",
              "the list would hold more than 67108864 bytes"},
             {"{% set ns = namespace(x=['ab']) %}{% for i in range(30) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
              "list + list would hold more than 67108864 bytes"},
             {"{{ ('a' * 1000000).replace('a', 'b' * 100)|length }}", "replace would make more than 67108864 bytes (1000000 replacements)"},
             {"{{ ('a' * 1000000)|replace('a', 'b' * 100)|length }}", "replace would make more than 67108864 bytes"},
             {"{{ ('a\n' * 1000000)|indent(100)|length }}", "indent would make more than 67108864 bytes (1000001 lines)"},
             // A list grown a value a turn, copied whole each turn.
             {"{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = ns.x + ['a' * 1000] %}{% endfor %}",
              "more than 1024 MiB of strings and lists in all"}})
        EXPECT_NE(error_of(source).find(message), std::string::npos) << source << "\n" << error_of(source);
    EXPECT_EQ(render("{% set l = range(1000)|list %}{{ ([l, l] * 100)|length }} {{ (l + l)|length }} {{ 'ab'.replace('a', 'xyz') }}"),
              "200 2000 xyzb");
    // Strings repeated by doubling: every count, none and below none included.
    EXPECT_EQ(render("{{ 'ab' * 3 }}|{{ 'abc' * 0 }}|{{ '' * 5 }}|{{ 'x' * -2 }}|{{ 3 * 'xy' }}|{{ ('ab' * 7)|length }}|{{ ('a' * 60000000)|length }}"),
              "ababab||||xyxyxy|14|60000000");
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
}

// The template's integers are 64-bit: past that refused, never wrapped.
TEST(ChatJinja, IntegersPast64BitsAreRefusedNotWrapped) {
    EXPECT_NE(error_of("{{ [9223372036854775807, 1]|sum }}").find("|sum: 9223372036854775807 + 1 is past 64 bits"), std::string::npos);
    try {  // an integer of the messages past int64_t would wrap (c + 1 was 0)
        RenderOptions options;
        ChatTemplate::parse("{{ messages[0].content + 1 }}", "t.jinja").render(json::array({{{"role", "user"}, {"content", 18446744073709551615ull}}}), options);
        ADD_FAILURE() << "an integer past 2^63 - 1 was taken";
    } catch (const tpx::JobError& e) {
        EXPECT_NE(std::string(e.what()).find("the integer 18446744073709551615 in the messages is past 2^63 - 1"), std::string::npos) << e.what();
    }
}

TEST(ChatJinja, UndefinedBehavesAsJinja2Default) {
    // Printing, ~, iterating, |length and tests accept Undefined; using its attributes fails.
    EXPECT_EQ(render("[{{ missing }}][{{ missing ~ 'a' }}][{% for x in missing %}x{% endfor %}][{{ missing|length }}]"
                     "{{ missing is defined }}{{ missing is none }}{{ d.x is defined }}{{ missing|default('dflt') }}",
                     {{"d", json::object()}}),
              "[][a][][0]FalseFalseFalsedflt");
    EXPECT_NE(error_of("{{ missing.attr }}").find("t.jinja:1: 'missing' is undefined"), std::string::npos);
    EXPECT_NE(error_of("{{ d.x.y }}", {{"d", json::object()}}).find("'dict object' has no attribute 'x'"), std::string::npos);
    EXPECT_NE(error_of("{{ missing + 'a' }}").find("'missing' is undefined"), std::string::npos);
}

TEST(ChatJinja, FiltersAndMethods) {
    json vars = {{"msgs", {{{"role", "system"}, {"content", "S"}}, {{"role", "user"}, {"content", "U"}}}},
                 {"d", {{"b", 1}, {"A", 2}}}};
    EXPECT_EQ(render("{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(',') }}"
                     "{{ msgs|rejectattr('role', 'eq', 'user')|list|length }}{{ msgs|map(attribute='role')|first }}"
                     "{{ msgs|last|tojson }}", vars),
              "U1system{\"role\": \"user\", \"content\": \"U\"}");
    // transformers' tojson: json.dumps, ensure_ascii=False, keys in order, ", " and ": ".
    EXPECT_EQ(render("{{ {'b': [1, 2.5, none], 'a': '\xc3\xa9\"<'}|tojson }}|{{ [1, {'k': 'v'}]|tojson(indent=2) }}"),
              "{\"b\": [1, 2.5, null], \"a\": \"\xc3\xa9\\\"<\"}|[\n  1,\n  {\n    \"k\": \"v\"\n  }\n]");
    // (Pairs are printed through their parts: Python prints them as tuples, tpx as lists.)
    EXPECT_EQ(render("{% for k, v in d|dictsort %}{{ k }}{{ v }}{% endfor %}|{% for k, v in d|items %}{{ k }}{{ v }}"
                     "{% endfor %}|{{ ['b', 'A', 'c']|sort }}{{ ['b', 'A', 'c']|sort(reverse=true) }}", vars),
              "A2b1|b1A2|['A', 'b', 'c']['c', 'b', 'A']");
    EXPECT_EQ(render("{{ ' x '|trim }}|{{ 'ab'|upper }}{{ 'AB'|lower }}{{ 'hello world'|capitalize }}|{{ 'a-b c'|title }}"
                     "|{{ 'a\nb\n\nc'|indent(2) }}|{{ 'x'|indent(2, true) }}|{{ '42'|int + 1 }}{{ 'x'|int }}{{ 3|string }}"),
              "x|ABabHello world|A-B C|a\n  b\n\n  c|  x|430" "3");
    // Past 64 bits only where the whole string reads as a number; a base that is not an int, an
    // infinite float and "nan(...)" fall back as in Jinja2.
    EXPECT_EQ(render("{{ '12345678901234567890e-5'|int }} {{ '99999999999999999999abc'|int(7) }} {{ '12'|int(base=none) }}"
                     " {{ '12'|int(base='16') }} {{ 'inf'|int(2) }} {{ 'nan(12)'|float(2) }}"),
              "123456789012345 7 12 12 2 2");
    // int() and float() strip what str.strip does but \x1c to \x1f.
    EXPECT_EQ(render("{{ '\\x1c12'|int(7) }} {{ '12\\x1f'|float(7) }} {{ '\\xa012\\u2003'|int(7) }} {{ ' 12\\n'|int(7) }}"), "7 7 12 12");
    // str.format: [key] on a str or list that cannot name an attribute is Undefined; an index of
    // a char already picked reads that char.
    EXPECT_EQ(render("{{ '{0[-1]}|{0[0][0]}|{1[a b]}'.format('ab', [1]) }}"), "|a|");
    // int(value, default, base) as Jinja2's: Python's int(s, base), else int(float(s)), else the default.
    EXPECT_EQ(render("{{ '12'|int(base=16) }} {{ '0x1A'|int(0, 16) }} {{ '0o17'|int(base=0) }} {{ '0b11'|int(base=16) }}"
                     " {{ '010'|int(7, 0) }} {{ '1_000'|int }} {{ '1__0'|int(5) }} {{ '-z'|int(base=36) }} {{ '7'|int(base=37) }}"
                     " {{ 'g'|int(3, 16) }} {{ '1_0.5'|int }} {{ '1_0.5'|float }} {{ '_1'|float(2) }}"),
              "18 26 15 2833 10 1000 5 -35 7 3 10 10.5 2");
    EXPECT_EQ(render("{{ ' a b '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\na\n'.lstrip('\n') }}|{{ 'a,b,,c'.split(',') }}"
                     "|{{ ' a  b '.split() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}"
                     "|{{ 'aXbX'.replace('X', '-') }}|{{ 'hello world'.title() }}|{{ '{} and {}'.format(1, 'b') }}"),
              "a b|a|a\n|['a', 'b', '', 'c']|['a', 'b']|TrueTrue|a-b-|Hello World|1 and b");
    EXPECT_EQ(render("{{ d.get('b') }}{{ d.get('z') }}{{ d.get('z', 0) }}{{ d.keys()|list }}{{ d.values()|list }}", vars),
              "1None0['b', 'A'][1, 2]");
    EXPECT_EQ(render("{{ 'Two words_x, 3 \xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80'|wordcount }}{{ '\xc3\xa9t\xc3\xa9'|upper }}{{ 'abc'|length }}{{ 'h\xc3\xa9'|length }}{{ [1, 2]|length }}{{ [3, 1]|max }}{{ [1, 1, 2]|unique|list }}"),
              "4\xc3\x89T\xc3\x89" "3223[1, 2]");
}

TEST(ChatJinja, TestsOnValues) {
    json vars = {{"s", "x"}, {"n", 1}, {"f", 1.5}, {"b", true}, {"l", {1}}, {"m", json::object()}, {"z", nullptr}};
    EXPECT_EQ(render("{{ s is string }}{{ n is number }}{{ n is integer }}{{ f is float }}{{ b is boolean }}"
                     "{{ l is sequence }}{{ l is iterable }}{{ m is mapping }}{{ z is none }}{{ s is not none }}"
                     "{{ n is odd }}{{ 4 is divisibleby 2 }}{{ l is mapping }}{{ s is iterable }}", vars),
              "TrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueFalseTrue");
}

TEST(ChatJinja, VariablesAsTransformersPassesThem) {
    // transformers passes tools=None and documents=None when the caller gives none, and only the
    // special tokens the tokenizer has: a missing one is undefined.
    RenderOptions o;
    o.eos_token = "</s>";
    o.add_generation_prompt = true;
    EXPECT_EQ(ChatTemplate::parse("{{ tools is none }}{{ documents is none }}{{ bos_token is defined }}{{ bos_token }}"
                                  "{{ eos_token }}{{ add_generation_prompt }}{{ messages|length }}", "t")
                  .render(json::array({{{"role", "user"}, {"content", "x"}}}), o),
              "TrueTrueFalse</s>True1");
    o.variables["tools"] = json::array({{{"name", "f"}}});
    EXPECT_EQ(ChatTemplate::parse("{% if tools %}{{ tools[0].name }}{% endif %}", "t").render(json::array(), o), "f");
    // HF's {% generation %} tag (assistant masks) renders its body unchanged.
    EXPECT_EQ(render("a{% generation %}b{% endgeneration %}c"), "abc");
    // Keys keep the order they were given in, as Python dicts do.
    EXPECT_EQ(render("{{ x|tojson }}{{ x|tojson(separators=(',', ':')) }}{{ x|tojson(sort_keys=true) }}",
                     {{"x", json::parse(R"({"z": 1, "a": [true, null]})")}}),
              "{\"z\": 1, \"a\": [true, null]}{\"z\":1,\"a\":[true,null]}{\"a\": [true, null], \"z\": 1}");
}

TEST(ChatJinja, RaiseExceptionCarriesTheTemplatesMessage) {
    try {
        render("line one\n{% if true %}{{ raise_exception('roles must alternate') }}{% endif %}");
        FAIL() << "raise_exception did not throw";
    } catch (const tpx::chat::TemplateRaised& e) {
        EXPECT_EQ(e.message(), "roles must alternate");
        EXPECT_EQ(e.exit_code(), tpx::kExitBadInput);
        EXPECT_NE(std::string(e.what()).find("t.jinja:2:"), std::string::npos) << e.what();
    }
}

TEST(ChatJinja, StrftimeNowUsesTheGivenClock) {
    RenderOptions o;
    o.now = 1764720000;  // 2025-12-03 00:00:00 UTC
    setenv("TZ", "UTC", 1);
    tzset();
    EXPECT_EQ(ChatTemplate::parse("{{ strftime_now('%d %b %Y') }}", "t").render(json::array(), o), "03 Dec 2025");
    // A result of 256 bytes or more (it was "").
    std::string years;
    for (int i = 0; i < 100; ++i) years += "%Y";
    EXPECT_EQ(ChatTemplate::parse("{{ strftime_now('" + years + "')|length }}", "t").render(json::array(), o), "400");
}

TEST(ChatJinja, BadTemplatesAreRefusedWithLineAndConstruct) {
    struct Bad { const char* source; const char* message; };
    const Bad cases[] = {
        {"ok\n{% include 'x.jinja' %}", "t.jinja:2: unsupported tag '{% include %}'"},
        {"{{ x|wordwrap }}", "t.jinja:1: unsupported filter 'wordwrap'"},
        {"\n\n{{ x is sameas y }}", "t.jinja:3: unsupported test 'is 'sameas''"},
        {"{{ [].append(1) }}", "t.jinja:1: unsupported method '.append()'"},
        {"{% if x %}\nno end", "missing '{% endif %}' before end of template (the block opens on line 1)"},
        {"a\n{% for m in messages %}\n{% if m %}{% endif %}\n", "t.jinja: missing '{% endfor %}' before end of template (the block opens on line 2)"},
        {"{% endfor %}", "t.jinja:1: unexpected '{% endfor %}'"},
        {"a\n{{ 'unterminated }}", "t.jinja:2: unterminated string literal"},
        {"{{ x", "t.jinja:1: tag not closed by '}}'"},
        {"{{ 1 + }}", "t.jinja:1: unexpected '}}' in an expression"},
        {"{% for x in y recursive %}{% endfor %}", "t.jinja:1: unsupported 'recursive' loop"},
        {"{% set x = 1 %}{% set x.a = 2 %}", "t.jinja:1: cannot assign attribute 'a' on 'x'"},
        {"{{ 'a' + 1 }}", "t.jinja:1: can only concatenate str (not \"int\") to str"},
        {"{% macro f(a) %}{% endmacro %}\n{{ f(1, 2) }}", "t.jinja:2: macro 'f' takes 1 arguments, 2 given"},
        {"{{ nothing(1) }}", "t.jinja:1: 'nothing' is undefined (not a macro or one of the global functions"},
        {"{% raw %}{{ x }}{% endraw %}", "t.jinja:1: unsupported tag '{% raw %}'"},
        {"{{ f(*xs) }}", "t.jinja:1: unsupported '*args' or '**kwargs' in a call"},
        {"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "t.jinja:1: macro 'f' nested deeper than 100 calls"},
        // Python jinja2 refuses these too (a macro's body is a function of its own; a for's else
        // is not inside its loop), or raises rather than give inf or a complex number.
        {"a\n{% break %}b", "t.jinja:2: '{% break %}' outside a for loop"},
        {"{% for i in [1] %}{% macro m() %}{% continue %}{% endmacro %}{% endfor %}", "t.jinja:1: '{% continue %}' outside a for loop"},
        {"{% for i in [] %}{% else %}{% break %}{% endfor %}", "t.jinja:1: '{% break %}' outside a for loop"},
        {"{% set true = 5 %}", "t.jinja:1: cannot assign to the constant 'true'"},
        {"{% for x, None in [[1, 2]] %}{% endfor %}", "t.jinja:1: cannot assign to the constant 'None'"},
        {"{{ 0 ** -1 }}", "t.jinja:1: 0 cannot be raised to a negative power"},
        {"{{ (-8) ** 0.5 }}", "t.jinja:1: a negative number to a fractional power is a complex number (not supported)"},
        {"{{ 10.0 ** 400 }}", "t.jinja:1: ** result out of range: past the largest float"},
        {"{% for m in [1] %}{% generation %}{% break %}{% endgeneration %}{% endfor %}", "t.jinja:1: '{% break %}' outside a for loop"},
        {"{% macro f(x, none) %}{% endmacro %}", "t.jinja:1: cannot assign to the constant 'none'"},
        {"{{ 'abc'.startswith(('x', 1)) }}", "t.jinja:1: startswith needs a string or a tuple of strings"},
        {"a\n{{ 'b' }}\xff", "t.jinja:2: the chat template is not valid UTF-8 (byte 11)"},
        // String escapes as Python's unicode-escape codec (Jinja2's lexer decodes literals through it).
        {"{{ '\\x1g' }}", "t.jinja:1: truncated \\xXX escape in a string"},
        {"\n{{ '\\u12' }}", "t.jinja:2: truncated \\uXXXX escape in a string"},
        {"{{ '\\U00110000' }}", "t.jinja:1: illegal Unicode character in a string's \\U escape"},
        {"{{ '\\ud800' }}", "t.jinja:1: a surrogate code point in a string's escape (not UTF-8 text)"},
        {"{{ '\\N{LATIN SMALL LETTER A}' }}", "t.jinja:1: unsupported \\N{...} escape in a string"},
        {"{{ '{:>5}'.format('a') }}", "t.jinja:1: str.format: format specs (':>5') are not supported"},
        {"{{ '{}{1}'.format(1, 2) }}", "t.jinja:1: str.format: cannot switch from automatic field numbering to manual field specification"},
        {"{{ '{0!x}'.format(1) }}", "t.jinja:1: str.format: unknown conversion specifier x"},
        {"{{ '{0.upper}'.format('a') }}", "t.jinja:1: str.format: '{0.upper}' reads attribute 'upper' of a str (a dict's keys only)"},
        {"{{ '{1}'.format(1) }}", "t.jinja:1: str.format: no positional argument 1 for '{1}'"},
        {"{{ '{0[}'.format(1) }}", "t.jinja:1: str.format: expected '}' before end of string"},
        {"{{ 'a{'.format(1) }}", "t.jinja:1: str.format: single '{' encountered in format string"},
        {"{{ '{0.}'.format(1) }}", "t.jinja:1: str.format: empty attribute in format string"},
        {"{{ '{0[1]x}'.format([1, 2]) }}", "t.jinja:1: str.format: only '.' or '[' may follow ']' in format field specifier"},
        {"{{ '{0[x][y]}'.format({}) }}", "t.jinja:1: str.format: '{0[x][y]}' looks up 'y' in an undefined value"},
        {"{{ '{[0]}'.format('ab') }}", "t.jinja:1: str.format: no argument named '' for '{[0]}'"},
        {"{{ '{0.a{}'.format({}) }}", "t.jinja:1: str.format: unexpected '{' in field name"},
        {"{{ '{99999999999999999999999}'.format(1) }}", "t.jinja:1: str.format: too many decimal digits in format string"},
        {"{{ ('{0}' * 5000).format('x' * 1000000) }}", "t.jinja:1: str.format: the result would pass 67108864 bytes"},
        {"{{ '{0.items}'.format({}) }}", "t.jinja:1: str.format: '{0.items}' reads the dict attribute 'items' (not supported)"},
        {"{{ 'a\n\\x1g' }}", "t.jinja:1: truncated \\xXX escape in a string"},
        {"{{ 'abc'.strip(nothing) }}", "t.jinja:1: 'nothing' is undefined"},
        {"{{ 'a b'.split(sep=nothing) }}", "t.jinja:1: 'nothing' is undefined"},
        {"{{ 'aa'.replace('a', 'b', nothing) }}", "t.jinja:1: 'nothing' is undefined"},
        {"{{ '{0[99999999999999999999]}'.format({}) }}", "t.jinja:1: str.format: too many decimal digits in format string"},
        {"{{ '{0[upper]}'.format('a') }}", "t.jinja:1: str.format: '{0[upper]}' reads attribute 'upper' of a str (a dict's keys only)"},
        {"{{ '{0.__doc__}'.format({'__doc__': 1}) }}", "t.jinja:1: str.format: '{0.__doc__}' reads the dict attribute '__doc__' (not supported)"},
        {"{% set ns = namespace(a=1) %}{{ ns.get('a') }}", "t.jinja:1: 'Namespace' object has no method 'get'"},
        // Python's str and dict methods take keywords only where they name them, and so many arguments.
        {"{{ 'abc'.startswith('a', start=0) }}", "t.jinja:1: startswith() takes no keyword arguments"},
        {"{{ {'a': 1}.get(key='a') }}", "t.jinja:1: get() takes no keyword arguments"},
        {"{{ 'abc'.split(foo=1) }}", "t.jinja:1: split() got an unexpected keyword argument 'foo'"},
        {"{{ 'abc'.split('b', sep='b') }}", "t.jinja:1: argument for split() given by name ('sep') and position (1)"},
        {"{{ 'abc'.split('b', 1, 2) }}", "t.jinja:1: split() takes at most 2 arguments (3 given)"},
        {"{{ 'abc'.upper(1) }}", "t.jinja:1: upper() takes no arguments (1 given)"},
        {"{{ 'a'.join() }}", "t.jinja:1: join() takes exactly 1 argument (0 given)"},
        {"{{ 'abc'.replace('a') }}", "t.jinja:1: replace() takes at least 2 arguments (1 given)"},
        {"{{ {'a': 1}.strip(1, 2) }}", "t.jinja:1: 'dict' object has no method 'strip'"},
        {"\xed\xa0\x80", "t.jinja:1: the chat template is not valid UTF-8 (byte 0)"},  // a surrogate
    };
    std::string deep = std::string(1000, '(') + "1" + std::string(1000, ')');
    EXPECT_NE(error_of("{{ " + deep + " }}").find("t.jinja:1: template nested deeper than 200 levels"), std::string::npos);
    for (const Bad& b : cases) {
        std::string what = error_of(b.source);
        EXPECT_NE(what.find(b.message), std::string::npos) << b.source << "\n  gave: " << what;
    }
}
