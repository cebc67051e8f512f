// `tpx serve`'s logprobs (a completion's `logprobs: N`, a chat's `logprobs: true` with
// `top_logprobs: N`), through the official OpenAI Node SDK (tests/serve/client.mjs) at tp 2 on
// the CPU backend. The reference nobody here wrote: HF transformers' logits for llama-gqa's golden
// greedy continuations (tests/data/golden; fp32 on bf16 weights), whose log-softmax each
// generated token's logprob and its most likely tokens' must equal within 1e-4. On tiny-text: the
// OpenAI form of both endpoints, whole and streamed alike, and sampled tokens' logprobs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "golden.h"
#include "serve_client.h"
#include "server/openai_api.h"

namespace {

using namespace serve_test;
using ordered = nlohmann::ordered_json;

// One call through the SDK (client.mjs's "call" mode), its JSON with the keys in the order sent
// (a completion's top_logprobs: the chosen token first, then the most likely).
ordered call(const tpx_test::ServeProcess& s, bool chat, const json& body) {
    tpx_test::ProcessResult r = tpx_test::run_process(client_command(s, "call", json{{"chat", chat}, {"body", body}}.dump()));
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    try {
        return ordered::parse(r.out);
    } catch (const std::exception&) {
        ADD_FAILURE() << "not JSON:\n" << r.out << r.err;
        return ordered::object();
    }
}

// A stream's choice logprobs, the chunks' joined: each chunk of a token carries its one.
ordered joined_completion_logprobs(const ordered& chunks) {
    ordered out = {{"text_offset", ordered::array()}, {"token_logprobs", ordered::array()}, {"tokens", ordered::array()}, {"top_logprobs", ordered::array()}};
    for (const ordered& c : chunks) {
        const ordered& lp = c["choices"][0]["logprobs"];
        if (lp.is_null()) continue;
        for (const char* key : {"text_offset", "token_logprobs", "tokens", "top_logprobs"})
            for (const ordered& v : lp[key]) out[key].push_back(v);
    }
    return out;
}

// `body` with `key` set to `value` (null: left out).
json with(json body, const char* key, const json& value) {
    if (value.is_null()) body.erase(key);
    else body[key] = value;
    return body;
}

bool near(double got, double want) { return std::fabs(got - want) <= 1e-4 * std::max(1.0, std::fabs(want)); }

// Each generated token's logprob, and its 5 most likely tokens', against the log-softmax of HF's
// logits at that step; whole and streamed equal.
TEST(ServeLogprobs, GreedyLogprobsEqualHfsLogSoftmax) {
    SKIP_WITHOUT_SDK();
    const tpx_test::Golden g = tpx_test::read_golden("llama-gqa");
    const int64_t T = g.prompt_len, V = g.vocab, steps = g.total_len - g.prompt_len;
    constexpr int kTop = 5;
    Server server("", "", "serve: ready", tpx_test::kGolden + "/llama-gqa");  // no tokenizer: tokens named "token_id:ID"
    for (int64_t b = 0; b < g.batch; ++b) {
        const std::vector<int32_t> prompt(g.input_ids.begin() + b * T, g.input_ids.begin() + (b + 1) * T);
        const json body = {{"prompt", prompt}, {"max_tokens", steps}, {"logprobs", kTop}, {"return_token_ids", true}};
        const ordered whole = call(server, false, body)["whole"]["choices"][0];
        const ordered chunks = call(server, false, with(body, "stream", true))["chunks"];
        const ordered& lp = whole["logprobs"];
        ASSERT_EQ(lp["tokens"].size(), (size_t)steps) << whole.dump();
        int64_t offset = 0;
        for (int64_t i = 0; i < steps; ++i) {
            const int32_t want = g.greedy_ids[b * g.total_len + T + i];
            ASSERT_EQ(whole["token_ids"][i], want) << "prompt " << b << " token " << i;
            // HF's log-softmax at the step that chose it (teacher-forced logits over greedy_ids).
            const float* row = &g.greedy_logits[(b * g.total_len + T - 1 + i) * V];
            double top = row[0];
            for (int64_t v = 0; v < V; ++v) top = std::max(top, (double)row[v]);
            double sum = 0;
            for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - top);
            auto hf = [&](int64_t v) { return row[v] - top - std::log(sum); };
            std::vector<double> sorted(V);
            for (int64_t v = 0; v < V; ++v) sorted[v] = hf(v);
            std::sort(sorted.rbegin(), sorted.rend());
            const std::string name = "token_id:" + std::to_string(want);
            EXPECT_EQ(lp["tokens"][i], name);
            EXPECT_TRUE(near(lp["token_logprobs"][i].get<double>(), hf(want))) << lp["token_logprobs"][i] << " against HF's " << hf(want);
            EXPECT_EQ(lp["text_offset"][i], offset) << i;
            offset += (int64_t)name.size();
            // The chosen token first (greedy: the most likely), then the others most likely first,
            // each HF's own value, none below HF's fifth.
            const ordered& named = lp["top_logprobs"][i];
            ASSERT_EQ(named.size(), (size_t)kTop) << named.dump();
            EXPECT_EQ(named.begin().key(), name) << named.dump();
            double last = 0;
            size_t rank = 0;
            for (auto it = named.begin(); it != named.end(); ++it, ++rank) {
                const int64_t id = std::stoll(it.key().substr(std::string("token_id:").size()));
                const double value = it.value().get<double>();
                EXPECT_TRUE(near(value, hf(id))) << it.key() << ": " << value << " against HF's " << hf(id);
                EXPECT_TRUE(near(value, sorted[rank]) || value >= sorted[kTop - 1] - 1e-4) << it.key() << " is not among HF's 5 most likely";
                if (rank > 0) {
                    EXPECT_LE(value, last) << named.dump();
                }
                last = value;
            }
        }
        // The stream: one token a chunk, the same values; its text_offset counts the text sent
        // (none without a tokenizer).
        const ordered streamed = joined_completion_logprobs(chunks);
        EXPECT_EQ(streamed["tokens"], lp["tokens"]);
        EXPECT_EQ(streamed["token_logprobs"], lp["token_logprobs"]);
        EXPECT_EQ(streamed["top_logprobs"], lp["top_logprobs"]);
        EXPECT_EQ(streamed["text_offset"], ordered(std::vector<int>(steps, 0)));
    }
}

// Both endpoints' forms on a model with a tokenizer: a token is its id decoded alone, text_offset
// counts characters, a chat's bytes are its token's UTF-8; the stream's chunks carry the whole
// answer's logprobs between them. Logprobs change no token.
TEST(ServeLogprobs, CompletionAndChatFormsWholeAndStreamed) {
    SKIP_WITHOUT_SDK();
    Server server("");
    const json completion = {{"prompt", "The capital of France is"}, {"max_tokens", 16}, {"logprobs", 3}};
    const ordered whole = call(server, false, completion)["whole"]["choices"][0];
    const ordered plain = call(server, false, {{"prompt", "The capital of France is"}, {"max_tokens", 16}})["whole"]["choices"][0];
    EXPECT_EQ(whole["text"], plain["text"]);
    EXPECT_TRUE(plain["logprobs"].is_null()) << plain.dump();
    const ordered& lp = whole["logprobs"];
    ASSERT_EQ(lp["tokens"].size(), 16u) << whole.dump();
    std::string text;
    for (size_t i = 0; i < 16; ++i) {
        const std::string token = lp["tokens"][i];
        EXPECT_EQ(lp["text_offset"][i], (int64_t)tpx::characters(text)) << i;
        text += token;
        const ordered& named = lp["top_logprobs"][i];
        ASSERT_EQ(named.size(), 3u) << named.dump();  // greedy: the chosen token is the most likely
        EXPECT_EQ(named.begin().key(), token);
        EXPECT_EQ(named.begin().value(), lp["token_logprobs"][i]);
        for (const auto& v : named) EXPECT_LE(v.get<double>(), lp["token_logprobs"][i].get<double>()) << named.dump();
        EXPECT_LT(lp["token_logprobs"][i].get<double>(), 0.0);
    }
    EXPECT_EQ(text, whole["text"]);
    const ordered streamed = joined_completion_logprobs(call(server, false, with(completion, "stream", true))["chunks"]);
    EXPECT_EQ(streamed, lp);

    const json chat = {{"messages", {{{"role", "user"}, {"content", "What is the capital of France?"}}}},
                       {"max_tokens", 12},
                       {"logprobs", true},
                       {"top_logprobs", 2}};
    const ordered answer = call(server, true, chat)["whole"];
    const ordered& content = answer["choices"][0]["logprobs"]["content"];
    ASSERT_EQ(content.size(), answer["usage"]["completion_tokens"].get<size_t>()) << answer.dump();
    for (const ordered& t : content) {
        const std::string token = t["token"];
        std::vector<int> bytes;
        for (unsigned char c : token) bytes.push_back(c);
        EXPECT_EQ(t["bytes"], ordered(bytes)) << t.dump();
        ASSERT_EQ(t["top_logprobs"].size(), 2u) << t.dump();
        EXPECT_EQ(t["top_logprobs"][0]["token"], t["token"]) << t.dump();
        EXPECT_EQ(t["top_logprobs"][0]["logprob"], t["logprob"]) << t.dump();
        EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["top_logprobs"][1]["logprob"].get<double>()) << t.dump();
    }
    ordered chunk_content = ordered::array();
    const ordered chunks = call(server, true, with(chat, "stream", true))["chunks"];
    for (const ordered& c : chunks) {
        if (c["choices"].empty() || c["choices"][0]["logprobs"].is_null()) continue;
        for (const ordered& t : c["choices"][0]["logprobs"]["content"]) chunk_content.push_back(t);
    }
    EXPECT_EQ(chunk_content, content);
    // logprobs without top_logprobs: each token's own, no others.
    const ordered bare = call(server, true, with(chat, "top_logprobs", nullptr))["whole"];
    for (const ordered& t : bare["choices"][0]["logprobs"]["content"]) EXPECT_EQ(t["top_logprobs"], ordered::array()) << t.dump();
}

// A sampled token's logprob is the model's (before the temperature, as vLLM's default), and a
// completion's top_logprobs name it beside the most likely where it is not among them.
TEST(ServeLogprobs, SampledTokensAreNamedBesideTheMostLikely) {
    SKIP_WITHOUT_SDK();
    Server server("");
    const json body = {{"prompt", "Once upon a time,"}, {"max_tokens", 16}, {"logprobs", 1}, {"temperature", 1.5}, {"seed", 11}};
    const ordered lp = call(server, false, body)["whole"]["choices"][0]["logprobs"];
    ASSERT_EQ(lp["tokens"].size(), 16u) << lp.dump();
    int beside = 0;
    for (size_t i = 0; i < 16; ++i) {
        const ordered& named = lp["top_logprobs"][i];
        EXPECT_EQ(named.begin().key(), lp["tokens"][i]) << named.dump();
        EXPECT_EQ(named.begin().value(), lp["token_logprobs"][i]) << named.dump();
        if (named.size() == 2) {  // the most likely, second: above the chosen one
            ++beside;
            EXPECT_GT((++named.begin()).value().get<double>(), named.begin().value().get<double>()) << named.dump();
        } else {
            EXPECT_EQ(named.size(), 1u) << named.dump();
        }
    }
    EXPECT_GT(beside, 0) << "at temperature 1.5 some token should not be the most likely: " << lp.dump();
    // The same seed, the same tokens and logprobs.
    EXPECT_EQ(call(server, false, body)["whole"]["choices"][0]["logprobs"], lp);
}

}  // namespace
