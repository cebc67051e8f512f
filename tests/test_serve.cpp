// `tpx serve` end to end, with the official OpenAI Node SDK (npm `openai`, installed by the
// serve_npm_fixture test) as the client (tests/serve/client.mjs), on models/tiny-text at tp 2 on
// the CPU backend. References: `tpx run`'s outputs for the same prompts (greedy: bit-identical
// on the CPU backend, so ids and text must be equal, not close); each call's own answer alone
// (32 concurrent calls of mixed lengths must each get it again, greedy and seeded sampling
// alike); OpenAI's error schema. Also: a stream abandoned mid-way frees its KV slot, a killed
// rank ends the server within 10 s with a 500 naming it, SIGTERM finishes what is in flight and
// leaves no process. Without node or the npm package every test skips, saying why.
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
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "process.h"
#include "server/metrics.h"
#include "serve_process.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kModel = std::string(TPX_SOURCE_DIR) + "/models/tiny-text";
const std::string kModules = std::string(TPX_SERVE_NPM_DIR) + "/node_modules";
// A '%' and two hex digits in the key: cpp-httplib decodes header values, so the gate must hand
// the server each as sent (every call here carries this key; ErrorsFollowOpenAIsSchema's
// encoded_key, which decodes to it, is refused).
const std::string kKey = "sk-test%41";

bool sdk_missing() { return !fs::exists(kModules + "/openai/package.json"); }
#define SKIP_WITHOUT_SDK()                                                                                                      \
    if (sdk_missing()) GTEST_SKIP() << "the npm package openai is not installed in " << kModules                              \
                                    << " (node or npm missing, or no registry: see the serve_npm_fixture test's output)"

// A `tpx serve` of tiny-text at tp 2 on a port of its own choosing, ended with its process group.
struct Server : tpx_test::ServeProcess {
    // `env`: VAR=value words the server starts with.
    Server(const std::string& serve_extra, const std::string& flags = "", const char* wait_for = "serve: ready",
           const std::string& model = kModel, const std::string& env = "")
        : ServeProcess("[model]\npath = \"" + model + "\"\n[parallel]\ntp = 2\n[run]\nmax_new_tokens = 16\nmax_batch = 4\n" +
                           "[serve]\nport = 0\nmodel_name = \"tiny\"\napi_key = \"" + kKey + "\"\n" + serve_extra,
                       flags, wait_for, env) {}
};

std::string client_command(const Server& s, const std::string& mode, const std::string& arg = "") {
    return "node " + std::string(TPX_SOURCE_DIR) + "/tests/serve/client.mjs " + kModules + " " + s.base() + " " + kKey + " " + mode + " '" +
           arg + "'";
}

json client(const Server& s, const std::string& mode, const std::string& arg = "") {
    tpx_test::ProcessResult r = tpx_test::run_process(client_command(s, mode, arg));
    EXPECT_EQ(r.exit_code, 0) << mode << ":\n" << r.out << r.err;
    try {
        return json::parse(r.out);
    } catch (const json::exception&) {
        ADD_FAILURE() << mode << ": not JSON:\n" << r.out << r.err;
        return json::object();
    }
}

// Polls the server's metrics until `ok` holds (at most 20 s).
json wait_for_metrics(const Server& s, const std::function<bool(const json&)>& ok) {
    json m;
    for (int i = 0; i < 100; ++i) {
        m = client(s, "metrics");
        if (ok(m)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return m;
}

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
                                           {"presence_penalty", 400, "presence_penalty"},
                                           {"suffix", 400, "suffix"},
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
    EXPECT_EQ(r["put_allow"], "GET, HEAD, POST") << r.dump();
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

// SIGTERM mid-request: the request finishes, tpx serve exits 0, no process of the job is left.
// env: how the server starts (Open MPI settings); to_group: the signal to tpx serve's whole
// process group (its own: tests/process.h), as a terminal's Ctrl-C sends it.
void sigterm_drains(const std::string& env, int sig = SIGTERM, bool to_group = false) {
    Server server("grace_s = 20\n", "--step-delay-ms 100", "serve: ready", kModel, env);
    tpx_test::Background call = tpx_test::start_background(client_command(server, "long", "20"));
    json m = wait_for_metrics(server, [](const json& j) { return j["running"] == 1; });
    ASSERT_EQ(m["running"], 1) << m.dump();
    kill(to_group ? -server.pid() : server.pid(), sig);
    int code = server.wait(40);
    EXPECT_EQ(code, 0) << server.err();
    EXPECT_NE(server.err().find("stopped by"), std::string::npos) << server.err();
    ASSERT_EQ(tpx_test::wait_background(call, 20), 0);
    json r = json::parse(tpx_test::read_text(call.out_path));
    EXPECT_EQ(r["status"], 200) << r.dump();
    EXPECT_EQ(r["tokens"], 20) << r.dump();
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

TEST(Serve, SigtermFinishesInFlightRequestsAndLeavesNoProcess) {
    SKIP_WITHOUT_SDK();
    sigterm_drains("");
}

// Ctrl-C reaches the whole foreground group: it drains as SIGTERM to tpx serve does, exit 0
// (mpirun has a group of its own, so only tpx gets the signal).
TEST(Serve, CtrlCToTheWholeGroupDrainsAndExitsZero) {
    SKIP_WITHOUT_SDK();
    sigterm_drains("", SIGINT, /*to_group=*/true);
}

// SIGUSR1, the signal tpx serve drains its ranks with, sent to tpx serve itself: a drain too (it
// ended tpx by the default action, and mpirun ended the ranks mid-request).
TEST(Serve, SigusrOneToTpxServeDrainsAsSigtermDoes) {
    SKIP_WITHOUT_SDK();
    sigterm_drains("", SIGUSR1);
}

// The drain does not rest on mpirun passing SIGUSR1 on (on the GPU machine it did not): with
// Open MPI told to forward no signal, the same.
TEST(Serve, SigtermDrainsWithoutMpirunForwardingSignals) {
    SKIP_WITHOUT_SDK();
    sigterm_drains("OMPI_MCA_ess_base_forward_signals=none");
}

// Two stop signals at once (a double Ctrl-C; a supervisor's SIGTERM and an operator's): the drain
// still goes to the local ranks (one signal right behind the first skipped it, and rank 0 took
// new calls until mpirun ended it), and the second ends the job at once. Whichever comes first,
// tpx serve says it stopped (it said "failed", exit 1): drained (exit 0), or at the second signal
// (128 + the signal); no process is left.
TEST(Serve, TwoSignalsAtOnceStopTheServerAtOnce) {
    Server server("", "", "serve: ready");
    const auto t0 = std::chrono::steady_clock::now();
    kill(server.pid(), SIGTERM);
    kill(server.pid(), SIGTERM);
    const int code = server.wait(20);
    const bool drained = code == 0 && server.err().find("stopped by Terminated") != std::string::npos;
    const bool ended = code == 128 + SIGTERM && server.err().find("stopped at a second signal (Terminated)") != std::string::npos;
    EXPECT_TRUE(drained || ended) << "exit " << code << "\n" << server.err();
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 15);
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

// A stop asked while the ranks read their weights (each read held 10 s here: the load would take
// 20 s or more) ends every rank's reads at rank 0's word: exit 0 within seconds, nothing left.
// `only_rank0`: the signal to rank 0 alone, as where rank 1 runs on a host no signal reaches.
void stop_while_loading(bool only_rank0) {
    Server server("", "--read-delay-ms 10000", "serve: listening");
    int rank0 = -1;
    for (int pid : tpx_test::pids_matching("tpx-worker --job " + server.job()))
        if (tpx_test::env_of(pid, "OMPI_COMM_WORLD_RANK") == "0") rank0 = pid;
    ASSERT_GT(rank0, 0) << "rank 0 not found";
    const auto t0 = std::chrono::steady_clock::now();
    kill(only_rank0 ? rank0 : server.pid(), only_rank0 ? SIGUSR1 : SIGTERM);
    const int code = server.wait(40);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(code, 0) << server.err();
    EXPECT_LT(seconds, 8) << server.err();
    EXPECT_NE(server.err().find("serve: stopped while loading"), std::string::npos) << server.err();
    EXPECT_EQ(server.err().find("serve: ready"), std::string::npos) << server.err();
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

TEST(Serve, SigtermWhileLoadingEndsEveryRanksReads) { stop_while_loading(false); }

// Connections that hold a server thread without a call: one idle, two sending their headers a
// byte at a time, one its body (cpp-httplib waits 5 s for each byte, so those never time out). A
// drain shuts them instead of waiting on them: exit 0 within seconds, not `tpx serve` ending the
// job (exit 1) once grace_s + 5 s have passed.
TEST(Serve, SigtermEndsConnectionsThatSendNoCall) {
    Server server("grace_s = 20\n");
    const int port = std::stoi(server.base().substr(server.base().rfind(':') + 1));
    std::vector<int> socks;
    for (int i = 0; i < 4; ++i) {
        const int fd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_port = htons((uint16_t)port);
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to), 0) << std::strerror(errno);
        socks.push_back(fd);
    }
    const std::string post = std::string("POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ") + kKey +
                             "\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    ASSERT_EQ(send(socks[3], post.data(), post.size(), MSG_NOSIGNAL), (ssize_t)post.size());
    std::atomic<bool> stop{false};
    std::thread dribble([&] {
        const std::string head = "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + std::string(200, 'a');
        for (size_t i = 0; i < head.size() && !stop; ++i) {
            for (size_t k = 1; k < 3; ++k) (void)send(socks[k], &head[i], 1, MSG_NOSIGNAL);
            (void)send(socks[3], " ", 1, MSG_NOSIGNAL);
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
    });
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const auto t0 = std::chrono::steady_clock::now();
    kill(server.pid(), SIGTERM);
    const int code = server.wait(40);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    stop = true;
    dribble.join();
    for (int fd : socks) close(fd);
    EXPECT_EQ(code, 0) << server.err();
    // Under the 5 s after which a drain shuts even connections inside a handler: a connection
    // sending its body, taken for one inside a call, would be shut only then.
    EXPECT_LT(seconds, 4.5) << server.err();
    EXPECT_NE(server.err().find("serve: stopped"), std::string::npos) << server.err();
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

// SIGTERM as mpirun starts the ranks, before they have their handlers (or exist): the drain signal
// reaches each rank once it catches it (sent at once, it ended them: exit 138), and the job
// stops cleanly.
TEST(Serve, SigtermAsTheRanksStartStopsCleanly) {
    const std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kModel << "\"\n[parallel]\ntp = 2\n[serve]\nport = 0\n";
    for (int delay_ms : {0, 100}) {
        tpx_test::Background s = tpx_test::start_background(tpx_test::tpx_bin("tpx") + " serve " + dir + "/job.toml --read-delay-ms 10000");
        for (int i = 0; i < 2000 && tpx_test::read_text(s.err_path).find("tpx serve: mpirun ") == std::string::npos; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
        kill(s.pid, SIGTERM);
        const int code = tpx_test::wait_background(s, 40);
        const std::string err = tpx_test::read_text(s.err_path);
        EXPECT_EQ(code, 0) << delay_ms << " ms:\n" << err;
        EXPECT_EQ(err.find("exited on signal"), std::string::npos) << delay_ms << " ms:\n" << err;
        EXPECT_TRUE(tpx_test::pids_matching(dir + "/job.toml").empty()) << "a process of the job outlived tpx serve";
    }
    fs::remove_all(dir);
}

TEST(Serve, RankZerosWordStopsARankNoSignalReached) { stop_while_loading(true); }

TEST(Serve, KilledRankEndsTheServerWithin10s) {
    SKIP_WITHOUT_SDK();
    Server server("", "--step-delay-ms 100");
    tpx_test::Background call = tpx_test::start_background(client_command(server, "long", "200"));
    tpx_test::Background streamed = tpx_test::start_background(client_command(server, "long_stream", "200"));
    json m = wait_for_metrics(server, [](const json& j) { return j["running"] == 2; });
    ASSERT_EQ(m["running"], 2) << m.dump();
    int victim = -1;
    for (int pid : tpx_test::pids_matching("tpx-worker --job " + server.job()))
        if (tpx_test::env_of(pid, "OMPI_COMM_WORLD_RANK") == "1") victim = pid;
    ASSERT_GT(victim, 0) << "rank 1 not found";
    auto t0 = std::chrono::steady_clock::now();
    kill(victim, SIGKILL);
    int code = server.wait(30);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(code, 0) << server.err();
    EXPECT_NE(code, -1) << "tpx serve did not end";
    EXPECT_LT(seconds, 10) << server.err();
    ASSERT_EQ(tpx_test::wait_background(call, 20), 0);
    json r = json::parse(tpx_test::read_text(call.out_path));
    EXPECT_EQ(r["status"], 500) << r.dump();
    EXPECT_NE(r["message"].get<std::string>().find("rank 1"), std::string::npos) << r.dump();
    // The stream: its 200 went out first; it ends with the error, then [DONE] (as vLLM's does).
    ASSERT_EQ(tpx_test::wait_background(streamed, 20), 0);
    json s = json::parse(tpx_test::read_text(streamed.out_path));
    EXPECT_EQ(s["status"], 200) << s.dump();
    ASSERT_EQ(s["last"].size(), 2u) << s.dump();
    EXPECT_NE(s["last"][0].get<std::string>().find("\"rank_failed\""), std::string::npos) << s.dump();
    EXPECT_EQ(s["last"][1], "data: [DONE]") << s.dump();
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

}  // namespace
