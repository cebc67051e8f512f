// The GPU pipeline stages (issue #31) against HF transformers' outputs. On one GPU, in one
// process: llama-sharded and mixtral-moe cut into 2 and 3 stages (each a CudaExecutor over its
// cut graph, as the worker builds it), the boundary's NCCL send emulated by a device copy from
// one stage's output block into the next one's input block. Teacher-forced over greedy_ids,
// first as one prefill, then one token a step as decode steps (CUDA graphs per stage, captured
// on the second step and replayed): bf16 logits within 2e-2 of HF's (max abs error over max abs
// reference, as test_gpu_run), and the argmax equal to HF's wherever HF's top-two gap exceeds
// 0.05. With two GPUs or more, also `tpx run` at pp = 2 (NCCL send/recv between the devices).
// And the executor's draws on the device against their CPU twin (GpuDraws).
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>

#include <nlohmann/json.hpp>

#include "common/cuda_check.h"
#include "golden.h"
#include "jobs/parse.h"
#include "process.h"
#include "sharding/fusion.h"
#include "sharding/kv_cache.h"
#include "sharding/pipeline.h"
#include "sharding/plan.h"
#include "worker/cuda_executor.h"
#include "worker/device_weights.h"

namespace fs = std::filesystem;
using namespace tpx;
using namespace tpx_test;

namespace {

int gpu_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

// Every stage of `model` at pp stages (tp = 1), on device 0, sharing one stream.
struct Stages {
    ShardPlan plan;
    cudaStream_t stream = nullptr;
    std::vector<std::unique_ptr<Graph>> graphs;
    std::vector<std::unique_ptr<CudaExecutor>> execs;

    Stages(const std::string& model, int pp) {
        Job job = parse_job("[model]\npath = \"" + model + "\"\n[parallel]\npp = " + std::to_string(pp) +
                                "\n[backend]\ndevice = \"cuda\"\n[run]\nmax_batch = 2\nmax_seq_len = 64\n",
                            "gpu_pipeline.toml", kGolden);
        plan = make_plan(job);
        CUDA_CHECK(cudaSetDevice(0));
        CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        auto ckpt = Checkpoint::open(model);
        for (const PipelineStage& st : plan.stages) {
            graphs.push_back(std::make_unique<Graph>(Graph::from_json(plan.graph.to_json())));
            Graph& g = *graphs.back();
            cut_stage(g, st, plan.config.num_layers);  // as the worker: cut, then the post-load fusion
            fuse_allreduce_residual_rmsnorm(g);
            g.cleanup();
            DeviceWeights w = upload_weights(g, 0, *ckpt, stream);
            execs.push_back(std::make_unique<CudaExecutor>(g, 0, nullptr, std::move(w), kv_cache_layout(g, plan.max_batch, plan.max_seq_len),
                                                           stream, 120.0, job.backend.tuning));
            execs.back()->enable_graphs(true);
        }
    }
    ~Stages() {
        execs.clear();
        if (stream) cudaStreamDestroy(stream);
    }

    // One forward through every stage; the send is a device copy into the next stage's block.
    std::vector<float> forward(const TokenBatch& batch) {
        const int64_t T = (int64_t)batch.ids.size(), H = plan.config.hidden_size;
        int64_t R = 0;
        for (size_t s = 0; s < execs.size(); ++s) {
            if (s > 0)
                CUDA_CHECK(cudaMemcpyAsync(execs[s]->stage_input(T), execs[s - 1]->stage_output(), T * H * sizeof(__nv_bfloat16),
                                           cudaMemcpyDeviceToDevice, stream));
            R = execs[s]->enqueue_stage(batch, false);
        }
        return execs.back()->finish_logits(R);
    }
};

// got [rows, V] against HF's greedy_logits rows `ref_rows`: the largest error and reference so
// far, and the argmax where HF's winner is clear.
void compare(const Golden& g, const std::vector<float>& got, const std::vector<int64_t>& ref_rows, double& max_err, double& max_ref,
             int& compared) {
    for (size_t j = 0; j < ref_rows.size(); ++j) {
        const float* ref = &g.greedy_logits[ref_rows[j] * g.vocab];
        const float* mine = &got[j * g.vocab];
        for (int64_t v = 0; v < g.vocab; ++v) {
            max_err = std::max(max_err, (double)std::fabs(mine[v] - ref[v]));
            max_ref = std::max(max_ref, (double)std::fabs(ref[v]));
        }
        std::vector<float> sorted(ref, ref + g.vocab);
        std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
        if (sorted[0] - sorted[1] <= 0.05f) continue;
        EXPECT_EQ(std::max_element(mine, mine + g.vocab) - mine, std::max_element(ref, ref + g.vocab) - ref) << "row " << ref_rows[j];
        ++compared;
    }
}

// Every position of the golden's prompts, each row's logits wanted (HF's rows: b x total_len + t).
TokenBatch prompts_batch(const Golden& g, std::vector<int64_t>* rows = nullptr) {
    TokenBatch prefill;
    for (int64_t b = 0; b < g.batch; ++b)
        for (int64_t t = 0; t < g.prompt_len; ++t) {
            prefill.logit_rows.push_back((int64_t)prefill.ids.size());
            prefill.ids.push_back(g.greedy_ids[b * g.total_len + t]);
            prefill.positions.push_back((int32_t)t);
            prefill.slots.push_back((int32_t)b);
            if (rows) rows->push_back(b * g.total_len + t);
        }
    return prefill;
}

// HF's greedy token at position t of each sequence, one decode step.
TokenBatch decode_batch(const Golden& g, int64_t t, std::vector<int64_t>* rows = nullptr) {
    TokenBatch step;
    for (int64_t b = 0; b < g.batch; ++b) {
        step.ids.push_back(g.greedy_ids[b * g.total_len + t]);
        step.positions.push_back((int32_t)t);
        step.slots.push_back((int32_t)b);
        step.logit_rows.push_back(b);
        if (rows) rows->push_back(b * g.total_len + t);
    }
    return step;
}

struct StageCase {
    const char* model;
    int pp;
};

class GpuStages : public testing::TestWithParam<StageCase> {};

}  // namespace

TEST_P(GpuStages, EmulatedSendsGiveHfLogitsInPrefillAndCapturedDecode) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    const Golden g = read_golden(GetParam().model);
    Stages stages(kGolden + "/" + GetParam().model, GetParam().pp);
    double max_err = 0, max_ref = 0;
    int compared = 0;
    // Prefill: every position of both sequences' prompts, every row's logits.
    std::vector<int64_t> rows;
    compare(g, stages.forward(prompts_batch(g, &rows)), rows, max_err, max_ref, compared);
    // Decode: HF's greedy tokens one a step (teacher forcing), both sequences a step.
    for (int64_t t = g.prompt_len; t < g.total_len; ++t) {
        rows.clear();
        const TokenBatch step = decode_batch(g, t, &rows);
        compare(g, stages.forward(step), rows, max_err, max_ref, compared);
    }
    EXPECT_LE(max_err / max_ref, 2e-2) << "max abs error " << max_err << " over max abs logit " << max_ref;
    EXPECT_GT(compared, (int)(g.batch * g.total_len / 2)) << "most positions have a clear winner";
    for (size_t s = 0; s < stages.execs.size(); ++s)
        EXPECT_GT(stages.execs[s]->graph_replays(), 0) << "stage " << s << " replays its captured decode step";
}

INSTANTIATE_TEST_SUITE_P(Golden, GpuStages,
                         testing::Values(StageCase{"llama-sharded", 2}, StageCase{"llama-sharded", 3}, StageCase{"mixtral-moe", 2}),
                         [](const testing::TestParamInfo<StageCase>& info) {
                             std::string m = info.param.model;
                             std::replace(m.begin(), m.end(), '-', '_');
                             return m + "_pp" + std::to_string(info.param.pp);
                         });

// The executor's draws (pp = 1: the whole model in one CudaExecutor): forward_draw's ids are its
// CPU twin's over forward_view's logits of the same batch, and its host rows are those logits bit
// for bit; in a prefill (eager) and in decode steps (captured: kDraw and kDrawLogits graphs).
TEST(GpuDraws, DeviceDrawsAndHostRowsEqualTheTwinOverTheSameLogits) {
    if (gpu_count() < 1) GTEST_SKIP() << "no CUDA device";
    const Golden g = read_golden("llama-sharded");
    Stages stages(kGolden + "/llama-sharded", 1);
    CudaExecutor& exec = *stages.execs[0];
    const int64_t V = exec.vocab();
    std::mt19937_64 rng(5);
    const cpu::DrawParams cuts[] = {{1.0, 0, 1.0}, {0.7, 5, 1.0}, {1.2, 0, 0.8}, {0.0, 0, 1.0}};
    auto check = [&](const TokenBatch& batch, const std::vector<int64_t>& host_rows, const std::string& what) {
        const int64_t R = batch.rows();
        const float* view = exec.forward_view(batch);  // (the same positions rewritten with the same values)
        const std::vector<float> want(view, view + R * V);
        // forward_draw's host rows land in the same pinned block: NaN first, so that a row it does
        // not copy shows.
        std::fill(const_cast<float*>(view), const_cast<float*>(view) + R * V, NAN);
        std::vector<cpu::DrawParams> draws(R);
        for (int64_t r = 0; r < R; ++r) draws[r] = cuts[r % 4], draws[r].random = rng();
        const float* got_rows = nullptr;
        const std::vector<int32_t> ids = exec.forward_draw(batch, draws, host_rows, &got_rows);
        ASSERT_EQ((int64_t)ids.size(), R) << what;
        for (int64_t r = 0; r < R; ++r) EXPECT_EQ(ids[r], cpu::draw_token(&want[r * V], V, draws[r])) << what << ", row " << r;
        for (int64_t r : host_rows)
            EXPECT_TRUE(std::equal(want.begin() + r * V, want.begin() + (r + 1) * V, got_rows + r * V)) << what << ", host row " << r;
    };
    const TokenBatch prefill = prompts_batch(g);
    check(prefill, {}, "prefill");
    check(prefill, {0, 1, 3, (int64_t)prefill.ids.size() - 1}, "prefill, four host rows");
    for (int64_t t = g.prompt_len; t < g.total_len; ++t) {
        const TokenBatch step = decode_batch(g, t);
        check(step, {}, "decode " + std::to_string(t));
        check(step, {g.batch - 1}, "decode " + std::to_string(t) + ", a host row");
    }
    EXPECT_GT(exec.graph_replays(), 0) << "the decode steps replay captured graphs";
}

// Two GPUs: `tpx run` at pp = 2 (one rank a device, NCCL send/recv on the boundary), two
// micro-batches, HF's greedy tokens.
TEST(GpuPipelineRun, TwoStagesOnTwoGpusGiveHfTokens) {
    if (gpu_count() < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpu_count() << " visible";
    const Golden g = read_golden("llama-sharded");
    const std::string dir = temp_dir();
    write_golden_prompts(dir, g);
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/llama-sharded\"\n[parallel]\npp = 2\nmicro_batches = 2\n"
                                     << "[backend]\ndevice = \"cuda\"\n[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = "
                                     << g.total_len - g.prompt_len << "\nmax_seq_len = 64\noutput = \"out.jsonl\"\n";
    auto r = run_process("timeout 120 " + tpx_bin("tpx") + " run " + dir + "/job.toml");
    ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
    std::ifstream out(dir + "/out.jsonl");
    std::string line;
    int64_t b = 0;
    for (; std::getline(out, line); ++b) {
        std::vector<int32_t> want(g.greedy_ids.begin() + b * g.total_len + g.prompt_len, g.greedy_ids.begin() + (b + 1) * g.total_len);
        EXPECT_EQ(nlohmann::json::parse(line)["output_ids"].get<std::vector<int32_t>>(), want) << "prompt " << b;
    }
    EXPECT_EQ(b, g.batch);
    fs::remove_all(dir);
}
