// What the `tpx serve` tests share (test_serve.cpp, test_serve_stop.cpp): a server of tiny-text at
// tp 2 on the CPU backend, and the official OpenAI Node SDK (npm `openai`, installed by the
// serve_npm_fixture test) driving it through tests/serve/client.mjs.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "process.h"
#include "serve_process.h"

namespace serve_test {

using nlohmann::json;

const std::string kModel = std::string(TPX_SOURCE_DIR) + "/models/tiny-text";
const std::string kModules = std::string(TPX_SERVE_NPM_DIR) + "/node_modules";
// A '%' and two hex digits in the key: cpp-httplib decodes header values, so the gate must hand
// the server each as sent (every call here carries this key; ErrorsFollowOpenAIsSchema's
// encoded_key, which decodes to it, is refused).
const std::string kKey = "sk-test%41";

inline bool sdk_missing() { return !std::filesystem::exists(kModules + "/openai/package.json"); }
#define SKIP_WITHOUT_SDK()                                                                                                      \
    if (serve_test::sdk_missing()) GTEST_SKIP() << "the npm package openai is not installed in " << serve_test::kModules                  \
                                    << " (node or npm missing, or no registry: see the serve_npm_fixture test's output)"

// The job of the servers here: `model` at tp 2, the lines `run_extra` under [run] and
// `serve_extra` under [serve].
inline std::string server_job(const std::string& model, const std::string& run_extra, const std::string& serve_extra) {
    return "[model]\npath = \"" + model + "\"\n[parallel]\ntp = 2\n[run]\nmax_new_tokens = 16\nmax_batch = 4\n" + run_extra +
           "[serve]\nport = 0\nmodel_name = \"tiny\"\napi_key = \"" + kKey + "\"\n" + serve_extra;
}

// A `tpx serve` of tiny-text at tp 2 on a port of its own choosing, ended with its process group.
struct Server : tpx_test::ServeProcess {
    // `env`: VAR=value words the server starts with.
    Server(const std::string& serve_extra, const std::string& flags = "", const char* wait_for = "serve: ready",
           const std::string& model = kModel, const std::string& env = "")
        : ServeProcess(server_job(model, "", serve_extra), flags, wait_for, env) {}
};

inline std::string client_command(const tpx_test::ServeProcess& s, const std::string& mode, const std::string& arg = "") {
    return "node " + std::string(TPX_SOURCE_DIR) + "/tests/serve/client.mjs " + kModules + " " + s.base() + " " + kKey + " " + mode + " '" +
           arg + "'";
}

// Runs a node client's `command` and parses the one JSON value it prints (a failure naming `mode`
// where it exits non-zero or prints no JSON).
inline json run_client(const std::string& command, const std::string& mode) {
    tpx_test::ProcessResult r = tpx_test::run_process(command);
    EXPECT_EQ(r.exit_code, 0) << mode << ":\n" << r.out << r.err;
    try {
        return json::parse(r.out);
    } catch (const json::exception&) {
        ADD_FAILURE() << mode << ": not JSON:\n" << r.out << r.err;
        return json::object();
    }
}

inline json client(const tpx_test::ServeProcess& s, const std::string& mode, const std::string& arg = "") {
    return run_client(client_command(s, mode, arg), mode);
}

// Polls the server's metrics until `ok` holds (at most 20 s).
inline json wait_for_metrics(const Server& s, const std::function<bool(const json&)>& ok) {
    json m;
    for (int i = 0; i < 100; ++i) {
        m = client(s, "metrics");
        if (ok(m)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return m;
}

}  // namespace serve_test
