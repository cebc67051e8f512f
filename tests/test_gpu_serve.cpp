// `tpx serve` on the GPU backend (one GPU): sampled calls drawn on the device give the same
// tokens as the host's twin drawing from the fp32 logits of the same steps ([backend.tuning]
// device_draws = false); so do calls whose rows' logits are copied beside the device's draws (a
// logprobs call keeps the device's id, a penalised one is drawn by the twin from its changed row
// in both servers: what differs is the copy). Calls go one at a time, so that each step's batch
// (and its logits) is the same in both servers. Skips without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime.h>
#include <httplib.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "process.h"
#include "serve_process.h"

using nlohmann::json;

namespace {

const std::string kModel = std::string(TPX_SOURCE_DIR) + "/models/tiny-text";

int gpu_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

struct Server : tpx_test::ServeProcess {
    explicit Server(bool device_draws)
        : ServeProcess("[model]\npath = \"" + kModel + "\"\n[parallel]\ntp = 1\n[backend]\ndevice = \"cuda\"\n[backend.tuning]\ngemm_tune = false\n" +
                           "device_draws = " + (device_draws ? "true" : "false") + "\n[run]\nmax_new_tokens = 16\nmax_batch = 4\n" +
                           "[serve]\nport = 0\nmodel_name = \"tiny\"\n",
                       "", "serve: ready") {}
};

// The sampled calls: the cuts draw.h defines, each at two seeds.
std::vector<json> bodies() {
    const json cuts[] = {{{"temperature", 1.0}},
                         {{"temperature", 0.7}, {"top_p", 0.9}},
                         {{"temperature", 1.5}, {"top_k", 20}},
                         {{"temperature", 0.8}, {"top_k", 40}, {"top_p", 0.5}},
                         {{"temperature", 0.0}},
                         {{"temperature", 1.0}, {"logprobs", 2}},
                         {{"temperature", 0.9}, {"presence_penalty", 0.8}, {"frequency_penalty", 0.3}}};
    std::vector<json> out;
    for (const json& cut : cuts)
        for (int seed : {3, 4}) {
            json b = {{"model", "tiny"}, {"prompt", "Once upon a time"}, {"max_tokens", 12}, {"seed", seed}, {"ignore_eos", true}, {"return_token_ids", true}};
            b.update(cut);
            out.push_back(b);
        }
    return out;
}

std::vector<json> answers(const Server& s) {
    httplib::Client c(s.base());
    c.set_read_timeout(std::chrono::seconds(120));
    std::vector<json> out;
    for (const json& body : bodies()) {
        httplib::Result r = c.Post("/v1/completions", body.dump(), "application/json");
        if (!r || r->status != 200) {
            ADD_FAILURE() << "completion failed: " << (r ? r->body : httplib::to_string(r.error()));
            return out;
        }
        const json choice = json::parse(r->body)["choices"][0];
        out.push_back({{"token_ids", choice["token_ids"]}, {"logprobs", choice["logprobs"]}});
    }
    return out;
}

TEST(GpuServe, DeviceDrawsEqualTheHostsTwin) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    std::vector<json> host;
    {
        Server s(false);
        host = answers(s);
        EXPECT_NE(s.err().find("device_draws=false"), std::string::npos) << s.err();
    }
    Server s(true);
    const std::vector<json> device = answers(s);
    ASSERT_EQ(device.size(), host.size());
    const std::vector<json> sent = bodies();
    for (size_t i = 0; i < device.size(); ++i) EXPECT_EQ(device[i], host[i]) << sent[i].dump();
    // The draws are draws: two seeds differ somewhere, and a sampled answer is not the greedy one.
    EXPECT_NE(device[0]["token_ids"], device[1]["token_ids"]);
    EXPECT_NE(device[0]["token_ids"], device[8]["token_ids"]);
    EXPECT_EQ(device[8]["token_ids"], device[9]["token_ids"]);  // (greedy: the seed does nothing)
    EXPECT_EQ(device[10]["logprobs"]["tokens"].size(), 12u) << device[10].dump();
}

}  // namespace
