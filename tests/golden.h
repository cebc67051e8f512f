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


// llama-gqa's golden prompts as a prompts.jsonl in `dir`.
inline void write_golden_prompts(const std::string& dir) {
    Golden g = read_golden("llama-gqa");
    std::ofstream prompts(dir + "/prompts.jsonl");
    for (int64_t b = 0; b < g.batch; ++b)
        prompts << nlohmann::json{{"id", b}, {"input_ids", std::vector<int32_t>(g.input_ids.begin() + b * g.prompt_len,
                                                                               g.input_ids.begin() + (b + 1) * g.prompt_len)}}
                       .dump()
                << "\n";
}

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
