// `tpx serve` end to end, with the official OpenAI Node SDK (npm `openai`, installed by the
// serve_npm_fixture test) as the client (tests/serve/client.mjs), on models/tiny-text at tp 2 on
// the CPU backend. References: `tpx run`'s outputs for the same prompts (greedy: bit-identical
// on the CPU backend, so ids and text must be equal, not close); each call's own answer alone
// (32 concurrent calls of mixed lengths must each get it again, greedy and seeded sampling
// alike); OpenAI's error schema. Also: a stream or call abandoned mid-way frees its KV slot.
// (Stopping, and a rank's failure: test_serve_stop.cpp.) Without node or the npm package the
// SDK's tests skip, saying why.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "process.h"
#include "server/metrics.h"
#include "serve_client.h"
#include "serve_process.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using namespace serve_test;

// HF's reference prompts (tests/data/golden/llama-text): five texts and six chats.
json reference_prompts() {
    const std::vector<std::string> texts = {"The capital of France is", "Once upon a time,", "東京は", "def fibonacci(n):\n",
                                            "Résumé: naïve café 😀"};
    json g = json::parse(tpx_test::read_text(std::string(TPX_TEST_DATA) + "/golden/llama-text/golden-text.json"));
    json prompts = json::array();
    for (const json& c : g.at("cases")) {
        std::string id = c["id"];
        if (id[0] == 't') prompts.push_back({{"id", id}, {"text", texts.at(std::stoi(id.substr(1)))}});
        else prompts.push_back({{"id", id}, {"messages", c["messages"]}});
    }
    return prompts;
}

// The step histograms: a step's wall time always counts; its GPU time only where one is given
// (non-negative), under its kind, in its bucket.
TEST(ServeMetricsText, StepDeviceTimeCountsOnlyWhereGiven) {
    tpx::ServeMetrics m;
    m.observe_step(false, 0.0068, 0.0062);
    m.observe_step(false, 0.0071, -1);
    m.observe_step(true, 0.02, 0.019);
    const std::string text = m.render(0);
    auto has = [&](const std::string& line) { return text.find(line + "\n") != std::string::npos; };
    EXPECT_TRUE(has("tpx_step_seconds_count{kind=\"decode\"} 2")) << text;
    EXPECT_TRUE(has("tpx_step_device_seconds_count{kind=\"decode\"} 1")) << text;
    EXPECT_TRUE(has("tpx_step_device_seconds_count{kind=\"mixed\"} 1")) << text;
    EXPECT_TRUE(has("tpx_step_device_seconds_bucket{kind=\"decode\",le=\"0.006\"} 0")) << text;
    EXPECT_TRUE(has("tpx_step_device_seconds_bucket{kind=\"decode\",le=\"0.0065\"} 1")) << text;
}

TEST(Serve, SdkCompletionsAndChatEqualTpxRun) {
    SKIP_WITHOUT_SDK();
    // The reference: `tpx run` of the same prompts, greedy, 16 tokens, tp 2.
    std::string dir = tpx_test::temp_dir();
    json prompts = reference_prompts();
    {
        std::ofstream lines(dir + "/prompts.jsonl");
        for (const json& p : prompts) lines << p.dump() << "\n";
        std::ofstream(dir + "/prompts.json") << prompts.dump();
        std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kModel << "\"\n[parallel]\ntp = 2\n[run]\nprompts = \"prompts.jsonl\"\n"
                                         << "max_new_tokens = 16\nmax_batch = 4\noutput = \"out.jsonl\"\n";
    }
    tpx_test::ProcessResult run = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " run " + dir + "/job.toml");
    ASSERT_EQ(run.exit_code, 0) << run.err;
    std::map<std::string, json> want;
    std::ifstream in(dir + "/out.jsonl");
    for (std::string line; std::getline(in, line);) {
        json j = json::parse(line);
        want[j["id"].get<std::string>()] = j;
    }
    Server server("prefill_chunk = 8\n");
    json got = client(server, "outputs", dir + "/prompts.json");
    fs::remove_all(dir);
    ASSERT_EQ(want.size(), prompts.size());
    for (const json& p : prompts) {
        const std::string id = p["id"];
        const json& w = want[id];
        ASSERT_TRUE(got.contains(id)) << got.dump();
        const std::string reason = w["finish_reason"] == "length" ? "length" : "stop";  // OpenAI's names: eos and stop strings are "stop"
        for (const char* how : {"whole", "streamed"}) {
            const json& g = got[id][how];
            EXPECT_EQ(g["token_ids"], w["output_ids"]) << id << " " << how;
            EXPECT_EQ(g["text"], w["text"]) << id << " " << how;
            EXPECT_EQ(g["finish_reason"], reason) << id << " " << how;
        }
        const json& whole = got[id]["whole"];
        EXPECT_EQ(whole["usage"]["prompt_tokens"], w["prompt_tokens"]) << id;
        // return_token_ids: the prompt's ids, and in a stream once, in its first chunk (vLLM's).
        EXPECT_EQ(whole["prompt_token_ids"].size(), w["prompt_tokens"]) << id << ": " << whole.dump();
        EXPECT_EQ(got[id]["streamed"]["prompt_token_ids"], whole["prompt_token_ids"]) << id;
        EXPECT_EQ(got[id]["streamed"]["prompt_chunks"], 1) << id;
        EXPECT_EQ(whole["usage"]["completion_tokens"], w["output_ids"].size()) << id;
        EXPECT_EQ(whole["object"], p.contains("text") ? "text_completion" : "chat.completion") << id;
        if (p.contains("messages")) {
            EXPECT_EQ(whole["role"], "assistant") << id;
            EXPECT_EQ(got[id]["streamed"]["role"], "assistant") << id;
        }
    }
    // A stop string cuts the text where `tpx run`'s greedy text has it, whole and streamed (the
    // stream holds back text that could begin a stop string, and never sends the stop itself).
    const std::string full = want["t0"]["text"];
    const size_t at = full.find("count");
    ASSERT_NE(at, std::string::npos) << full;
    json stop = client(server, "stop", prompts[0]["text"].get<std::string>());
    for (const char* how : {"whole", "streamed"}) {
        EXPECT_EQ(stop[how]["text"], full.substr(0, at)) << how;
        EXPECT_EQ(stop[how]["finish_reason"], "stop") << how;
        std::vector<int> ids = stop[how]["token_ids"], all = want["t0"]["output_ids"];
        ASSERT_LT(ids.size(), all.size()) << how;
        EXPECT_EQ(ids, std::vector<int>(all.begin(), all.begin() + (ptrdiff_t)ids.size())) << how;
    }
    EXPECT_EQ(stop["usage"]["completion_tokens"], 5) << stop.dump();
    // continuous_usage_stats: the role chunk's 0, then one more a token, then the final usage chunk
    // (no choices) with all 5.
    EXPECT_EQ(stop["counts"], json::parse("[[1,0,0],[1,1,1],[1,2,2],[1,3,3],[1,4,4],[1,5,5],[0,5,5]]")) << stop.dump();
    // Two prompts' chunks, interleaved as they come: each counts its own prompt and tokens.
    std::map<int, std::vector<int>> seen;
    for (const json& c : stop["byPrompt"]) {
        const int i = c[0];
        EXPECT_EQ(c[1], i == 0 ? 3 : 5) << c.dump();
        seen[i].push_back(c[2]);
    }
    for (int i : {0, 1}) EXPECT_EQ(seen[i], std::vector<int>({1, 2, 3, 4})) << "prompt " << i << ": " << stop.dump();
    EXPECT_EQ(stop["alone"], 0) << stop.dump();
}

TEST(Serve, ConcurrentRequestsOfMixedLengthsEqualTheirAnswersAlone) {
    SKIP_WITHOUT_SDK();
    // 4 KV slots and 4-token prefill chunks: 32 calls queue, join and leave the batch at every
    // step, and their prompts (up to 40 tokens) are prefilled in chunks between decode steps.
    Server server("prefill_chunk = 4\n");
    json r = client(server, "concurrent");
    EXPECT_EQ(r["count"], 32);
    ASSERT_TRUE(r["differ"].is_array()) << r.dump();
    EXPECT_TRUE(r["differ"].empty()) << r["differ"].dump(1);
    int chunked = 0;
    for (const json& n : r["prompt_lengths"]) chunked += n.get<int>() > 4;
    EXPECT_GE(chunked, 16) << "most prompts must need several prefill chunks";
}

TEST(Serve, ErrorsFollowOpenAIsSchema) {
    SKIP_WITHOUT_SDK();
    Server server("");
    json r = client(server, "errors");
    struct Want {
        const char* name;
        int status;
        const char* param;
    };
    for (const Want& w : std::vector<Want>{{"bad_key", 401, nullptr},
                                           {"encoded_key", 401, nullptr},
                                           {"put", 405, nullptr},
                                           {"n", 400, "n"},
                                           {"echo", 400, "echo"},
                                           {"temperature", 400, "temperature"},
                                           {"token_range", 400, "prompt"},
                                           {"messages", 400, "messages"},
                                           {"model", 404, "model"},
                                           {"model_retrieve", 404, "model"},
                                           {"too_long", 413, "max_tokens"},
                                           {"prompt_too_long", 413, "prompt"},
                                           {"top_p", 400, "top_p"},
                                           {"include_usage", 400, "stream_options.include_usage"},
                                           {"logprobs_range", 400, "logprobs"},
                                           {"logprobs_true", 400, "logprobs"},
                                           {"top_logprobs_alone", 400, "top_logprobs"},
                                           {"chat_logprobs_count", 400, "logprobs"},
                                           {"presence_penalty", 400, "presence_penalty"},
                                           {"repetition_penalty", 400, "repetition_penalty"},
                                           {"min_tokens", 400, "min_tokens"},
                                           {"min_p", 400, "min_p"},
                                           {"suffix", 400, "suffix"},
                                           {"skip_special_tokens", 400, "skip_special_tokens"},
                                           {"stop_token_ids", 400, "stop_token_ids"},
                                           {"audio", 400, "audio"},
                                           {"modalities", 400, "modalities"},
                                           {"functions", 400, "functions"},
                                           {"unstreamed_options", 400, "stream_options"},
                                           {"no_content", 400, "messages"},
                                           {"get_route", 405, nullptr},
                                           {"encoded", 415, nullptr},
                                           {"route", 404, nullptr},
                                           {"bad_json", 400, nullptr},
                                           {"bytes_path", 404, nullptr},
                                           {"bytes_body", 400, nullptr},
                                           {"huge_max_tokens", 400, "max_tokens"},
                                           {"past_64_bits", 400, "max_tokens"},
                                           {"stops", 400, "stop"},
                                           {"logit_bias", 400, "logit_bias"},
                                           {"tools", 400, "tools"},
                                           {"nul_refit", 400, "path"},
                                           {"too_many", 400, "prompt"},
                                           {"too_big", 413, nullptr},
                                           {"two_lengths", 400, nullptr},
                                           {"length_list", 400, nullptr},
                                           {"chunked", 411, nullptr},
                                           {"no_key_body", 401, nullptr},
                                           {"get_body", 400, nullptr},
                                           {"no_key_body_at_once", 401, nullptr},
                                           {"get_body_at_once", 400, nullptr},
                                           {"no_length", 411, nullptr}}) {
        ASSERT_TRUE(r.contains(w.name)) << r.dump();
        const json& e = r[w.name];
        EXPECT_EQ(e["status"], w.status) << w.name << ": " << e.dump();
        EXPECT_EQ(e["param"], w.param ? json(w.param) : json()) << w.name << ": " << e.dump();
        EXPECT_TRUE(e["type"].is_string()) << w.name << ": " << e.dump();
        EXPECT_FALSE(e["message"].get<std::string>().empty()) << w.name;
    }
    EXPECT_EQ(r["head_health"], 200) << r.dump();
    EXPECT_EQ(r["put_allow"], "POST") << r.dump();  // the route's methods
    EXPECT_EQ(r["delete_route"], 404) << r.dump();
    EXPECT_EQ(r["delete_no_key"], 401) << r.dump();
    EXPECT_EQ(r["put_nope_no_key"], 401) << r.dump();
    EXPECT_EQ(r["function_null"]["status"], 200) << r.dump();  // OpenAI's function message: content may be null
    EXPECT_EQ(r["text_modality"]["status"], 200) << r.dump();
    EXPECT_EQ(r["get_allow"], "POST") << r.dump();
    EXPECT_EQ(r["form_body"], 200) << r.dump();
    EXPECT_EQ(r["multipart_body"], 200) << r.dump();
    EXPECT_EQ(r["lower_bearer"], 200) << r.dump();
    EXPECT_EQ(r["models"], json::array({"tiny"}));  // the server outlived all of the above
    EXPECT_EQ(r["model_one"].value("id", ""), "tiny") << r.dump();
    EXPECT_EQ(r["model_one"].value("object", ""), "model") << r.dump();
    EXPECT_NE(r["huge_max_tokens"].value("message", "").find("18446744073709551615 is out of range"), std::string::npos) << r.dump();
    EXPECT_NE(r["past_64_bits"].value("message", "").find("is out of range"), std::string::npos) << r.dump();
    EXPECT_NE(r["stops"].value("message", "").find("'stop' holds 17 strings; at most 16 are taken"), std::string::npos) << r.dump();
    EXPECT_NE(r["logprobs_range"].value("message", "").find("'logprobs' = 21 is out of range [0, 20]"), std::string::npos) << r.dump();
    EXPECT_EQ(r["bytes_body"].value("code", ""), "invalid_json") << r.dump();
    EXPECT_NE(r["nul_refit"].value("message", "").find("NUL"), std::string::npos) << r.dump();
    EXPECT_NE(r["prompt_too_long"].value("message", "").find("the prompt has 600, leaving no room"), std::string::npos) << r.dump();
    EXPECT_NE(r["top_p"].value("message", "").find("out of range (0.0, 1.0]"), std::string::npos) << r.dump();
    EXPECT_NE(r["encoded"].value("message", "").find("with a Content-Encoding ('br') are not taken"), std::string::npos) << r.dump();
    EXPECT_NE(r["chunked"].value("message", "").find("needs a Content-Length"), std::string::npos) << r.dump();
    EXPECT_NE(r["get_body"].value("message", "").find("a GET request takes no body"), std::string::npos) << r.dump();
    EXPECT_NE(r["no_length"].value("message", "").find("a POST needs a JSON body with a Content-Length header"), std::string::npos) << r.dump();
    EXPECT_NE(r["too_big"].value("message", "").find("larger than the 2097152 bytes this server takes"), std::string::npos) << r.dump();
    for (const char* smuggled : {"two_lengths", "length_list"})
        EXPECT_NE(r[smuggled].value("message", "").find("body length is ambiguous"), std::string::npos) << smuggled << ": " << r[smuggled].dump();
    // Refused before the body is read: the connection ends with the answer, so that a request
    // inside the body is never answered (the body sent with the headers, or for "chunked",
    // "no_key_body" and "get_body" 0.3 s after them, by when the connection is closed).
    for (const char* smuggled : {"two_lengths", "length_list", "chunked", "no_key_body", "get_body", "no_key_body_at_once", "get_body_at_once",
                                 "no_length"}) {
        const json& s = r[smuggled];
        EXPECT_EQ(s["closed"], true) << smuggled << ": " << s.dump();
        EXPECT_LT(s["seconds"].get<double>(), 3) << smuggled << ": closed after cpp-httplib's keep-alive wait, not at once: " << s.dump();
        EXPECT_EQ(s["responses"], 1) << smuggled << ": the request behind the body must not be answered: " << s.dump();
    }
}

// vLLM's skip_special_tokens (default true) and add_special_tokens (default true for a
// completion, false for a chat, whose template writes its own). With the special tokens kept,
// the eos id that ends a sequence still stays out of its text (vLLM's detokenizer leaves it out).
// Also vLLM's stop_token_ids and ignore_eos.
TEST(Serve, SpecialTokensStopIdsAndIgnoreEosAsVllms) {
    SKIP_WITHOUT_SDK();
    const std::string bos = "<|begin_of_text|>";
    json r;
    {
        Server server("");
        r = client(server, "specials");
    }
    const std::vector<int> ids = {2046, 2744, 0, 2680};  // tpx run's greedy output for [938, 572] (id 0: bos)
    // HF's texts of these ids (npm tokenizers' decode, skip_special_tokens true and false).
    const std::string skipped = " Returnsandomwidth", kept = " Returnsandom" + bos + "width";
    for (const char* how : {"skipped", "skipped_streamed", "kept", "kept_streamed"}) {
        EXPECT_EQ(r[how]["token_ids"], json(ids)) << how << ": " << r.dump();
        EXPECT_EQ(r[how]["finish_reason"], "length") << how;
        EXPECT_EQ(r[how]["text"], std::string(how).rfind("kept", 0) == 0 ? kept : skipped) << how;
    }
    EXPECT_EQ(r["skipped"]["stop_reason"], nullptr) << r["skipped"].dump();  // (vLLM's: none at max_tokens)
    // A stop string over the kept text only.
    EXPECT_EQ(r["stop_kept"]["text"], " Returnsandom") << r["stop_kept"].dump();
    EXPECT_EQ(r["stop_kept"]["finish_reason"], "stop");
    EXPECT_EQ(r["stop_kept"]["stop_reason"], "<|begin");  // vLLM's stop_reason: the stop string
    EXPECT_EQ(r["stop_kept_streamed"]["text"], " Returnsandom") << r["stop_kept_streamed"].dump();
    EXPECT_EQ(r["stop_kept_streamed"]["stop_reason"], "<|begin");
    EXPECT_EQ(r["stop_kept"]["token_ids"], json({2046, 2744, 0}));
    EXPECT_EQ(r["stop_skipped"]["text"], skipped);
    EXPECT_EQ(r["stop_skipped"]["finish_reason"], "length");
    // vLLM's stop_token_ids: the id ends the sequence as an eos would, its text left out.
    for (const char* how : {"stop_id", "stop_id_streamed"}) {
        EXPECT_EQ(r[how]["token_ids"], json({2046, 2744, 0})) << how << ": " << r[how].dump();
        EXPECT_EQ(r[how]["finish_reason"], "stop") << how;
        EXPECT_EQ(r[how]["text"], " Returnsandom") << how;
        EXPECT_EQ(r[how]["stop_reason"], 0) << how;  // the stop id
    }
    // The prompt: bos added to a completion's text unless add_special_tokens is false; a chat's
    // template writes one, and add_special_tokens adds the tokenizer's too.
    const json text_default = r["text_default"]["prompt_token_ids"], text_plain = r["text_plain"]["prompt_token_ids"];
    ASSERT_FALSE(text_plain.empty());
    EXPECT_EQ(text_default[0], 0);
    EXPECT_NE(text_plain[0], 0);
    EXPECT_EQ(json(std::vector<json>(text_default.begin() + 1, text_default.end())), text_plain);
    const json chat_default = r["chat_default"]["prompt_token_ids"], chat_added = r["chat_added"]["prompt_token_ids"];
    ASSERT_GE(chat_default.size(), 2u);
    EXPECT_EQ(chat_default[0], 0);
    EXPECT_NE(chat_default[1], 0);
    EXPECT_EQ(chat_added[0], 0);
    EXPECT_EQ(json(std::vector<json>(chat_added.begin() + 1, chat_added.end())), chat_default);

    // The same prompt where id 0 is the eos ([run] eos): the sequence ends there and its text,
    // special tokens kept or not, is HF's text of the two ids before it.
    tpx_test::ServeProcess eos(server_job(kModel, "eos = [0]\n", ""), "", "serve: ready");
    json e = client(eos, "specials");
    for (const char* how : {"skipped", "skipped_streamed", "kept", "kept_streamed"}) {
        EXPECT_EQ(e[how]["token_ids"], json({2046, 2744, 0})) << how << ": " << e.dump();
        EXPECT_EQ(e[how]["finish_reason"], "stop") << how;
        EXPECT_EQ(e[how]["text"], " Returnsandom") << how;
        EXPECT_EQ(e[how]["stop_reason"], nullptr) << how;  // an eos id: none, as vLLM's
    }
    // ignore_eos: past the eos id, to max_tokens.
    EXPECT_EQ(e["ignore_eos"]["token_ids"], json(ids)) << e["ignore_eos"].dump();
    EXPECT_EQ(e["ignore_eos"]["finish_reason"], "length");
    EXPECT_EQ(e["ignore_eos"]["text"], skipped);
}

// models/tiny has no tokenizer: token-id prompts are served with empty text, text prompts refused.
TEST(Serve, AModelWithoutTokenizerServesTokenIds) {
    SKIP_WITHOUT_SDK();
    Server server("", "", "serve: ready", std::string(TPX_SOURCE_DIR) + "/models/tiny");
    json r = client(server, "ids");
    EXPECT_EQ(r["ids"]["text"], "") << r.dump();
    EXPECT_EQ(r["ids"]["token_ids"].size(), r["ids"]["finish_reason"] == "length" ? 6u : r["ids"]["token_ids"].size()) << r.dump();
    EXPECT_GE(r["ids"]["token_ids"].size(), 1u) << r.dump();
    EXPECT_EQ(r["ids"]["prompt_token_ids"], json::array({1, 2, 3})) << r.dump();
    EXPECT_EQ(r["text"]["status"], 400) << r.dump();
    EXPECT_EQ(r["text"]["param"], "prompt") << r.dump();
}

// GET /v1/models/ID with an ID of 8,000 characters, on the 2 MiB thread stacks that glibc gives
// under `ulimit -s unlimited`: a route matched by std::regex's "(.+)" recursed once a character
// and ended the server (SIGSEGV) there.
TEST(Serve, ModelIdsOfAnyLengthAreAnsweredOnSmallStacks) {
    SKIP_WITHOUT_SDK();
    Server server("", "", "serve: ready", kModel, "prlimit --stack=2097152");
    json r = client(server, "model_ids");
    EXPECT_EQ(r["served"]["status"], 200) << r.dump();
    EXPECT_EQ(r["served"].value("id", ""), "tiny") << r.dump();
    EXPECT_GT(r["served"].value("max_model_len", 0), 0) << r.dump();
    for (const char* other : {"slash", "long"}) {
        EXPECT_EQ(r[other]["status"], 404) << other << ": " << r.dump();
        EXPECT_EQ(r[other].value("code", ""), "model_not_found") << other << ": " << r.dump();
    }
    EXPECT_NE(r["slash"].value("message", "").find("'org/x' does not exist"), std::string::npos) << r.dump();
    EXPECT_EQ(r["health"], 200) << r.dump();
}

// The followers wait for each step in a broadcast that times out (backend.collective_timeout_s,
// 2 s here): an idle rank 0 keeps them alive with heartbeats, so a call after 5 idle seconds is served.
TEST(Serve, AnIdleServerOutlivesTheCollectiveTimeout) {
    SKIP_WITHOUT_SDK();
    Server server("[backend]\ncollective_timeout_s = 2\n", "", "serve: ready", kModel);
    std::this_thread::sleep_for(std::chrono::seconds(5));
    json r = client(server, "health");
    EXPECT_EQ(r["health"], 200) << r.dump() << server.err();
    EXPECT_EQ(r["completion"]["status"], 200) << r.dump() << server.err();
}

// A process's CPU time so far (user + system, /proc/PID/stat), in seconds.
double cpu_seconds(int pid) {
    std::string stat = tpx_test::read_text("/proc/" + std::to_string(pid) + "/stat");
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));  // after "pid (comm) "
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i)
        if (i >= 14) ticks += std::stod(field);  // utime, stime
    return ticks / (double)sysconf(_SC_CLK_TCK);
}

// An idle server's followers wait for rank 0's next step without keeping a core busy (rank 1
// spun at 92% of one; it now polls without pause only for 20 ms after each heartbeat).
TEST(Serve, AnIdleFollowerSparesItsCore) {
    Server server("", "", "serve: ready");
    int rank1 = -1;
    for (int pid : tpx_test::pids_matching("tpx-worker --job " + server.job()))
        if (tpx_test::env_of(pid, "OMPI_COMM_WORLD_RANK") == "1") rank1 = pid;
    ASSERT_GT(rank1, 0) << "rank 1 not found";
    const double before = cpu_seconds(rank1);
    std::this_thread::sleep_for(std::chrono::seconds(3));
    const double used = cpu_seconds(rank1) - before;
    std::printf("rank 1 used %.2f s of CPU in 3 s idle\n", used);
    EXPECT_LT(used, 0.6) << "rank 1 used " << used << " s of CPU in 3 s idle";
}

// A second server on a port the first listens on is refused (exit 2, naming the keys) before
// any rank loads (cpp-httplib's SO_REUSEPORT let it listen beside the first, taking half the calls).
TEST(Serve, APortAlreadyListenedOnIsRefused) {
    Server first("", "", "serve: listening");
    const std::string port = first.base().substr(first.base().rfind(':') + 1);
    const std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/second.toml") << "[model]\npath = \"" << kModel << "\"\n[serve]\nport = " << port << "\n";
    tpx_test::ProcessResult r = tpx_test::run_process("timeout 60 " + tpx_test::tpx_bin("tpx") + " serve " + dir + "/second.toml");
    EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
    EXPECT_NE(r.err.find("cannot listen on 127.0.0.1:" + port), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("[serve] host, port"), std::string::npos) << r.err;
    fs::remove_all(dir);
}

// Rank 0 listens while the ranks load: 503 until the model is ready (held 4 s longer here).
TEST(Serve, LoadingAnswers503UntilReady) {
    SKIP_WITHOUT_SDK();
    Server server("", "--ready-delay-ms 4000", "serve: listening");
    json loading = client(server, "health");
    EXPECT_EQ(loading["health"], 503) << loading.dump();
    EXPECT_EQ(loading["completion"]["status"], 503) << loading.dump();
    for (int i = 0; i < 100 && server.err().find("serve: ready") == std::string::npos; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    json ready = client(server, "health");
    EXPECT_EQ(ready["health"], 200) << ready.dump();
    EXPECT_EQ(ready["completion"]["status"], 200) << ready.dump();
}

TEST(Serve, QueueBeyondMaxQueueAnswers429) {
    SKIP_WITHOUT_SDK();
    // run.max_batch = 4 slots and one waiting: of 12 calls at once, at least 7 are refused.
    Server server("max_queue = 1\n", "--step-delay-ms 100");
    json r = client(server, "queue", "12");
    int ok = 0, full = 0;
    for (const json& s : r["statuses"]) {
        ok += s == 200;
        full += s == 429;
    }
    EXPECT_EQ(ok + full, 12) << r.dump();
    EXPECT_GE(full, 7) << r.dump();
    EXPECT_GE(ok, 1) << r.dump();
    json m = client(server, "metrics");
    EXPECT_EQ(m["queue"], 0) << m.dump();
    // Every answered call had its prompt prefilled in a step (its batch's prompt tokens: "mixed").
    EXPECT_GE(m["mixed_steps"].get<double>(), 1) << m.dump();
    EXPECT_GE(m["decode_steps"].get<double>(), 0) << m.dump();
}

// A stream left after three chunks is cancelled at the next step: the metrics count it and show
// no running sequence, and the next call gets an answer.
TEST(Serve, CancelledStreamFreesItsSlot) {
    SKIP_WITHOUT_SDK();
    Server server("", "--step-delay-ms 50");
    json r = client(server, "cancel");
    EXPECT_EQ(r["chunks"], 3) << r.dump();
    EXPECT_EQ(r["before"]["cancelled"], 0) << r.dump();
    EXPECT_EQ(r["after_cancel"]["cancelled"], 1) << r.dump();
    EXPECT_EQ(r["after_cancel"]["running"], 0) << r.dump();
    EXPECT_EQ(r["next"], 4) << r.dump();
}

// The same for a whole answer: the server notices the closed socket while it computes.
TEST(Serve, CancelledWholeCallFreesItsSlot) {
    SKIP_WITHOUT_SDK();
    Server server("", "--step-delay-ms 50");
    json r = client(server, "cancel_whole");
    EXPECT_EQ(r["running"], 1) << r.dump();
    EXPECT_NE(r["outcome"], "answered") << r.dump();  // the SDK saw its own abort
    EXPECT_EQ(r["before"]["cancelled"], 0) << r.dump();
    EXPECT_EQ(r["after_cancel"]["cancelled"], 1) << r.dump();
    EXPECT_EQ(r["after_cancel"]["running"], 0) << r.dump();
    EXPECT_EQ(r["next"], 4) << r.dump();
}

}  // namespace
