// Across hosts, on simulated ones: two network namespaces h1, h2 on a bridge
// (scripts/netns_hosts.sh), reached by mpirun through scripts/netns_rsh, each with its own
// hostname. tpx run at tp=2 with one rank per host gives HF's greedy tokens and a per-rank
// table with two hostnames; a host that dies mid-run or cannot be reached ends the job within
// 30 s naming it; and the same job through a two-node Slurm cluster (one slurmd per namespace)
// gives the same tokens. Skips, with the reason, where namespaces cannot be made.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "golden.h"
#include "process.h"

namespace fs = std::filesystem;
using namespace tpx_test;

namespace {

class SimulatedHosts : public testing::Test {
public:
    static void SetUpTestSuite() {
        auto r = run_process(script("netns_hosts.sh") + " up");
        if (r.exit_code != 0) skip_ = "network namespaces cannot be made here: " + r.err;
    }
    static void TearDownTestSuite() {
        if (skip_.empty()) run_process(script("netns_hosts.sh") + " down");
    }

protected:
    void SetUp() override {
        if (!skip_.empty()) GTEST_SKIP() << skip_;
        // A test that killed a host leaves it without its network: bring both back.
        if (run_process("ip link show veth-h1 && ip link show veth-h2 && test -e /run/netns/h2").exit_code != 0)
            run_process(script("netns_hosts.sh") + " up");
    }

    static std::string script(const char* name) { return std::string(TPX_SOURCE_DIR) + "/scripts/" + name; }

    // A job over llama-gqa's golden prompts; `launch` is the [launch] table's body ("" = none).
    // `parallel` is the [parallel] table's body.
    std::string make_job(const std::string& dir, const std::string& launch, int max_new = 8,
                         const std::string& parallel = "tp = 2\nnodes = 2\n") {
        fs::create_directories(dir);
        write_golden_prompts(dir);
        std::ofstream job(dir + "/job.toml");
        job << "[model]\npath = \"" << kGolden << "/llama-gqa\"\n[parallel]\n" << parallel << "[run]\nprompts = \"prompts.jsonl\"\n"
            << "max_new_tokens = " << max_new << "\noutput = \"out.jsonl\"\n";
        if (!launch.empty()) job << "[launch]\n" << launch;
        return dir + "/job.toml";
    }

    std::string two_hosts(const std::string& second = "10.200.0.2") {
        return "hosts = [\"10.200.0.1:1\", \"" + second + ":1\"]\ninterface = \"10.200.0.0/24\"\nrsh_agent = \"" + script("netns_rsh") + "\"\n";
    }

    // The job with [parallel] `parallel` (two ranks, one a node) through a two-node Slurm cluster
    // (one slurmd per namespace): HF's tokens, a rank on each node.
    void run_on_slurm(const std::string& parallel) {
        std::string sd = temp_dir();
        auto up = run_process(script("slurm_cluster.sh") + " up2 " + sd);
        if (up.exit_code != 0) GTEST_SKIP() << "a two-node Slurm cluster could not be started: " << up.err;
        std::string dir = temp_dir();
        std::string job = make_job(dir, "", 8, parallel);
        std::string env = "SLURM_CONF=" + sd + "/slurm.conf ";
        auto sub = run_process(env + tpx_bin("tpx") + " submit " + job);
        ASSERT_EQ(sub.exit_code, 0) << sub.err;
        std::string id = sub.out.substr(0, sub.out.find('\n'));
        std::string status;
        for (int i = 0; i < 480; ++i) {
            status = run_process(env + tpx_bin("tpx") + " status " + id).out;
            if (status.find(": running") == std::string::npos && status.find(": pending") == std::string::npos) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(250));
        }
        EXPECT_NE(status.find(": completed (COMPLETED)"), std::string::npos) << status << run_process(env + tpx_bin("tpx") + " logs " + id).err;
        EXPECT_NE(status.find("nodes n[1-2]"), std::string::npos) << status;
        expect_golden_tokens(dir + "/out.jsonl");
        nlohmann::json ranks = nlohmann::json::parse(read_text(dir + "/out.jsonl.ranks.json"));
        EXPECT_EQ(ranks[0]["host"], "n1");
        EXPECT_EQ(ranks[1]["host"], "n2");
        run_process(script("slurm_cluster.sh") + " down " + sd);
    }

    void expect_no_leftovers(const std::string& dir) {
        for (int i = 0; i < 100 && !pids_matching(dir).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        EXPECT_TRUE(pids_matching(dir).empty()) << "processes left behind for " << dir;
    }

    static std::string skip_;
};

std::string SimulatedHosts::skip_;

}  // namespace

TEST_F(SimulatedHosts, OneRankPerHostGivesTheGoldenTokensAndTwoHostnames) {
    std::string dir = temp_dir();
    std::string job = make_job(dir, two_hosts());
    auto r = run_process("timeout 120 " + tpx_bin("tpx") + " run " + job);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("rank map: 10.200.0.1: rank 0 | 10.200.0.2: rank 1"), std::string::npos) << r.err;
    expect_golden_tokens(dir + "/out.jsonl");
    nlohmann::json ranks = nlohmann::json::parse(read_text(dir + "/out.jsonl.ranks.json"));
    ASSERT_EQ(ranks.size(), 2u);
    EXPECT_EQ(ranks[0]["host"], "h1");
    EXPECT_EQ(ranks[1]["host"], "h2");
    EXPECT_NE(r.out.find("0     h1 "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("1     h2 "), std::string::npos) << r.out;
    fs::remove_all(dir);
}

TEST_F(SimulatedHosts, AHostThatDiesMidRunEndsTheJobNamingIt) {
    std::string dir = temp_dir();
    std::string job = make_job(dir, two_hosts(), 200);
    Background b = start_background("env TPX_STEP_DELAY_MS=200 " + tpx_bin("tpx") + " run " + job);
    // Wait until both ranks are decoding.
    for (int i = 0; i < 200 && read_text(b.err_path).find("info: job") == std::string::npos; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::this_thread::sleep_for(std::chrono::seconds(1));
    run_process(script("netns_hosts.sh") + " kill h2");
    auto killed = std::chrono::steady_clock::now();
    int code = wait_background(b, 60);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
    EXPECT_NE(code, 0);
    EXPECT_NE(code, -1) << "tpx run did not end";
    EXPECT_LT(seconds, 30.0);
    std::string err = read_text(b.err_path);
    EXPECT_NE(err.find("tpx run: host 10.200.0.2 (rank 1) did not answer"), std::string::npos) << err;
    expect_no_leftovers(dir);
    fs::remove_all(dir);
}

TEST_F(SimulatedHosts, AHostThatCannotBeReachedIsNamed) {
    std::string dir = temp_dir();
    std::string job = make_job(dir, two_hosts("10.200.0.9"));
    auto r = run_process("timeout 60 " + tpx_bin("tpx") + " run " + job);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(r.seconds, 30.0);
    EXPECT_NE(r.err.find("tpx run: host 10.200.0.9 (rank 1) did not answer"), std::string::npos) << r.err;
    expect_no_leftovers(dir);
    fs::remove_all(dir);
}

// Pipeline parallelism across the hosts (issue #31): pp = 2, one stage a host (tp = 1), two
// micro-batches: HF's greedy tokens, the rank map naming each host's stage.
TEST_F(SimulatedHosts, OneStagePerHostGivesTheGoldenTokens) {
    std::string dir = temp_dir();
    std::string job = make_job(dir, two_hosts(), 8, "tp = 1\npp = 2\nmicro_batches = 2\nnodes = 2\n");
    auto r = run_process("timeout 120 " + tpx_bin("tpx") + " run " + job);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("rank map: 10.200.0.1: rank 0 (stage 0, tp rank 0) | 10.200.0.2: rank 1 (stage 1, tp rank 0)"), std::string::npos)
        << r.err;
    expect_golden_tokens(dir + "/out.jsonl");
    nlohmann::json ranks = nlohmann::json::parse(read_text(dir + "/out.jsonl.ranks.json"));
    ASSERT_EQ(ranks.size(), 2u);
    EXPECT_EQ(ranks[0]["host"], "h1");
    EXPECT_EQ(ranks[1]["host"], "h2");
    fs::remove_all(dir);
}

// The last stage's host dies while the first stage waits on it: the job ends, naming the host.
TEST_F(SimulatedHosts, AStageHostThatDiesMidRunEndsTheJobNamingIt) {
    std::string dir = temp_dir();
    std::string job = make_job(dir, two_hosts(), 200, "tp = 1\npp = 2\nnodes = 2\n");
    Background b = start_background("env TPX_STEP_DELAY_MS=200 " + tpx_bin("tpx") + " run " + job);
    for (int i = 0; i < 200 && read_text(b.err_path).find("info: job") == std::string::npos; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::this_thread::sleep_for(std::chrono::seconds(1));
    run_process(script("netns_hosts.sh") + " kill h2");
    auto killed = std::chrono::steady_clock::now();
    int code = wait_background(b, 60);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
    EXPECT_NE(code, 0);
    EXPECT_NE(code, -1) << "tpx run did not end";
    EXPECT_LT(seconds, 30.0);
    std::string err = read_text(b.err_path);
    EXPECT_NE(err.find("tpx run: host 10.200.0.2 (rank 1) did not answer"), std::string::npos) << err;
    expect_no_leftovers(dir);
    fs::remove_all(dir);
}

TEST_F(SimulatedHosts, TwoNodeSlurmGivesTheGoldenTokens) { run_on_slurm("tp = 2\nnodes = 2\n"); }

// pp = 2 under Slurm: one stage a node.
TEST_F(SimulatedHosts, TwoNodeSlurmWithOneStagePerNodeGivesTheGoldenTokens) {
    run_on_slurm("tp = 1\npp = 2\nmicro_batches = 2\nnodes = 2\n");
}
