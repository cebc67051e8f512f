// Text in, text out, end to end: `tpx run` on llama-text (models/tiny-text, a copy) with text and
// chat prompts, against HF transformers' own outputs (tests/data/golden/llama-text/golden-text.json:
// prompt ids from tokenizer(text) / apply_chat_template(..., add_generation_prompt=True), 16 greedy
// ids, the text decoded with skip_special_tokens=True). Greedy ids must equal HF's up to the first
// near-tie (a top-two gap under 1e-3, which fp32 may break either way, the golden README says);
// where no step is a near-tie the text must equal HF's exactly. At tp 1 and 2. Also: stop strings
// cut the text and end the sequence, and bad text inputs are refused naming the line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "process.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kModel = std::string(TPX_SOURCE_DIR) + "/models/tiny-text";
// The text prompts make_refs.py gave (its cases t0..t4, in order).
const std::vector<std::string> kTexts = {"The capital of France is", "Once upon a time,", "東京は", "def fibonacci(n):\n",
                                         "Résumé: naïve café 😀"};

// HF's cases, read once (a reference into them outlives each loop).
const json& golden_cases() {
    static const json g = json::parse(tpx_test::read_text(std::string(TPX_TEST_DATA) + "/golden/llama-text/golden-text.json"));
    return g.at("cases");
}

struct JobRun {
    tpx_test::ProcessResult process;
    std::map<std::string, json> by_id;
};

JobRun run_job(const std::string& prompts, int tp, const std::string& run_extra = "") {
    std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/prompts.jsonl") << prompts;
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kModel << "\"\n[parallel]\ntp = " << tp
                                     << "\n[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 16\noutput = \"out.jsonl\"\n"
                                     << run_extra;
    JobRun r;
    r.process = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " run " + dir + "/job.toml");
    std::ifstream in(dir + "/out.jsonl");
    for (std::string line; std::getline(in, line);) {
        json j = json::parse(line);
        r.by_id[j["id"].get<std::string>()] = j;
    }
    fs::remove_all(dir);
    return r;
}

std::string golden_prompts() {
    std::string lines;
    for (const json& c : golden_cases()) {
        std::string id = c["id"];
        json line = {{"id", id}};
        if (id[0] == 't') line["text"] = kTexts.at(std::stoi(id.substr(1)));
        else line["messages"] = c["messages"];
        lines += line.dump() + "\n";
    }
    return lines;
}

class TextRun : public testing::TestWithParam<int> {};

TEST_P(TextRun, TextAndChatPromptsGiveHfsIdsAndText) {
    JobRun r = run_job(golden_prompts(), GetParam());
    ASSERT_EQ(r.process.exit_code, 0) << r.process.err;
    int exact = 0;
    for (const json& c : golden_cases()) {
        const std::string id = c["id"];
        ASSERT_TRUE(r.by_id.count(id)) << id;
        const json& got = r.by_id[id];
        EXPECT_EQ(got["prompt_tokens"], c["prompt_ids"].size()) << id << ": the prompt's ids differ in number from HF's";
        std::vector<int> want = c["output_ids"], have = got["output_ids"];
        size_t tie = want.size();
        for (size_t i = 0; i < c["margins"].size(); ++i)
            if (c["margins"][i].get<double>() < 1e-3) {
                tie = i;
                break;
            }
        ASSERT_GE(have.size(), tie) << id;
        EXPECT_EQ(std::vector<int>(have.begin(), have.begin() + (ptrdiff_t)tie), std::vector<int>(want.begin(), want.begin() + (ptrdiff_t)tie))
            << id << " (compared up to step " << tie << ")";
        if (tie == want.size()) {
            EXPECT_EQ(have, want) << id;
            EXPECT_EQ(got["text"], c["text"]) << id;
            EXPECT_EQ(got["finish_reason"], c["finish_reason"]) << id;
            ++exact;
        }
    }
    EXPECT_GE(exact, 9) << "most cases have no near-tie and must match HF exactly";
    // The terminal shows each prompt's text as it completes.
    EXPECT_NE(r.process.out.find("t0: \""), std::string::npos) << r.process.out;
}

INSTANTIATE_TEST_SUITE_P(Tp, TextRun, testing::Values(1, 2), [](const testing::TestParamInfo<int>& i) { return "tp" + std::to_string(i.param); });

// A stop string ends the sequence as soon as the text holds it, and the text is cut before it.
// The stop is taken from HF's own greedy text for t0, so the expected cut is known exactly.
TEST(TextRun, StopStringsEndTheSequenceAndCutTheText) {
    json t0;
    for (const json& c : golden_cases())
        if (c["id"] == "t0") t0 = c;
    const std::string full = t0["text"], stop = "count";
    size_t at = full.find(stop);
    ASSERT_NE(at, std::string::npos);
    JobRun r = run_job(json({{"id", "t0"}, {"text", kTexts[0]}}).dump() + "\n", 2, "stop = [\"zzz-never\", \"" + stop + "\"]\n");
    ASSERT_EQ(r.process.exit_code, 0) << r.process.err;
    const json& got = r.by_id["t0"];
    EXPECT_EQ(got["finish_reason"], "stop");
    EXPECT_EQ(got["text"], full.substr(0, at));
    std::vector<int> ids = got["output_ids"], want = t0["output_ids"];
    EXPECT_LT(ids.size(), want.size()) << "generation went on past the stop string";
    EXPECT_EQ(std::vector<int>(want.begin(), want.begin() + (ptrdiff_t)ids.size()), ids);
}

// The eos id of generation_config.json ends a sequence with finish_reason "eos": an eos list in
// the job naming HF's third greedy token for t0 makes it the last.
TEST(TextRun, AnEosIdEndsTheSequenceWithReasonEos) {
    json t0;
    for (const json& c : golden_cases())
        if (c["id"] == "t0") t0 = c;
    int third = t0["output_ids"][2];
    JobRun r = run_job(json({{"id", "t0"}, {"text", kTexts[0]}}).dump() + "\n", 1, "eos = [" + std::to_string(third) + "]\n");
    ASSERT_EQ(r.process.exit_code, 0) << r.process.err;
    EXPECT_EQ(r.by_id["t0"]["finish_reason"], "eos");
    EXPECT_EQ(r.by_id["t0"]["output_ids"].size(), 3u);
}

TEST(TextRun, BadTextInputsAreRefusedNamingTheLine) {
    // Invalid UTF-8 in a text prompt, a chat without roles, and a template that raises.
    JobRun bad = run_job("{\"id\": \"a\", \"text\": \"ok\"}\n{\"id\": \"b\", \"messages\": [{\"content\": \"no role\"}]}\n", 2);
    EXPECT_EQ(bad.process.exit_code, 2) << bad.process.err;
    EXPECT_NE(bad.process.err.find("prompts.jsonl:2: prompt b:"), std::string::npos) << bad.process.err;
    std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/t.jinja") << "{{ raise_exception('only user turns please') }}";
    JobRun raised = run_job("{\"id\": \"c\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n", 1,
                         "chat_template = \"" + dir + "/t.jinja\"\n");
    EXPECT_EQ(raised.process.exit_code, 2) << raised.process.err;
    EXPECT_NE(raised.process.err.find("only user turns please"), std::string::npos) << raised.process.err;
    // A broken tokenizer is refused before any rank starts, naming the file.
    fs::copy(kModel, dir + "/m", fs::copy_options::recursive);
    std::ofstream(dir + "/m/tokenizer.json") << "{\"model\": {\"type\": \"WordPiece\"}}";
    std::ofstream(dir + "/p.jsonl") << "{\"id\": \"a\", \"text\": \"hi\"}\n";
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"m\"\n[run]\nprompts = \"p.jsonl\"\n";
    auto r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " run " + dir + "/job.toml");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("tokenizer.json"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("rank map"), std::string::npos) << r.err;
    fs::remove_all(dir);
}

}  // namespace
