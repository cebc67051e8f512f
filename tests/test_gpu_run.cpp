// The CUDA backend end to end under mpirun, against HF transformers' outputs: every golden
// model at tp = 1 and 2 (and 4 where four GPUs are visible), mixtral-moe also at tp=2 ep=2.
// bf16 weights and activations: the prompt logits must agree to 2e-2 (max abs error over max
// abs reference; the golden README expects about 1e-2 for a bf16 path), and teacher-forced over
// greedy_ids, the argmax must equal HF's wherever HF's top-two gap exceeds 0.05. A 200-token
// prompt (tuned prefill GEMMs, the residual add in their epilogue) against the CPU backend. Also: a rank
// given a device that does not exist, and a rank failing inside an NCCL all-reduce, end the job
// within 10 s naming the rank. Everything skips, with a message, without enough GPUs.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "golden.h"
#include "process.h"

namespace fs = std::filesystem;
using namespace tpx_test;

namespace {

int gpu_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

int gpu_major() {
    int major = 0;
    return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess ? major : 0;
}

struct Case {
    const char* model;
    int tp, ep;
    // backend.tuning.moe for the run: "" (auto: the golden prompts' forward, 40 tokens, dense), "sparse"
    // (every MoE layer through moe.cu's decode kernels), "grouped" (by expert, moe_grouped)
    const char* moe = "";
};

std::string name_of(const testing::TestParamInfo<Case>& info) {
    std::string m = info.param.model;
    std::replace(m.begin(), m.end(), '-', '_');
    return m + "_tp" + std::to_string(info.param.tp) + "_ep" + std::to_string(info.param.ep) +
           (*info.param.moe ? std::string("_moe_") + info.param.moe : "");
}

// A job over greedy_ids (prompt + HF's continuation) with no new tokens: teacher forcing.
std::string write_job(const std::string& dir, const Golden& g, const std::string& model, int tp, int ep, const std::string& extra = "") {
    std::ofstream prompts(dir + "/prompts.jsonl");
    for (int64_t b = 0; b < g.batch; ++b) {
        nlohmann::json j = {{"id", b},
                            {"input_ids", std::vector<int32_t>(g.greedy_ids.begin() + b * g.total_len, g.greedy_ids.begin() + (b + 1) * g.total_len)}};
        prompts << j.dump() << "\n";
    }
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/" << model << "\"\n[parallel]\ntp = " << tp << "\nep = " << ep
                                     << "\n[backend]\ndevice = \"cuda\"\n[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 0\nmax_seq_len = 64\n"
                                     << extra;
    return dir + "/job.toml";
}

// The golden prompts (without HF's continuations) as a prompts file, `copies` times over (ids in order).
void write_prompts(const std::string& path, const Golden& g, int copies = 1) {
    std::ofstream prompts(path);
    for (int copy = 0; copy < copies; ++copy)
        for (int64_t b = 0; b < g.batch; ++b)
            prompts << nlohmann::json{{"id", copy * g.batch + b},
                                      {"input_ids", std::vector<int32_t>(g.input_ids.begin() + b * g.prompt_len, g.input_ids.begin() + (b + 1) * g.prompt_len)}}
                           .dump()
                    << "\n";
}

class GpuGolden : public testing::TestWithParam<Case> {};

}  // namespace

TEST_P(GpuGolden, Bf16LogitsAndTeacherForcedTokens) {
    const Case& c = GetParam();
    if (gpu_count() < c.tp) GTEST_SKIP() << "needs " << c.tp << " GPUs, " << gpu_count() << " visible";
    Golden g = read_golden(c.model);
    std::string dir = temp_dir();
    std::string job = write_job(dir, g, c.model, c.tp, c.ep, *c.moe ? std::string("[backend.tuning]\nmoe = \"") + c.moe + "\"\n" : "");
    auto r = run_process("timeout 120 " + tpx_bin("tpx") + " run " + job + " --dump-logits " + dir + "/logits.h5");
    ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
    double max_err = 0, max_ref = 0;
    int compared = 0, skipped = 0;
    for (int64_t b = 0; b < g.batch; ++b) {
        std::vector<float> got = read_h5(dir + "/logits.h5", "prompt_" + std::to_string(b) + "/prompt_logits");
        ASSERT_EQ((int64_t)got.size(), g.total_len * g.vocab);
        for (int64_t t = 0; t < g.total_len; ++t) {
            const float* ref = &g.greedy_logits[(b * g.total_len + t) * g.vocab];
            const float* mine = &got[t * g.vocab];
            for (int64_t v = 0; v < g.vocab; ++v) {
                max_err = std::max(max_err, (double)std::fabs(mine[v] - ref[v]));
                max_ref = std::max(max_ref, (double)std::fabs(ref[v]));
            }
            // HF's top two at this position; only a clear winner must match.
            std::vector<float> sorted(ref, ref + g.vocab);
            std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
            int64_t want = std::max_element(ref, ref + g.vocab) - ref;
            int64_t have = std::max_element(mine, mine + g.vocab) - mine;
            if (sorted[0] - sorted[1] > 0.05f) {
                EXPECT_EQ(have, want) << "prompt " << b << " position " << t;
                ++compared;
            } else {
                ++skipped;
            }
        }
    }
    EXPECT_LE(max_err / max_ref, 2e-2) << "max abs error " << max_err << " over max abs logit " << max_ref;
    EXPECT_GT(compared, skipped) << "most positions have a clear winner";
    std::cout << "[ info ] " << c.model << " tp=" << c.tp << " ep=" << c.ep << (*c.moe ? std::string(" moe=") + c.moe : "") << ": relative logit error " << max_err / max_ref
              << ", argmax checked at " << compared << " positions (" << skipped << " too close to call)\n";
    fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Golden, GpuGolden,
                         testing::Values(Case{"llama-gqa", 1, 1}, Case{"llama-gqa", 2, 1}, Case{"llama-gqa", 4, 1},
                                         Case{"llama-sharded", 1, 1}, Case{"llama-sharded", 2, 1}, Case{"llama-sharded", 4, 1},
                                         Case{"qwen2-bias", 1, 1}, Case{"qwen2-bias", 2, 1}, Case{"qwen2-bias", 4, 1},
                                         Case{"mixtral-moe", 1, 1}, Case{"mixtral-moe", 2, 1}, Case{"mixtral-moe", 4, 1},
                                         Case{"mixtral-moe", 2, 2}, Case{"mixtral-moe", 1, 1, "sparse"},
                                         Case{"mixtral-moe", 2, 2, "sparse"}, Case{"mixtral-moe", 1, 1, "grouped"},
                                         Case{"mixtral-moe", 2, 2, "grouped"}),
                         name_of);

// Greedy decode through CUDA graphs; for mixtral-moe the decode steps' MoE layers run sparse
// (2 tokens a step, under kMoeSparseMaxTokens) inside the graph.
TEST(GpuRun, GreedyDecodeWithCudaGraphsMatchesHf) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    for (const char* model : {"llama-gqa", "mixtral-moe"}) {
        SCOPED_TRACE(model);
        Golden g = read_golden(model);
        std::string dir = temp_dir();
        write_prompts(dir + "/prompts.jsonl", g);
        std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/" << model << "\"\n[backend]\ndevice = \"cuda\"\n"
                                         << "[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 8\noutput = \"out.jsonl\"\n";
        auto r = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/job.toml");
        ASSERT_EQ(r.exit_code, 0) << r.err;
        // 2 prompts x 8 tokens: 7 decode steps after the prefill; the first runs eagerly (it sizes the
        // activations' block), the other 6 replay one graph, whose kernels are linked by
        // programmatic edges on sm_90.
        EXPECT_NE(r.err.find("decode: 6 CUDA graph replays of 1 captured graphs"), std::string::npos) << r.err;
        if (gpu_major() >= 9) {
            EXPECT_EQ(r.err.find("(0 programmatic edges"), std::string::npos) << "no kernel of the decode graph may start early:\n" << r.err;
        }
        std::ifstream out(dir + "/out.jsonl");
        std::string line;
        int64_t b = 0, same = 0;
        while (std::getline(out, line)) {
            auto ids = nlohmann::json::parse(line)["output_ids"].get<std::vector<int32_t>>();
            std::vector<int32_t> want(g.greedy_ids.begin() + b * g.total_len + g.prompt_len, g.greedy_ids.begin() + (b + 1) * g.total_len);
            EXPECT_EQ(ids.size(), want.size()) << "prompt " << b;
            same += ids == want;
            ++b;
        }
        // llama-gqa's smallest top-two gap is 0.0029, below bf16's error: report rather than require.
        std::cout << "[ info ] " << model << ": greedy continuations equal to HF's: " << same << " of " << b << "\n";
        EXPECT_EQ(b, g.batch);
        fs::remove_all(dir);
    }
}

// tpx run's sampled tokens: drawn on the device inside the step (only ids come back) and by rank
// 0's host from the fp32 logits (device_draws = false), the same ids either way (the device's
// draw and its CPU twin are one rule, kernels/cpu/draw.h), with the decode steps replaying CUDA
// graphs. (Not against --dump-logits, whose prefill's product over every prompt row may round a
// row's logits otherwise.) 2 prompts x 3 copies at once: each copy's own key,
// so copies of a prompt draw apart (it is unlikely that all three agree over 12 tokens each).
TEST(GpuRun, SampledTokensAreTheSameDrawnOnTheDeviceOrTheHost) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    Golden g = read_golden("llama-gqa");
    std::string dir = temp_dir();
    write_prompts(dir + "/prompts.jsonl", g, 3);
    auto outputs = [&](const std::string& tuning) {
        std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/llama-gqa\"\n[backend]\ndevice = \"cuda\"\n"
                                         << tuning << "[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 12\noutput = \"out.jsonl\"\n"
                                         << "[run.sampling]\ntemperature = 0.9\ntop_p = 0.95\nseed = 7\n";
        auto r = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/job.toml");
        EXPECT_EQ(r.exit_code, 0) << r.err;
        std::map<int64_t, std::vector<int32_t>> ids;
        std::ifstream out(dir + "/out.jsonl");
        for (std::string line; std::getline(out, line);) {
            auto j = nlohmann::json::parse(line);
            ids[j["id"].get<int64_t>()] = j["output_ids"].get<std::vector<int32_t>>();
        }
        return ids;
    };
    const auto device = outputs("");
    ASSERT_EQ((int64_t)device.size(), 3 * g.batch);
    EXPECT_EQ(outputs("[backend.tuning]\ndevice_draws = false\n"), device);
    for (int64_t b = 0; b < g.batch; ++b) {  // (an eos id may end a copy before 12 tokens)
        EXPECT_FALSE(device.at(b).empty());
        EXPECT_FALSE(device.at(b) == device.at(g.batch + b) && device.at(b) == device.at(2 * g.batch + b)) << "prompt " << b << "'s copies";
    }
    fs::remove_all(dir);
}

// Decode batches of 12 (the golden prompts, 6 copies each): with batch_gemm = true the
// decode steps' linears take the batch GEMM (batch_gemm.cu; linear()'s route for 9 to 64 rows,
// GemvOfUpToSixtyFourTokensOnTensorCores) with SwiGLU, RoPE + the cache write and the residual in
// its epilogues, inside a CUDA graph. Each copy of a prompt must continue exactly as the others (a
// token's sums do not depend on its neighbours in the batch); how many continue as the same job
// with batch_gemm = false (cuBLAS and the unfused kernels) is reported.
TEST(GpuRun, DecodeBatchesOfTwelveOnTheBatchGemm) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    Golden g = read_golden("llama-gqa");
    std::string dir = temp_dir();
    const int copies = 6;
    write_prompts(dir + "/prompts.jsonl", g, copies);
    std::map<std::string, std::vector<std::vector<int32_t>>> outputs;
    for (const char* on : {"true", "false"}) {
        const std::string name = std::string("bg_") + on;
        std::ofstream(dir + "/" + name + ".toml") << "[model]\npath = \"" << kGolden << "/llama-gqa\"\n[backend]\ndevice = \"cuda\"\n"
                                                  << "[backend.tuning]\nbatch_gemm = " << on << "\n[run]\nprompts = \"prompts.jsonl\"\n"
                                                  << "max_new_tokens = 8\nmax_batch = 16\noutput = \"" << name << ".jsonl\"\n";
        auto r = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/" + name + ".toml");
        ASSERT_EQ(r.exit_code, 0) << r.err;
        EXPECT_NE(r.err.find("decode: 6 CUDA graph replays of 1 captured graphs"), std::string::npos) << r.err;
        std::ifstream out(dir + "/" + name + ".jsonl");
        std::string line;
        while (std::getline(out, line)) outputs[on].push_back(nlohmann::json::parse(line)["output_ids"].get<std::vector<int32_t>>());
        ASSERT_EQ((int64_t)outputs[on].size(), copies * g.batch);
    }
    for (int64_t i = g.batch; i < copies * g.batch; ++i) EXPECT_EQ(outputs["true"][i], outputs["true"][i % g.batch]) << "copy of prompt " << i % g.batch;
    int same_as_cublas = 0;
    for (int64_t b = 0; b < g.batch; ++b) same_as_cublas += outputs["true"][b] == outputs["false"][b];
    // llama-gqa's smallest top-two gap (0.0029) is below bf16's error: report rather than require.
    std::cout << "[ info ] batch GEMM continuations equal to cuBLAS's: " << same_as_cublas << " of " << g.batch << "\n";
    fs::remove_all(dir);
}

// mixtral-moe rewritten with transformers 5's stacked expert tensors (tests/golden.h) gives
// the same logits, bit for bit, as the original checkpoint: the same bf16 weights reach the
// same places of the device's buffers (the loader's entry slices).
TEST(GpuRun, StackedExpertTensorsGiveTheSameLogits) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    Golden g = read_golden("mixtral-moe");
    std::string dir = temp_dir(), stacked = dir + "/stacked";
    fs::create_directories(stacked);
    write_stacked_mixtral(stacked);
    std::vector<std::vector<float>> logits;
    for (const std::string& path : {kGolden + "/mixtral-moe", stacked}) {
        std::string job = write_job(dir, g, "mixtral-moe", 1, 1);
        std::string text = read_text(job);
        text.replace(text.find(kGolden + "/mixtral-moe"), (kGolden + "/mixtral-moe").size(), path);
        std::ofstream(job) << text;
        auto r = run_process("timeout 120 " + tpx_bin("tpx") + " run " + job + " --dump-logits " + dir + "/logits.h5");
        ASSERT_EQ(r.exit_code, 0) << r.err;
        logits.push_back(read_h5(dir + "/logits.h5", "prompt_0/prompt_logits"));
    }
    ASSERT_FALSE(logits[0].empty());
    EXPECT_EQ(logits[0], logits[1]);
    fs::remove_all(dir);
}

// A prompt of 200 tokens (golden prompts are 12 to 20): the prefill's GEMMs go through the tuner
// and o_proj / down_proj add the residual in their epilogue. Every position's logits against the
// CPU backend (fp32, an implementation that does not share this code) within the bf16
// tolerance, with and without the residual epilogue; the two GPU runs must differ (else the
// epilogue did not run).
TEST(GpuRun, LongPromptTunedGemmsAndResidualEpilogueMatchTheCpuBackend) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    std::string dir = temp_dir();
    std::vector<int32_t> ids;
    uint32_t x = 7;
    for (int i = 0; i < 200; ++i) x = x * 1664525u + 1013904223u, ids.push_back((int32_t)((x >> 8) % 512));
    std::ofstream(dir + "/prompts.jsonl") << nlohmann::json{{"id", 0}, {"input_ids", ids}}.dump() << "\n";
    for (const char* device : {"cuda", "cpu"})
        std::ofstream(dir + "/" + device + ".toml") << "[model]\npath = \"" << kGolden << "/llama-gqa\"\n[backend]\ndevice = \"" << device
                                                    << "\"\n[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 0\nmax_seq_len = 256\n";
    std::ofstream(dir + "/plain.toml") << "[model]\npath = \"" << kGolden << "/llama-gqa\"\n[backend]\ndevice = \"cuda\"\n"
                                       << "[backend.tuning]\nresidual_epilogue = false\n"
                                       << "[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 0\nmax_seq_len = 256\n";
    auto cpu = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/cpu.toml --dump-logits " + dir + "/cpu.h5");
    ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
    auto fused = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/cuda.toml --dump-logits " + dir + "/fused.h5");
    ASSERT_EQ(fused.exit_code, 0) << fused.err;
    auto plain = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/plain.toml --dump-logits " + dir + "/plain.h5");
    ASSERT_EQ(plain.exit_code, 0) << plain.err;
    const std::string name = "prompt_0/prompt_logits";
    std::vector<float> ref = read_h5(dir + "/cpu.h5", name), a = read_h5(dir + "/fused.h5", name), b = read_h5(dir + "/plain.h5", name);
    ASSERT_EQ(ref.size(), (size_t)200 * 512);
    ASSERT_EQ(a.size(), ref.size());
    ASSERT_EQ(b.size(), ref.size());
    float scale = 0, err_a = 0, err_b = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        scale = std::max(scale, std::fabs(ref[i]));
        err_a = std::max(err_a, std::fabs(a[i] - ref[i]));
        err_b = std::max(err_b, std::fabs(b[i] - ref[i]));
    }
    EXPECT_LE(err_a / scale, 2e-2) << "with the residual epilogue";
    EXPECT_LE(err_b / scale, 2e-2) << "without it";
    EXPECT_NE(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "the residual epilogue changed no bit: did it run?";
    std::cout << "[ info ] max error over max |logit|: " << err_a / scale << " with the residual epilogue, " << err_b / scale << " without\n";
    fs::remove_all(dir);
}

TEST(GpuFailures, ADeviceThatDoesNotExistEndsTheJobNamingTheRank) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    Golden g = read_golden("llama-gqa");
    std::string dir = temp_dir();
    std::string job = write_job(dir, g, "llama-gqa", 2, 1);
    // Two ranks on a host that shows them one GPU: local rank 1 has none.
    auto r = run_process("CUDA_VISIBLE_DEVICES=0 timeout 120 " + tpx_bin("tpx") + " run " + job);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(r.seconds, 10.0);
    EXPECT_NE(r.err.find("rank 1 ("), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("local rank 1 needs CUDA device 1 but 1 device(s) are visible"), std::string::npos) << r.err;
    fs::remove_all(dir);
}

TEST(GpuFailures, ARankFailingInsideAnNcclAllReduceEndsTheJob) {
    if (gpu_count() < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpu_count() << " visible";
    Golden g = read_golden("llama-gqa");
    std::string dir = temp_dir();
    std::string job = write_job(dir, g, "llama-gqa", 2, 1);
    auto r = run_process("TPX_FAULT=1:allreduce timeout 120 " + tpx_bin("tpx") + " run " + job);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(r.seconds, 10.0);
    EXPECT_NE(r.err.find("rank 1 ("), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("injected failure inside an NCCL all-reduce"), std::string::npos) << r.err;
    fs::remove_all(dir);
}

// A NaN written into one weight of models/tiny (bf16 NaN bytes in the file) makes every logit
// NaN; on the GPU, greedy's argmax_rows reports the row (-1) and sampling checks the host
// logits, and either way rank 0 ends the run naming the prompt and the step (the CPU backend's
// twin of this is tests/test_checkpoint_checks.cpp).
TEST(GpuFailures, NaNWeightsEndTheRunNamingThePromptAndTheStep) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    const int tp = std::min(2, gpu_count());
    std::string dir = temp_dir(), model = dir + "/model";
    fs::copy(std::string(TPX_SOURCE_DIR) + "/models/tiny", model, fs::copy_options::recursive);
    {
        const uint64_t offset = [&] {
            auto c = tpx::Checkpoint::open(model);
            return c->tensor("model.layers.0.mlp.down_proj.weight").offset + 2 * 1234;
        }();
        std::fstream f(model + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
        f.seekp((std::streamoff)offset);
        f.write("\xc0\x7f", 2);  // bf16 NaN, little-endian
        ASSERT_TRUE(f.good());
    }
    std::ofstream(dir + "/prompts.jsonl") << "{\"id\": \"a\", \"input_ids\": [1, 2, 3, 4]}\n";
    for (const char* sampling : {"", "[run.sampling]\ntemperature = 0.8\n"}) {
        std::ofstream(dir + "/job.toml") << "[model]\npath = \"model\"\n[parallel]\ntp = " << tp
                                         << "\n[backend]\ndevice = \"cuda\"\n[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 4\n"
                                         << sampling;
        auto r = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/job.toml");
        EXPECT_EQ(r.exit_code, 2) << sampling << r.err;
        EXPECT_NE(r.err.find("rank 0 ("), std::string::npos) << r.err;
        EXPECT_NE(r.err.find("prompt a: the logits at prefill hold NaN or Inf, so no token can be chosen; `tpx inspect --check " + model),
                  std::string::npos) << sampling << r.err;
    }
    fs::remove_all(dir);
}

// tp=2: the one-shot all-reduce and NCCL's give the same logits, bit for bit (both round
// bf16(a + b) once), and the log says which path ran.
TEST(GpuRun, OneShotAllReduceEqualsNcclBitForBit) {
    if (gpu_count() < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpu_count() << " visible";
    Golden g = read_golden("llama-gqa");
    std::string dir = temp_dir();
    const std::string nccl_job = dir + "/nccl.toml";
    fs::rename(write_job(dir, g, "llama-gqa", 2, 1, "[backend.tuning]\noneshot = false\n"), nccl_job);
    std::string job = write_job(dir, g, "llama-gqa", 2, 1);
    auto nccl = run_process("timeout 120 " + tpx_bin("tpx") + " run " + nccl_job + " --dump-logits " + dir + "/nccl.h5");
    ASSERT_EQ(nccl.exit_code, 0) << nccl.err;
    EXPECT_NE(nccl.err.find("one-shot all-reduce off (backend.tuning.oneshot = false)"), std::string::npos) << nccl.err;
    auto one = run_process("timeout 120 " + tpx_bin("tpx") + " run " + job + " --dump-logits " + dir + "/oneshot.h5");
    ASSERT_EQ(one.exit_code, 0) << one.err;
    if (one.err.find("one-shot all-reduce over CUDA IPC") == std::string::npos)
        GTEST_SKIP() << "the one-shot path is off on this machine: " << one.err;
    for (int64_t b = 0; b < g.batch; ++b) {
        std::string name = "prompt_" + std::to_string(b) + "/prompt_logits";
        std::vector<float> a = read_h5(dir + "/nccl.h5", name), c = read_h5(dir + "/oneshot.h5", name);
        ASSERT_EQ(a.size(), c.size());
        EXPECT_EQ(0, std::memcmp(a.data(), c.data(), a.size() * 4)) << "prompt " << b;
    }
    fs::remove_all(dir);
}

// tp=2, one prompt (batch-1 decode steps, the first eager, the rest graph replays): the
// all-reduces summed in the GEMVs (cuda::ExchangeIn) give the same step logits, bit for bit,
// as the one-shot all-reduce kernel (backend.tuning.fused_all_reduce = false), and the log says how many were fused:
// llama-gqa's 2 layers make 3 (o_proj and down_proj of layer 0, o_proj of layer 1; the last
// down_proj's sum feeds the final norm, which the lm_head GEMV does not take in).
TEST(GpuRun, AllReduceFusedIntoTheGemvsEqualsTheOneShotKernel) {
    if (gpu_count() < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpu_count() << " visible";
    Golden g = read_golden("llama-gqa");
    std::string dir = temp_dir();
    std::ofstream(dir + "/prompts.jsonl")
        << nlohmann::json{{"id", 0}, {"input_ids", std::vector<int32_t>(g.input_ids.begin(), g.input_ids.begin() + g.prompt_len)}}.dump()
        << "\n";
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/llama-gqa\"\n[parallel]\ntp = 2\n[backend]\ndevice = \"cuda\"\n"
                                     << "[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 8\noutput = \"out.jsonl\"\n";
    std::ofstream(dir + "/plain.toml") << "[model]\npath = \"" << kGolden << "/llama-gqa\"\n[parallel]\ntp = 2\n[backend]\ndevice = \"cuda\"\n"
                                       << "[backend.tuning]\nfused_all_reduce = false\n"
                                       << "[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 8\noutput = \"plain.out.jsonl\"\n";
    auto plain = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/plain.toml --dump-logits " + dir + "/plain.h5");
    ASSERT_EQ(plain.exit_code, 0) << plain.err;
    if (plain.err.find("one-shot all-reduce over CUDA IPC") == std::string::npos)
        GTEST_SKIP() << "the one-shot path is off on this machine: " << plain.err;
    EXPECT_NE(plain.err.find("0 all-reduces of a batch-1 step summed in the GEMVs"), std::string::npos) << plain.err;
    auto fused = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/job.toml --dump-logits " + dir + "/fused.h5");
    ASSERT_EQ(fused.exit_code, 0) << fused.err;
    EXPECT_NE(fused.err.find("3 all-reduces of a batch-1 step summed in the GEMVs"), std::string::npos) << fused.err;
    EXPECT_NE(fused.err.find("decode: 6 CUDA graph replays"), std::string::npos) << fused.err;
    std::vector<float> a = read_h5(dir + "/plain.h5", "prompt_0/step_logits"), b = read_h5(dir + "/fused.h5", "prompt_0/step_logits");
    ASSERT_EQ(a.size(), b.size());
    ASSERT_GT(a.size(), 0u);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
    fs::remove_all(dir);
}
