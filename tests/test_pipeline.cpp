// Pipeline parallelism (issue #31). The planner's stages (balanced by weight bytes, or as
// pp_layers says; the 70B plan at tp 8 x pp 2 within 5%), each stage's cut graph, the
// micro-batch split, the rank map; and `tpx run` under mpirun against HF transformers' outputs
// (tests/data/golden): at (tp, pp) = (1, 2), (2, 2), (1, 3) on llama-sharded and (2, 2) ep 2 on
// mixtral-moe, with one micro-batch and with two, prompt logits to 1e-4 (max abs error over max
// abs reference: fp32 reading the same bf16 weights agrees to about 1e-5, the golden README
// says), greedy tokens exactly HF's, and each rank reading exactly its stage's planned bytes
// (the plan's read_bytes is the safetensors reader's own read plan for the stage's slices).
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "golden.h"
#include "jobs/parse.h"
#include "launcher/mpirun.h"
#include "process.h"
#include "sharding/pipeline.h"
#include "sharding/plan.h"
#include "worker/pipeline.h"

namespace fs = std::filesystem;
using namespace tpx;
using namespace tpx_test;

namespace {

const std::string kData = TPX_TEST_DATA;

Job job_at(const std::string& model, const std::string& parallel) {
    return parse_job("[model]\npath = \"" + model + "\"\n[parallel]\n" + parallel, "test.toml", kData);
}

}  // namespace

// The DP split minimises the largest stage; the embedding weighs on stage 0, the head on the last.
TEST(Stages, BalancedByWeightBytes) {
    // embedding 10, four layers of 4, head 10: [10+4+4 | 4+4+10] = 18 each.
    auto st = split_stages({10, 4, 4, 4, 4, 10}, 2, {}, "j.toml");
    ASSERT_EQ(st.size(), 2u);
    EXPECT_EQ(st[0].first_layer, 0);
    EXPECT_EQ(st[0].end_layer, 2);
    EXPECT_EQ(st[1].first_layer, 2);
    EXPECT_EQ(st[1].end_layer, 4);
    EXPECT_EQ(st[0].weight_bytes, 18);
    EXPECT_EQ(st[1].weight_bytes, 18);
    EXPECT_TRUE(st[0].first && !st[0].last && st[1].last);
    // A heavy head pulls layers to the first stage: [1+5+5+5 | 5+20] = 16 vs 25 is the best.
    st = split_stages({1, 5, 5, 5, 5, 20}, 2, {}, "j.toml");
    EXPECT_EQ(st[0].end_layer, 3);
    st = split_stages({1, 5, 5, 5, 5, 20}, 2, {1, 3}, "j.toml");
    EXPECT_EQ(st[0].end_layer, 1);
    EXPECT_EQ(st[1].weight_bytes, 35);
    try {
        split_stages({1, 5, 5, 1}, 3, {}, "j.toml");
        FAIL();
    } catch (const JobError& e) {
        EXPECT_NE(std::string(e.what()).find("parallel.pp = 3 stages need at least one decoder layer each, but the model has 2"),
                  std::string::npos) << e.what();
    }
    try {
        split_stages({1, 5, 5, 5, 1}, 2, {1, 1}, "j.toml");
        FAIL();
    } catch (const JobError& e) {
        EXPECT_NE(std::string(e.what()).find("parallel.pp_layers adds up to 2 layers but the model has 3"), std::string::npos) << e.what();
    }
}

TEST(Stages, JobKeysAreValidated) {
    Job job = job_at("golden/llama-sharded", "tp = 2\npp = 3\npp_layers = [1, 1, 1]\nmicro_batches = 2\n");
    EXPECT_EQ(job.world(), 6);
    EXPECT_EQ(job.parallel.ranks_per_node, 6);
    EXPECT_EQ(job.parallel.micro_batches, 2);
    auto refused = [](const std::string& parallel, const std::string& why) {
        try {
            job_at("golden/llama-sharded", parallel);
            ADD_FAILURE() << parallel;
        } catch (const JobError& e) {
            EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
        }
    };
    refused("pp = 2\npp_layers = [3]\n", "parallel.pp_layers names 1 stages but parallel.pp = 2");
    refused("pp = 2\npp_layers = [3, 0]\n", "pp_layers must hold layer counts >= 1");
    refused("tp = 2\npp = 2\nnodes = 3\n", "parallel.nodes = 3 must divide the world size tp x pp = 4");
    refused("tp = 2\npp = 3\nnodes = 2\n", "splits a stage's tp = 2 ranks over two hosts");
    refused("micro_batches = 0\n", "micro_batches = 0 is out of range");
}

// llama-sharded (3 layers) at pp = 3: one layer a stage; each rank holds only its stage's
// weights, the stages together hold each weight of the pp = 1 plan once (per tp rank), and the
// reads add up to the pp = 1 plan's.
TEST(Stages, PlanHoldsEachWeightOnItsStage) {
    const std::string model = kGolden + "/llama-sharded";
    ShardPlan one = make_plan(job_at(model, "tp = 2\n"));
    ShardPlan three = make_plan(job_at(model, "tp = 2\npp = 3\n"));
    ASSERT_EQ(three.ranks.size(), 6u);
    ASSERT_EQ(three.stages.size(), 3u);
    for (int s = 0; s < 3; ++s) {
        EXPECT_EQ(three.stages[s].first_layer, s);
        EXPECT_EQ(three.stages[s].end_layer, s + 1);
    }
    EXPECT_EQ(three.stages[0].send_bytes_per_token, 128 * 4);  // hidden 128, fp32 on the CPU
    EXPECT_EQ(three.stages[2].send_bytes_per_token, 0);
    for (int tp_rank = 0; tp_rank < 2; ++tp_rank) {
        int64_t read = 0, weights = 0;
        std::map<std::string, int> held;
        for (int s = 0; s < 3; ++s) {
            const RankPlan& r = three.ranks[s * 2 + tp_rank];
            EXPECT_EQ(r.stage, s);
            EXPECT_EQ(r.tp_rank, tp_rank);
            EXPECT_EQ(r.kv_cache_bytes * 3, one.ranks[tp_rank].kv_cache_bytes);
            read += r.read_bytes, weights += r.weight_bytes;
            for (const WeightPlan& w : r.weights) {
                ++held[w.name];
                if (w.name.rfind("layers.", 0) == 0) {
                    EXPECT_EQ(w.name.substr(7, 1), std::to_string(s)) << w.name;
                }
            }
        }
        EXPECT_EQ(read, one.ranks[tp_rank].read_bytes);
        EXPECT_EQ(weights, one.ranks[tp_rank].weight_bytes);
        EXPECT_EQ(held.size(), one.ranks[tp_rank].weights.size());
        for (const auto& [name, n] : held) EXPECT_EQ(n, 1) << name;
    }
    EXPECT_NE(three.ranks[0].weights.front().name.find("embed_tokens"), std::string::npos);
    // The plan survives its broadcast: per-rank weights come back from the graph by stage.
    ShardPlan back = ShardPlan::from_json(three.to_json());
    ASSERT_EQ(back.ranks.size(), 6u);
    for (size_t r = 0; r < 6; ++r) EXPECT_EQ(back.ranks[r].weights.size(), three.ranks[r].weights.size()) << r;
}

// A middle stage's graph: from stage_input to the residual stream after its last layer.
TEST(Stages, CutGraphRunsOnlyTheStage) {
    ShardPlan plan = make_plan(job_at(kGolden + "/llama-sharded", "pp = 3\n"));
    Graph g = Graph::from_json(plan.graph.to_json());
    cut_stage(g, plan.stages[1], plan.config.num_layers);
    bool input = false;
    for (Node* n : g.nodes()) {
        if (n->name == kStageInput) input = true;
        if (n->kind == Op::kInput || n->kind == Op::kParam) continue;
        EXPECT_EQ(n->name.rfind("layers.1.", 0), 0u) << n->name;
    }
    EXPECT_TRUE(input);
    ASSERT_EQ(g.outputs().size(), 1u);
    EXPECT_EQ(g.outputs()[0]->producer->name, "layers.1.mlp_residual");
    Graph last = Graph::from_json(plan.graph.to_json());
    cut_stage(last, plan.stages[2], plan.config.num_layers);
    EXPECT_EQ(last.outputs()[0]->producer->name, "lm_head");
    EXPECT_EQ(last.find("embed_tokens"), nullptr);
}

// Llama-3-70B (config only) at tp 8 x pp 2 on 2 hosts: stage weights within 5%, each boundary's
// bytes per token shown (hidden 8192 in bf16 = 16.38 KB per rank, 8 ranks).
TEST(Stages, Llama70bPlanAtTp8Pp2IsBalanced) {
    std::string dir = temp_dir();
    std::ofstream(dir + "/j.toml") << "[model]\npath = \"" << kData << "/configs/llama-3-70b\"\n[parallel]\ntp = 8\npp = 2\nnodes = 2\n"
                                   << "[backend]\ndevice = \"cuda\"\n[launch]\nhosts = [\"a:8\", \"b:8\"]\n";
    auto r = run_process(tpx_bin("tpx") + " plan " + dir + "/j.toml --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json j = nlohmann::json::parse(r.out);
    ASSERT_EQ(j["ranks"].size(), 16u);
    ASSERT_EQ(j["stages"].size(), 2u);
    double a = j["stages"][0]["weight_bytes"], b = j["stages"][1]["weight_bytes"];
    EXPECT_LE(std::max(a, b) / std::min(a, b) - 1, 0.05) << a << " " << b;
    EXPECT_EQ(j["stages"][0]["send_bytes_per_token"], 8192 * 2);
    for (const auto& rank : j["ranks"]) EXPECT_EQ(rank["stage"].get<int>(), rank["rank"].get<int>() / 8);
    auto text = run_process(tpx_bin("tpx") + " plan " + dir + "/j.toml");
    ASSERT_EQ(text.exit_code, 0) << text.err;
    EXPECT_NE(text.out.find("pipeline: 2 stages of tp=8 ranks"), std::string::npos) << text.out;
    EXPECT_NE(text.out.find("131.07 KB (16.38 KB)"), std::string::npos) << text.out;
    Job job = parse_job(read_text(dir + "/j.toml"), dir + "/j.toml", dir);
    EXPECT_EQ(format_rank_map(rank_map(job)), "a: ranks 0-7 (stage 0, tp ranks 0-7) | b: ranks 8-15 (stage 1, tp ranks 0-7)");
    fs::remove_all(dir);
}

// More stages than layers is refused by the launcher with the planner's message, before mpirun.
TEST(Stages, MoreStagesThanLayersIsRefusedBeforeAnyRankStarts) {
    const std::string dir = temp_dir();
    write_golden_prompts(dir, read_golden("llama-sharded"));
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/llama-sharded\"\n[parallel]\npp = 4\n"
                                     << "[run]\nprompts = \"prompts.jsonl\"\n";
    auto r = run_process(tpx_bin("tpx") + " run " + dir + "/job.toml");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("parallel.pp = 4 stages need at least one decoder layer each, but the model has 3"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("rank map"), std::string::npos) << "mpirun was started: " << r.err;
    fs::remove_all(dir);
}

// tpx serve and tpx bench run one stage: refused by the launcher, not by the ranks after mpirun
// started them.
TEST(Stages, ServeAndBenchOfStagesAreRefusedBeforeAnyRankStarts) {
    const std::string dir = temp_dir();
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/llama-sharded\"\n[parallel]\npp = 2\n[serve]\nport = 18999\n";
    for (const std::string& command : {std::string(" serve "), std::string(" bench --json " + dir + "/b.json ")}) {
        auto r = run_process(tpx_bin("tpx") + command + dir + "/job.toml");
        EXPECT_EQ(r.exit_code, 2) << command << r.err;
        EXPECT_NE(r.err.find("job.toml: parallel.pp = 2: tpx" + command.substr(0, 6) + " runs one pipeline stage only"), std::string::npos)
            << r.err;
        EXPECT_EQ(r.err.find("rank map"), std::string::npos) << "mpirun was started: " << r.err;
    }
    fs::remove_all(dir);
}

TEST(MicroBatches, SequencesStayWholeAndRowsMapBack) {
    TokenBatch b;
    // Three sequences (slots 4, 1, 7) of 2, 1 and 3 tokens; every token's logits wanted. Two
    // groups: the first two sequences, then the third.
    const int32_t slots[] = {4, 4, 1, 7, 7, 7};
    for (int t = 0; t < 6; ++t) {
        b.ids.push_back(100 + t);
        b.positions.push_back(t);
        b.slots.push_back(slots[t]);
        b.logit_rows.push_back(t);
    }
    auto mbs = split_micro_batches(b, 2);
    ASSERT_EQ(mbs.size(), 2u);
    EXPECT_EQ(mbs[0].batch.slots, (std::vector<int32_t>{4, 4, 1}));
    EXPECT_EQ(mbs[0].batch.positions, (std::vector<int32_t>{0, 1, 2}));
    EXPECT_EQ(mbs[1].batch.slots, (std::vector<int32_t>{7, 7, 7}));
    EXPECT_EQ(mbs[1].batch.ids, (std::vector<int32_t>{103, 104, 105}));
    EXPECT_EQ(mbs[1].batch.logit_rows, (std::vector<int64_t>{0, 1, 2}));
    EXPECT_EQ(mbs[1].result_rows, (std::vector<size_t>{3, 4, 5}));
    EXPECT_EQ(split_micro_batches(b, 8).size(), 3u) << "never more groups than sequences";
    b.logit_rows = {1, 5};
    mbs = split_micro_batches(b, 3);
    ASSERT_EQ(mbs.size(), 3u);
    EXPECT_EQ(mbs[0].batch.logit_rows, (std::vector<int64_t>{1}));
    EXPECT_TRUE(mbs[1].batch.logit_rows.empty());
    EXPECT_EQ(mbs[2].batch.logit_rows, (std::vector<int64_t>{2}));
    EXPECT_EQ(mbs[2].result_rows, (std::vector<size_t>{1}));
}

namespace {

struct PipeCase {
    const char* model;
    int tp, pp, ep, micro_batches;
};

class PipelineRun : public testing::TestWithParam<PipeCase> {};

}  // namespace

TEST_P(PipelineRun, LogitsTokensAndReadBytesMatchHf) {
    const PipeCase& c = GetParam();
    const Golden g = read_golden(c.model);
    const std::string dir = temp_dir();
    write_golden_prompts(dir, g);
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/" << c.model << "\"\n[parallel]\ntp = " << c.tp
                                     << "\npp = " << c.pp << "\nep = " << c.ep << "\nmicro_batches = " << c.micro_batches
                                     << "\n[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = " << g.total_len - g.prompt_len
                                     << "\noutput = \"out.jsonl\"\n";
    auto r = run_process(tpx_bin("tpx") + " run " + dir + "/job.toml --dump-logits " + dir + "/logits.h5");
    ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
    EXPECT_NE(r.err.find("(stage " + std::to_string(c.pp - 1) + ", tp rank"), std::string::npos) << "the rank map: " << r.err;

    double max_err = 0, max_ref = 0;
    for (int64_t b = 0; b < g.batch; ++b) {
        std::vector<float> got = read_h5(dir + "/logits.h5", "prompt_" + std::to_string(b) + "/prompt_logits");
        ASSERT_EQ((int64_t)got.size(), g.prompt_len * g.vocab);
        for (int64_t i = 0; i < g.prompt_len * g.vocab; ++i) {
            const float ref = g.logits[b * g.prompt_len * g.vocab + i];
            max_err = std::max(max_err, (double)std::fabs(got[i] - ref));
            max_ref = std::max(max_ref, (double)std::fabs(ref));
        }
    }
    EXPECT_LE(max_err / max_ref, 1e-4) << "max abs error " << max_err << " over max abs logit " << max_ref;

    std::ifstream out(dir + "/out.jsonl");
    std::string line;
    int64_t b = 0;
    for (; std::getline(out, line); ++b) {
        std::vector<int32_t> want(g.greedy_ids.begin() + b * g.total_len + g.prompt_len, g.greedy_ids.begin() + (b + 1) * g.total_len);
        EXPECT_EQ(nlohmann::json::parse(line)["output_ids"].get<std::vector<int32_t>>(), want) << "prompt " << b;
    }
    EXPECT_EQ(b, g.batch);

    nlohmann::json ranks = nlohmann::json::parse(read_text(dir + "/out.jsonl.ranks.json"));
    EXPECT_EQ((int)ranks.size(), c.tp * c.pp);
    ShardPlan plan = make_plan(parse_job(read_text(dir + "/job.toml"), dir + "/job.toml", dir));
    for (const auto& rank : ranks) {
        const double read = rank["read_bytes"], planned = rank["planned_read_bytes"];
        EXPECT_EQ(planned, (double)plan.ranks.at(rank["rank"].get<int>()).read_bytes);
        EXPECT_GT(planned, 0);
        EXPECT_EQ(read, planned) << "rank " << rank["rank"];
    }
    fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Golden, PipelineRun,
                         testing::Values(PipeCase{"llama-sharded", 1, 2, 1, 1}, PipeCase{"llama-sharded", 1, 2, 1, 2},
                                         PipeCase{"llama-sharded", 2, 2, 1, 1}, PipeCase{"llama-sharded", 2, 2, 1, 2},
                                         PipeCase{"llama-sharded", 1, 3, 1, 1}, PipeCase{"llama-sharded", 1, 3, 1, 2},
                                         PipeCase{"mixtral-moe", 2, 2, 2, 1}, PipeCase{"mixtral-moe", 2, 2, 2, 2}),
                         [](const testing::TestParamInfo<PipeCase>& info) {
                             std::string m = info.param.model;
                             for (char& ch : m)
                                 if (ch == '-') ch = '_';
                             return m + "_tp" + std::to_string(info.param.tp) + "_pp" + std::to_string(info.param.pp) + "_ep" +
                                    std::to_string(info.param.ep) + "_mb" + std::to_string(info.param.micro_batches);
                         });

// A last-stage rank that stops (SIGSTOP: alive, so mpirun does not see it) leaves the first
// stage waiting on it: the send (or the receive of the logits) ends after backend.collective_timeout_s naming the rank
// and its stage, and the job ends (MPI_Abort) with nothing left behind.
TEST(PipelineFailures, AStoppedStageIsNamedAndTheJobEndsAfterTheTimeout) {
    const std::string dir = temp_dir();
    write_golden_prompts(dir, read_golden("llama-sharded"));
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/llama-sharded\"\n[parallel]\npp = 2\n"
                                     << "[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 200\n[backend]\ncollective_timeout_s = 2\n";
    Background b = start_background(tpx_bin("tpx") + " run " + dir + "/job.toml --step-delay-ms 50");
    int victim = -1;
    for (int i = 0; i < 200 && victim < 0; ++i) {
        for (int pid : pids_matching(dir + "/job.toml"))
            if (read_text("/proc/" + std::to_string(pid) + "/cmdline").find("tpx-worker") != std::string::npos &&
                env_of(pid, "OMPI_COMM_WORLD_RANK") == "1")
                victim = pid;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_GT(victim, 0) << "rank 1 never started";
    for (int i = 0; i < 200 && read_text(b.err_path).find("info: loaded") == std::string::npos; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // into decoding
    kill(victim, SIGSTOP);
    const auto stopped = std::chrono::steady_clock::now();
    const int code = wait_background(b, 30);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
    EXPECT_NE(code, 0);
    EXPECT_NE(code, -1) << "tpx run did not end";
    EXPECT_GT(seconds, 2.0) << "ended before the timeout";
    EXPECT_LT(seconds, 10.0);
    const std::string err = read_text(b.err_path);
    EXPECT_NE(err.find("rank 0 ("), std::string::npos) << err;
    // Rank 0 is waiting on its send of the hidden rows or on its receive of the logits.
    EXPECT_NE(err.find(" rank 1 (pipeline stage 1) waited more than 2 s (backend.collective_timeout_s): that stage stopped or is stuck"),
              std::string::npos) << err;
    for (int i = 0; i < 50 && !pids_matching(dir).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(pids_matching(dir).empty()) << "processes left behind for " << dir;
    kill(victim, SIGKILL);  // gone already unless an expectation above failed: never left behind stopped
    fs::remove_all(dir);
}

// A rank of the last stage that fails (here: throws when decoding starts) ends every rank of
// every stage within seconds, its message naming it.
TEST(PipelineFailures, ALastStageRankThatThrowsEndsEveryRank) {
    const std::string dir = temp_dir();
    write_golden_prompts(dir, read_golden("llama-sharded"));
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/llama-sharded\"\n[parallel]\ntp = 2\npp = 2\n"
                                     << "[run]\nprompts = \"prompts.jsonl\"\n";
    auto r = run_process("TPX_FAULT=3:decode " + tpx_bin("tpx") + " run " + dir + "/job.toml");
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_LT(r.seconds, 5.0);
    EXPECT_NE(r.err.find("rank 3 ("), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("injected failure at decode"), std::string::npos) << r.err;
    for (int i = 0; i < 50 && !pids_matching(dir).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(pids_matching(dir).empty()) << "processes left behind for " << dir;
    fs::remove_all(dir);
}
