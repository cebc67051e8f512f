// `tpx serve`'s logprobs, penalties and min_tokens through the OpenAI Node SDK at tp 2 (CPU),
// against HF's logits for llama-gqa's golden continuations, and against `tpx run`'s logits
// teacher-forced over a served output, penalised here by OpenAI's and vLLM's definitions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "golden.h"
#include "serve_client.h"
#include "chat/text.h"
#include "tokenizer/utf8.h"

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

// 1e-4: the golden README's fp32 tolerance for logits (HF's fp32 on the same bf16 weights agrees
// to about 1e-5), taken for logprobs, which differ from logits by one shared normalizer.
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
            EXPECT_EQ(lp["text_offset"][i], 0) << i;  // no tokenizer: no text
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
        // The stream: one token a chunk, the same values.
        EXPECT_EQ(joined_completion_logprobs(chunks), lp);
    }
}

// The text a chat's tokens' bytes make together, decoded as HF's byte-level decoder does (a
// token holding part of a character gives its own bytes, not U+FFFD's).
std::string decoded_bytes(const ordered& content) {
    std::string all;
    for (const ordered& t : content)
        for (const ordered& b : t["bytes"]) all += (char)b.get<int>();
    return tpx::tok::utf8_lossy(all);
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
        EXPECT_EQ(lp["text_offset"][i], (int64_t)tpx::chat::text::length(text)) << i;
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
    EXPECT_EQ(decoded_bytes(content), answer["choices"][0]["message"]["content"]);
    for (const ordered& t : content) {
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

// The answer to `body` at the first of seeds 0 .. 191 (sent 32 at once: the queue holds 64) that
// has `property`: a case that draws reach now and then, whatever the sampler's stream. None (and
// a failure) where no seed gives it.
template <typename Property>
std::optional<ordered> sampled_until(Server& server, bool chat, const json& body, Property property) {
    constexpr int kRound = 32, kSeeds = 192;
    for (int first = 0; first < kSeeds; first += kRound) {
        const json arg = {{"chat", chat}, {"body", body}, {"first", first}, {"seeds", kRound}};
        const tpx_test::ProcessResult r = tpx_test::run_process(client_command(server, "seeds", arg.dump()));
        const ordered answers = ordered::parse(r.out, nullptr, false);
        if (r.exit_code != 0 || !answers.is_array()) {
            ADD_FAILURE() << r.out << r.err;
            return std::nullopt;
        }
        for (const ordered& a : answers)
            if (property(a)) return a;
    }
    ADD_FAILURE() << "no seed below " << kSeeds << " gave the sample sought for " << body.dump();
    return std::nullopt;
}

// text_offset is where each token's text begins in the output's text (characters), the same
// whole and streamed: a token holding a split character's last bytes starts where the character
// does, a special token left out of the text adds nothing, a stream's held-back text (a possible
// stop string's start, an unfinished character) moves no offset. A chat token holding part of a
// character carries its own bytes.
TEST(ServeLogprobs, TextOffsetsIndexTheTextWholeAndStreamed) {
    SKIP_WITHOUT_SDK();
    Server server("");
    // Greedy answers (the model's own, whatever the sampler): token ids 302 1760 113 give
    // "\x1f \"🇳 AC", 🇳 split over ' "' + its first bytes and its last; 342 569 2526 give "ager",
    // then <|begin_of_text|> (left out of the text), then "ead".
    const json split_prompt = {302, 1760, 113}, special_prompt = {342, 569, 2526};
    const json calls[] = {{{"prompt", "Hello world"}, {"max_tokens", 8}, {"stop", "tpack"}},
                          {{"prompt", "\xF0\x9F\x8E\x89\xF0\x9F\x8E\x89\xF0\x9F\x8E\x89"}, {"max_tokens", 3}, {"temperature", 1.5}, {"seed", 7}},
                          {{"prompt", "Hello"}, {"max_tokens", 40}, {"temperature", 2.0}, {"seed", 7}, {"ignore_eos", true}},
                          {{"prompt", "def f(x):"}, {"max_tokens", 6}},
                          {{"prompt", split_prompt}, {"max_tokens", 8}},
                          {{"prompt", special_prompt}, {"max_tokens", 8}}};
    std::vector<ordered> answers;
    for (json body : calls) {
        body["logprobs"] = 0;
        const ordered whole = call(server, false, body)["whole"]["choices"][0];
        answers.push_back(whole);
        const ordered& lp = whole["logprobs"];
        EXPECT_EQ(joined_completion_logprobs(call(server, false, with(body, "stream", true))["chunks"]), lp) << body.dump();
        // (Inside the text, but for the tokens of a stop string, which the text is cut before.)
        const int64_t chars = (int64_t)tpx::chat::text::length(whole["text"].get<std::string>());
        const bool cut = whole["stop_reason"].is_string();
        for (size_t i = 0; i < lp["text_offset"].size(); ++i) {
            EXPECT_TRUE(cut || lp["text_offset"][i].get<int64_t>() <= chars) << body.dump() << " " << whole.dump();
            if (i > 0) {
                EXPECT_GE(lp["text_offset"][i], lp["text_offset"][i - 1]) << body.dump();
            }
        }
    }
    // The split: "\x1f" at 0, ' "' at 1, the flag's last bytes at 3 where the flag begins (the
    // token before holds its first ones), " AC" at 4.
    const ordered& split = answers[4];
    const std::string kReplacement = "\xEF\xBF\xBD";
    ASSERT_EQ(split["text"].get<std::string>().rfind("\x1f \"\xF0\x9F\x87\xB3 AC", 0), 0u) << split.dump();
    ASSERT_EQ(split["logprobs"]["tokens"][2], kReplacement) << split.dump();
    const ordered offsets(split["logprobs"]["text_offset"].begin(), split["logprobs"]["text_offset"].begin() + 4);
    EXPECT_EQ(offsets, ordered({0, 1, 3, 4})) << split.dump();
    // The special token: the token after it starts where it does.
    const ordered& special = answers[5];
    ASSERT_EQ(special["logprobs"]["tokens"][1], "<|begin_of_text|>") << special.dump();
    EXPECT_EQ(special["logprobs"]["text_offset"][1], 4) << special.dump();
    EXPECT_EQ(special["logprobs"]["text_offset"][2], 4) << special.dump();
    // A sampled chat holding part of a character (tokens decoding alone to U+FFFD): such a token's
    // bytes are its own (not valid UTF-8 alone), and the tokens' bytes decode to the text.
    const json chat_body = {{"messages", {{{"role", "user"}, {"content", "\xF0\x9F\x8E\x89\xF0\x9F\x8E\x89\xF0\x9F\x8E\x89"}}}},
                            {"max_tokens", 6}, {"temperature", 1.5}, {"logprobs", true}};
    const auto partial = [&](const ordered& t) { return t["token"].get<std::string>().find(kReplacement) != std::string::npos; };
    const std::optional<ordered> found = sampled_until(server, true, chat_body, [&](const ordered& r) {
        const ordered& content = r["choices"][0]["logprobs"]["content"];
        return std::any_of(content.begin(), content.end(), partial);
    });
    ASSERT_TRUE(found.has_value());
    const ordered& chat = *found;
    for (const ordered& t : chat["choices"][0]["logprobs"]["content"]) {
        if (!partial(t)) continue;
        std::string raw;
        for (const ordered& b : t["bytes"]) raw += (char)b.get<int>();
        EXPECT_NE(tpx::tok::utf8_lossy(raw), raw) << "bytes of " << t.dump();
    }
    const std::string text = chat["choices"][0]["message"]["content"];
    EXPECT_EQ(decoded_bytes(chat["choices"][0]["logprobs"]["content"]), text) << chat.dump();
}

// `tpx run`'s logits (CPU, tp 2, as the server) at every position of `ids`, [ids][vocab].
std::vector<float> run_logits(const std::vector<int>& ids, int64_t& vocab) {
    const std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/prompts.jsonl") << json{{"id", "p"}, {"input_ids", ids}}.dump() << "\n";
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kModel << "\"\n[parallel]\ntp = 2\n[run]\nprompts = \"prompts.jsonl\"\n"
                                     << "max_new_tokens = 1\nmax_batch = 1\noutput = \"out.jsonl\"\n";
    tpx_test::ProcessResult r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " run " + dir + "/job.toml --dump-logits " + dir + "/logits.h5");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::vector<float> logits = tpx_test::read_h5(dir + "/logits.h5", "prompt_0/prompt_logits");
    std::filesystem::remove_all(dir);
    vocab = (int64_t)(logits.size() / ids.size());
    return logits;
}

// The log-softmax of a logits row at `id`, in double.
double log_softmax_at(const float* row, int64_t vocab, int64_t id) {
    double top = row[0], sum = 0;
    for (int64_t v = 0; v < vocab; ++v) top = std::max(top, (double)row[v]);
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - top);
    return row[id] - top - std::log(sum);
}

// Each of `got`'s token_logprobs (a completion's logprobs) against the log-softmax of `tpx run`'s
// logits at its step, teacher-forced over the prompt and the output: the model's own.
void expect_raw_logprobs(const std::vector<int>& prompt, const std::vector<int>& out, const ordered& logprobs, const std::string& what) {
    std::vector<int> all(prompt);
    all.insert(all.end(), out.begin(), out.end());
    int64_t vocab = 0;
    const std::vector<float> logits = run_logits(all, vocab);
    ASSERT_EQ(logits.size(), all.size() * (size_t)vocab) << what;
    ASSERT_EQ(logprobs["token_logprobs"].size(), out.size()) << what;
    for (size_t i = 0; i < out.size(); ++i)
        EXPECT_TRUE(near(logprobs["token_logprobs"][i].get<double>(), log_softmax_at(&logits[(prompt.size() - 1 + i) * vocab], vocab, out[i])))
            << what << ", token " << i << ": " << logprobs["token_logprobs"][i];
}

// A sampled token's logprob is the model's (before the temperature, as vLLM's default), and a
// completion's top_logprobs name it beside the most likely where it is not among them.
TEST(ServeLogprobs, SampledTokensAreNamedBesideTheMostLikely) {
    SKIP_WITHOUT_SDK();
    Server server("");
    const json body = {{"prompt", "Once upon a time,"}, {"max_tokens", 16}, {"logprobs", 1}, {"temperature", 1.5}, {"seed", 11}, {"return_token_ids", true}};
    const ordered choice = call(server, false, body)["whole"]["choices"][0];
    const ordered& lp = choice["logprobs"];
    expect_raw_logprobs(choice["prompt_token_ids"], choice["token_ids"], lp, "temperature 1.5");
    ASSERT_EQ(lp["tokens"].size(), 16u) << lp.dump();
    int beside = 0;
    for (size_t i = 0; i < 16; ++i) {
        // (By key, not by place: the SDK's JavaScript objects put integer-like keys such as "5" first.)
        const ordered& named = lp["top_logprobs"][i];
        const std::string chosen = lp["tokens"][i];
        ASSERT_TRUE(named.contains(chosen)) << named.dump();
        EXPECT_EQ(named[chosen], lp["token_logprobs"][i]) << named.dump();
        if (named.size() == 2) {  // the most likely beside it: above the chosen one
            ++beside;
            for (const auto& [text, logprob] : named.items()) {
                if (text == chosen) continue;
                EXPECT_GT(logprob.get<double>(), named[chosen].get<double>()) << named.dump();
            }
        } else {
            EXPECT_EQ(named.size(), 1u) << named.dump();
        }
    }
    EXPECT_GT(beside, 0) << "at temperature 1.5 some token should not be the most likely: " << lp.dump();
    // The same seed, the same tokens and logprobs.
    EXPECT_EQ(call(server, false, body)["whole"]["choices"][0]["logprobs"], lp);
}

struct Penalty {
    double presence = 0, frequency = 0, repetition = 1;
};

// `tpx run`'s greedy outputs for `prompts` (24 tokens at most), two a batch, with the penalties in
// [run.sampling]: each sequence penalised by its own ids.
std::vector<std::vector<int>> run_tokens(const std::vector<std::vector<int>>& prompts, const Penalty& p) {
    const std::string dir = tpx_test::temp_dir();
    {
        std::ofstream lines(dir + "/prompts.jsonl");
        for (size_t i = 0; i < prompts.size(); ++i) lines << json{{"id", i}, {"input_ids", prompts[i]}}.dump() << "\n";
    }
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kModel << "\"\n[parallel]\ntp = 2\n[run]\nprompts = \"prompts.jsonl\"\n"
                                     << "max_new_tokens = 24\nmax_batch = 2\noutput = \"out.jsonl\"\n[run.sampling]\npresence_penalty = "
                                     << p.presence << "\nfrequency_penalty = " << p.frequency << "\nrepetition_penalty = " << p.repetition << "\n";
    tpx_test::ProcessResult r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " run " + dir + "/job.toml");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::vector<std::vector<int>> out(prompts.size());
    std::ifstream in(dir + "/out.jsonl");
    for (std::string line; std::getline(in, line);) {
        const json j = json::parse(line);
        out.at(j["id"].get<size_t>()) = j["output_ids"].get<std::vector<int>>();
    }
    std::filesystem::remove_all(dir);
    return out;
}

// The greedy token of `row` after the output so far, penalised as OpenAI's reference defines
// presence and frequency (each output id's logit less frequency x its count, less presence once)
// and vLLM (HF) repetition (the logit of an id in the prompt or the output divided by it where
// positive, else multiplied); `margin`: its lead over the next.
int penalised_argmax(const float* row, int64_t vocab, const std::vector<int>& prompt, const std::vector<int>& output, const Penalty& p,
                     double& margin) {
    std::vector<double> l(row, row + vocab);
    std::map<int, int> count;
    for (int t : output) ++count[t];
    std::set<int> seen(prompt.begin(), prompt.end());
    seen.insert(output.begin(), output.end());
    for (int t : seen) l[t] = l[t] > 0 ? l[t] / p.repetition : l[t] * p.repetition;
    for (auto [t, c] : count) l[t] -= p.frequency * c + p.presence;
    const int best = (int)(std::max_element(l.begin(), l.end()) - l.begin());
    double second = -INFINITY;
    for (int64_t v = 0; v < vocab; ++v)
        if (v != best) second = std::max(second, l[v]);
    margin = l[best] - second;
    return best;
}

// Greedy tokens under penalties that push away from repeats and toward them: each the argmax of
// its step's logits penalised by the definitions (wherever its lead is past 1e-4); the tokens
// differ from the unpenalised ones; a stream gives the same; seeded sampling repeats itself.
TEST(ServePenalties, GreedyTokensAreTheArgmaxOfThePenalisedLogits) {
    SKIP_WITHOUT_SDK();
    Server server("");
    const json base = {{"prompt", "Once upon a time,"}, {"max_tokens", 24}, {"ignore_eos", true}, {"return_token_ids", true}, {"logprobs", 0}};
    const ordered plain = call(server, false, base)["whole"]["choices"][0];
    for (const Penalty& p : {Penalty{0.6, 0.9, 1.4}, Penalty{-1.5, -0.5, 0.7}}) {
        const std::string name = "presence " + std::to_string(p.presence) + ", frequency " + std::to_string(p.frequency) + ", repetition " +
                                 std::to_string(p.repetition);
        json body = base;
        body["presence_penalty"] = p.presence, body["frequency_penalty"] = p.frequency, body["repetition_penalty"] = p.repetition;
        const ordered got = call(server, false, body)["whole"]["choices"][0];
        const std::vector<int> prompt = got["prompt_token_ids"], out = got["token_ids"];
        ASSERT_EQ(out.size(), 24u) << name << ": " << got.dump();
        EXPECT_NE(got["token_ids"], plain["token_ids"]) << name << ": the penalties changed no token";
        std::vector<int> all(prompt);
        all.insert(all.end(), out.begin(), out.end());
        int64_t vocab = 0;
        const std::vector<float> logits = run_logits(all, vocab);
        ASSERT_EQ(logits.size(), all.size() * (size_t)vocab);
        int checked = 0;
        for (size_t i = 0; i < out.size(); ++i) {
            double margin = 0;
            const int want = penalised_argmax(&logits[(prompt.size() - 1 + i) * vocab], vocab, prompt,
                                              std::vector<int>(out.begin(), out.begin() + (ptrdiff_t)i), p, margin);
            if (margin <= 1e-4) continue;  // a near-tie either rounding may break
            ++checked;
            EXPECT_EQ(out[i], want) << name << ", token " << i;
        }
        EXPECT_GE(checked, 20) << name;
        expect_raw_logprobs(prompt, out, got["logprobs"], name);  // the penalties change the choice, not the logprobs
        // `tpx run` with the same penalties in [run.sampling], this prompt batched with another
        // (its served output too): the same tokens (up to an eos, which ends a run's sequence
        // where the call ignored it).
        const ordered other = call(server, false, with(body, "prompt", "The capital of France is"))["whole"]["choices"][0];
        const std::vector<std::vector<int>> ran = run_tokens({other["prompt_token_ids"], prompt}, p);
        const std::vector<std::vector<int>> served = {other["token_ids"], out};
        for (size_t k = 0; k < 2; ++k) {
            ASSERT_FALSE(ran[k].empty()) << name << ", prompt " << k;
            EXPECT_EQ(ran[k], std::vector<int>(served[k].begin(), served[k].begin() + (ptrdiff_t)std::min(ran[k].size(), served[k].size())))
                << name << ", prompt " << k;
        }
        ordered streamed_ids = ordered::array();
        const ordered chunks = call(server, false, with(body, "stream", true))["chunks"];
        for (const ordered& c : chunks)
            for (const ordered& id : c["choices"][0]["token_ids"]) streamed_ids.push_back(id);
        EXPECT_EQ(streamed_ids, got["token_ids"]) << name;
        // Sampled: the penalties change the draws (the same seed without them draws others), and a
        // seed repeats its draws.
        json sampled = body;
        sampled["temperature"] = 1.0, sampled["seed"] = 5;
        json unpenalised = base;
        unpenalised["temperature"] = 1.0, unpenalised["seed"] = 5;
        const ordered drawn = call(server, false, sampled)["whole"]["choices"][0]["token_ids"];
        EXPECT_NE(drawn, call(server, false, unpenalised)["whole"]["choices"][0]["token_ids"]) << name;
        EXPECT_EQ(drawn, call(server, false, sampled)["whole"]["choices"][0]["token_ids"]) << name;
    }
}

// vLLM's min_tokens: no id that ends the sequence (a stop_token_ids id here) before that many
// tokens, the next most likely token in its place; no stop string in the text of those tokens.
TEST(ServePenalties, MinTokensHoldsOffStopIdsAndStopStrings) {
    SKIP_WITHOUT_SDK();
    Server server("");
    // Prompt [938, 572]'s greedy output is 2046 2744 0 2680 ... (HF's; test_serve's special-token
    // test): stop id 0 ends it at its third token, unless min_tokens is 3.
    const json ids = {{"prompt", {938, 572}}, {"max_tokens", 6}, {"return_token_ids", true}, {"stop_token_ids", {0}}, {"logprobs", 2}};
    const ordered ended = call(server, false, ids)["whole"]["choices"][0];
    EXPECT_EQ(ended["token_ids"], ordered({2046, 2744, 0})) << ended.dump();
    EXPECT_EQ(ended["stop_reason"], 0) << ended.dump();
    // The most likely token after 0 at the third step: the second of that step's top two.
    const ordered& third = ended["logprobs"]["top_logprobs"][2];
    ASSERT_EQ(third.size(), 2u) << third.dump();
    const ordered held = call(server, false, with(ids, "min_tokens", 3))["whole"]["choices"][0];
    const std::vector<int> out = held["token_ids"];
    ASSERT_GE(out.size(), 3u) << held.dump();
    EXPECT_EQ(std::vector<int>(out.begin(), out.begin() + 2), std::vector<int>({2046, 2744})) << held.dump();
    EXPECT_NE(out[2], 0) << held.dump();
    EXPECT_EQ(held["logprobs"]["tokens"][2], (++third.begin()).key()) << held.dump();
    EXPECT_EQ(held["logprobs"]["token_logprobs"][2], (++third.begin()).value()) << held.dump();  // the model's, not the held-off row's
    // The same with id 0 as the job's eos (`[run] eos`): held off before min_tokens unless the
    // call ignores eos ids, when nothing holds it off (it then ends nothing either).
    {
        tpx_test::ServeProcess eos_zero(server_job(kModel, "eos = [0]\n", ""), "", "serve: ready");
        const json plain_eos = {{"prompt", {938, 572}}, {"max_tokens", 6}, {"return_token_ids", true}};
        EXPECT_EQ(call(eos_zero, false, plain_eos)["whole"]["choices"][0]["token_ids"], ordered({2046, 2744, 0}));
        EXPECT_EQ(call(eos_zero, false, with(plain_eos, "min_tokens", 3))["whole"]["choices"][0]["token_ids"], held["token_ids"]);
        json ignoring = with(plain_eos, "min_tokens", 3);
        ignoring["ignore_eos"] = true;
        const ordered ran_on = call(eos_zero, false, ignoring)["whole"]["choices"][0];
        EXPECT_EQ(ran_on["token_ids"].size(), 6u) << ran_on.dump();
        EXPECT_EQ(ran_on["token_ids"][2], 0) << ran_on.dump();
    }
    // A stop string the first tokens' text holds is not looked for there: with min_tokens 8 the
    // stop that ends the plain call at its fifth token ("count") ends it only where it comes again
    // past the eighth token's text.
    const std::string prompt = "The capital of France is";
    const std::string first8 = call(server, false, {{"prompt", prompt}, {"max_tokens", 8}})["whole"]["choices"][0]["text"];
    const std::string all16 = call(server, false, {{"prompt", prompt}, {"max_tokens", 16}})["whole"]["choices"][0]["text"];
    const ordered plain = call(server, false, {{"prompt", prompt}, {"max_tokens", 16}, {"stop", "count"}})["whole"]["choices"][0];
    ASSERT_EQ(plain["stop_reason"], "count") << plain.dump();
    ASSERT_LT(all16.find("count") + 5, first8.size() + 1) << "the stop string must lie in the first 8 tokens' text: " << first8;
    const ordered late = call(server, false, {{"prompt", prompt}, {"max_tokens", 16}, {"stop", "count"}, {"min_tokens", 8}})["whole"]["choices"][0];
    const size_t again = all16.find("count", first8.size() >= 4 ? first8.size() - 4 : 0);
    EXPECT_EQ(late["text"], again == std::string::npos ? all16 : all16.substr(0, again)) << late.dump();
    EXPECT_EQ(late["finish_reason"], again == std::string::npos ? "length" : "stop") << late.dump();
}

}  // namespace
