// The golden references (HF transformers' outputs, tests/data/golden) and the logits a run
// dumps, read for the end-to-end tests.
#pragma once

#include <hdf5.h>

#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "loader/checkpoint.h"
#include "process.h"

namespace tpx_test {

using namespace tpx;

inline const std::string kGolden = std::string(TPX_TEST_DATA) + "/golden";

struct Golden {
    std::vector<int32_t> input_ids, greedy_ids;
    std::vector<float> logits;         // [B, T, V] over the prompts
    std::vector<float> greedy_logits;  // [B, T + new, V] teacher-forced over greedy_ids
    int64_t batch = 0, prompt_len = 0, total_len = 0, vocab = 0;
};

inline Golden read_golden(const std::string& model) {
    auto c = Checkpoint::open(kGolden + "/" + model + "/golden.safetensors");
    Golden g;
    const TensorInfo& ids = c->tensor("input_ids");
    g.batch = ids.shape[0], g.prompt_len = ids.shape[1];
    g.input_ids.resize(ids.numel());
    c->read("input_ids", Slice::whole(), DType::kI32, g.input_ids.data());
    const TensorInfo& greedy = c->tensor("greedy_ids");
    g.total_len = greedy.shape[1];
    g.greedy_ids.resize(greedy.numel());
    c->read("greedy_ids", Slice::whole(), DType::kI32, g.greedy_ids.data());
    const TensorInfo& logits = c->tensor("logits");
    g.vocab = logits.shape[2];
    g.logits.resize(logits.numel());
    c->read("logits", Slice::whole(), DType::kF32, g.logits.data());
    g.greedy_logits.resize(c->tensor("greedy_logits").numel());
    c->read("greedy_logits", Slice::whole(), DType::kF32, g.greedy_logits.data());
    return g;
}

inline std::vector<float> read_h5(const std::string& path, const std::string& dataset) {
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    EXPECT_GE(f, 0) << path;
    hid_t ds = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
    hid_t space = H5Dget_space(ds);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    std::vector<float> v(n);
    H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
    H5Sclose(space);
    H5Dclose(ds);
    H5Fclose(f);
    return v;
}


// mixtral-moe's golden checkpoint rewritten in `dir` in transformers 5's own layout (what
// save_pretrained writes with save_original_format=False, and how newer MoE checkpoints ship):
// each layer's experts as model.layers.L.mlp.experts.gate_up_proj [E, 2I, H] (expert e's w1
// rows, then its w3 rows) and mlp.experts.down_proj [E, H, I], the router as mlp.gate.weight;
// every other tensor, config.json and generation_config.json as they are.
inline void write_stacked_mixtral(const std::string& dir) {
    const std::string src = kGolden + "/mixtral-moe";
    auto c = Checkpoint::open(src);
    nlohmann::json config = nlohmann::json::parse(c->config_json());
    const int64_t E = config["num_local_experts"], layers = config["num_hidden_layers"];
    std::vector<std::vector<uint16_t>> keep;  // the bytes behind every TensorData below
    std::vector<TensorData> out;
    auto raw = [&](const std::string& name) {
        const TensorInfo& t = c->tensor(name);
        std::vector<uint16_t> v(t.numel());
        c->read(name, Slice::whole(), DType::kBF16, v.data());
        return v;
    };
    auto block = [](const std::string& name) { return name.find(".block_sparse_moe.") != std::string::npos; };
    for (const TensorInfo& t : c->tensors())
        if (!block(t.name)) {
            keep.push_back(raw(t.name));
            out.push_back({t.name, DType::kBF16, t.shape, nullptr});
        }
    for (int64_t l = 0; l < layers; ++l) {
        const std::string old = "model.layers." + std::to_string(l) + ".block_sparse_moe.", now = "model.layers." + std::to_string(l) + ".mlp.";
        std::vector<uint16_t> gate_up, down;
        std::vector<int64_t> w1_shape, w2_shape;
        for (int64_t e = 0; e < E; ++e) {
            const std::string x = old + "experts." + std::to_string(e);
            for (const char* w : {".w1.weight", ".w3.weight"}) {
                auto v = raw(x + w);
                gate_up.insert(gate_up.end(), v.begin(), v.end());
            }
            auto v = raw(x + ".w2.weight");
            down.insert(down.end(), v.begin(), v.end());
            w1_shape = c->tensor(x + ".w1.weight").shape, w2_shape = c->tensor(x + ".w2.weight").shape;
        }
        keep.push_back(raw(old + "gate.weight"));
        out.push_back({now + "gate.weight", DType::kBF16, c->tensor(old + "gate.weight").shape, nullptr});
        keep.push_back(std::move(gate_up));
        out.push_back({now + "experts.gate_up_proj", DType::kBF16, {E, 2 * w1_shape[0], w1_shape[1]}, nullptr});
        keep.push_back(std::move(down));
        out.push_back({now + "experts.down_proj", DType::kBF16, {E, w2_shape[0], w2_shape[1]}, nullptr});
    }
    for (size_t i = 0; i < out.size(); ++i) out[i].data = keep[i].data();
    write_safetensors(dir + "/model.safetensors", out);
    for (const char* f : {"/config.json", "/generation_config.json"}) std::ofstream(dir + f) << read_text(src + f);
}

// A golden's prompts as a prompts.jsonl in `dir` (ids 0, 1, ...).
inline void write_golden_prompts(const std::string& dir, const Golden& g) {
    std::ofstream prompts(dir + "/prompts.jsonl");
    for (int64_t b = 0; b < g.batch; ++b)
        prompts << nlohmann::json{{"id", b}, {"input_ids", std::vector<int32_t>(g.input_ids.begin() + b * g.prompt_len,
                                                                               g.input_ids.begin() + (b + 1) * g.prompt_len)}}
                       .dump()
                << "\n";
}

// llama-gqa's golden prompts as a prompts.jsonl in `dir`.
inline void write_golden_prompts(const std::string& dir) { write_golden_prompts(dir, read_golden("llama-gqa")); }

// The output_ids of a run over those prompts are HF's greedy continuation.
inline void expect_golden_tokens(const std::string& out_path) {
    Golden g = read_golden("llama-gqa");
    std::ifstream out(out_path);
    std::string line;
    int64_t b = 0;
    while (std::getline(out, line)) {
        std::vector<int32_t> want(g.greedy_ids.begin() + b * g.total_len + g.prompt_len, g.greedy_ids.begin() + (b + 1) * g.total_len);
        EXPECT_EQ(nlohmann::json::parse(line)["output_ids"].get<std::vector<int32_t>>(), want) << "prompt " << b;
        ++b;
    }
    EXPECT_EQ(b, g.batch) << out_path;
}

}  // namespace tpx_test
