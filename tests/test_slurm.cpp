// Slurm: the sbatch script against golden files (tests/data/sbatch, TPX_UPDATE_GOLDEN=1
// rewrites them), then tpx submit / status / cancel / logs against a real slurmctld + slurmd
// started for this suite (scripts/slurm_cluster.sh) and stopped by pid afterwards. The cluster
// tests skip, with the reason, where Slurm cannot be started.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "golden.h"
#include "jobs/parse.h"
#include "process.h"
#include "slurm/sbatch.h"

namespace fs = std::filesystem;
using namespace tpx_test;

namespace {

const SubmitPaths kPaths{"/opt/tpx/bin/tpx-worker", "/home/u/runs"};
const SubmitPaths kHostilePaths{"/opt/my tpx/bin/tpx-worker", "/home/u/runs $(rm -rf ~); x"};
// What the script carries in place of the resolved job (whose paths are this checkout's).
const std::string kJobText = "[model]\npath = \"/models/tiny\"\n";

}  // namespace

TEST(Sbatch, ScriptsMatchTheirGoldenFiles) {
    std::string dir = std::string(TPX_TEST_DATA) + "/sbatch";
    int n = 0;
    for (const auto& e : fs::directory_iterator(dir)) {
        if (e.path().extension() != ".toml") continue;
        std::string name = e.path().stem().string();
        Job job = parse_job(read_text(e.path().string()), name + ".toml", TPX_SOURCE_DIR);
        std::string script = sbatch_script(job, name == "hostile" ? kHostilePaths : kPaths, kJobText, /*as_root=*/false);
        std::string golden = dir + "/" + name + ".sbatch";
        if (std::getenv("TPX_UPDATE_GOLDEN")) std::ofstream(golden) << script;
        EXPECT_EQ(script, read_text(golden)) << name;
        ++n;
    }
    EXPECT_GE(n, 4);
}

TEST(Sbatch, QuotingIsReadBackLiterallyByBash) {
    // What bash makes of the quoted words is the original string, whatever it holds.
    for (std::string s : {std::string("plain"), std::string("a b"), std::string("$(touch /tmp/tpx-pwned)"), std::string("`id`;x"),
                          std::string("q\"uote'd \\ back")}) {
        auto r = run_process("printf '%s' " + slurm_quote(s, "test"));
        EXPECT_EQ(r.out, s);
    }
    EXPECT_FALSE(fs::exists("/tmp/tpx-pwned"));
    EXPECT_THROW(slurm_quote("two\nlines", "job.name"), Error);
}

// The job the script carries comes out of bash as written, whatever it holds (its own end
// marker, $(...), backquotes, backslashes, no last newline), under the job id's name.
TEST(Sbatch, TheJobInTheScriptIsWrittenBackLiterally) {
    const std::string dir = temp_dir() + "/runs $x";
    fs::create_directories(dir);
    Job job = parse_job("[job]\nname = \"j\"\n[model]\npath = \"models/tiny\"\n", "j.toml", TPX_SOURCE_DIR);
    const std::string text = "a = \"$(touch /tmp/tpx-pwned)\"\nTPX_JOB_END\nb = '`id` \\ \"q\"'\nTPX_JOB_END_\nlast";
    const std::string script = sbatch_script(job, {"/opt/tpx/bin/tpx-worker", dir}, text, false);
    const std::string head = script.substr(0, script.find("\nexec ") + 1);  // up to the launch
    std::ofstream(dir + "/head.sh") << head;
    auto r = run_process("SLURM_JOB_ID=77 bash " + slurm_quote(dir + "/head.sh", "test"));
    EXPECT_EQ(r.exit_code, 0) << r.err << head;
    EXPECT_EQ(read_text(dir + "/j-77.tpx.toml"), text + "\n");
    EXPECT_FALSE(fs::exists("/tmp/tpx-pwned"));
    fs::remove_all(fs::path(dir).parent_path());
}

// A served job's api_key: its copy is a new file of its owner's alone (0600 whatever the umask,
// never written through what was at its name).
TEST(Sbatch, AJobWithAnApiKeyIsCopiedForItsOwnerOnly) {
    const std::string dir = temp_dir();
    Job job = parse_job("[job]\nname = \"j\"\n[model]\npath = \"models/tiny\"\n[serve]\napi_key = \"sk-1\"\n", "j.toml", TPX_SOURCE_DIR);
    const std::string script = sbatch_script(job, {"/opt/tpx/bin/tpx-worker", dir}, "k = 1\n", false);
    std::ofstream(dir + "/head.sh") << script.substr(0, script.find("\nexec ") + 1) << "umask > " << slurm_quote(dir + "/umask", "test") << "\n";
    std::ofstream(dir + "/other") << "";
    fs::permissions(dir + "/other", fs::perms::all);
    fs::create_symlink(dir + "/other", dir + "/j-5.tpx.toml");  // planted at the predictable name
    auto r = run_process("umask 022 && SLURM_JOB_ID=5 bash " + slurm_quote(dir + "/head.sh", "test"));
    EXPECT_EQ(r.exit_code, 0) << r.err << script;
    EXPECT_FALSE(fs::is_symlink(dir + "/j-5.tpx.toml"));
    EXPECT_EQ(read_text(dir + "/j-5.tpx.toml"), "k = 1\n");
    EXPECT_EQ(read_text(dir + "/other"), "");
    EXPECT_EQ(fs::status(dir + "/j-5.tpx.toml").permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
    EXPECT_EQ(read_text(dir + "/umask"), "0022\n") << "the ranks' outputs keep the usual umask";
    fs::remove_all(dir);
}

// A served job's script is its owner's alone when sbatch reads it (a fake sbatch records its mode,
// then refuses it), and the refusal puts an older script back as it was, mode included.
TEST(Sbatch, AKeyedScriptIsTheOwnersAloneAndARefusalRestoresTheOldOne) {
    const std::string dir = temp_dir();
    fs::create_directories(dir + "/bin");
    std::ofstream(dir + "/bin/sbatch") << "#!/bin/bash\nfor a; do last=$a; done\nstat -c %a \"$last\" > " << slurm_quote(dir + "/mode", "test")
                                       << "\necho 'sbatch: error: refused here' >&2\nexit 1\n";
    fs::permissions(dir + "/bin/sbatch", fs::perms::owner_all);
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << TPX_SOURCE_DIR << "/models/tiny\"\n[serve]\napi_key = \"sk-1\"\n";
    std::ofstream(dir + "/job.sbatch") << "#!/bin/bash\n# the queued job's\n";
    const fs::perms old_mode = fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read;
    fs::permissions(dir + "/job.sbatch", old_mode);
    auto r = run_process("umask 022 && PATH=" + slurm_quote(dir + "/bin", "test") + ":$PATH " + tpx_bin("tpx") + " submit " +
                         slurm_quote(dir + "/job.toml", "test"));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("refused here"), std::string::npos) << r.err;
    EXPECT_EQ(read_text(dir + "/mode"), "600\n");
    EXPECT_EQ(read_text(dir + "/job.sbatch"), "#!/bin/bash\n# the queued job's\n");
    EXPECT_EQ(fs::status(dir + "/job.sbatch").permissions() & fs::perms::all, old_mode);
    fs::remove_all(dir);
}

// Hosts named for tpx run's mpirun would do nothing under Slurm: refused by name.
TEST(Sbatch, HostsNamedForMpirunAreRefused) {
    const std::string dir = temp_dir();
    std::ofstream(dir + "/hosts.txt") << "h1 slots=1\nh2 slots=1\n";
    std::ofstream(dir + "/p.jsonl") << "{\"id\": \"a\", \"input_ids\": [1, 2]}\n";
    for (const std::string& launch : {std::string("hosts = [\"h1:1\", \"h2:1\"]"), std::string("hostfile = \"hosts.txt\"")}) {
        std::ofstream(dir + "/j.toml", std::ios::trunc) << "[model]\npath = \"" << TPX_SOURCE_DIR << "/models/tiny\"\n[parallel]\ntp = 2\n"
                                                        << "nodes = 2\n[run]\nprompts = \"p.jsonl\"\n[launch]\n" << launch << "\n";
        auto r = run_process(tpx_bin("tpx") + " submit " + dir + "/j.toml --dry-run");
        EXPECT_EQ(r.exit_code, 2) << r.err;
        EXPECT_NE(r.err.find("launch." + launch.substr(0, launch.find(' ')) + " names hosts for tpx run's mpirun"), std::string::npos) << r.err;
    }
    fs::remove_all(dir);
}

// run.output on a device: the script, the logs and the job's copy go to the job file's folder
// (they went beside /dev/null: /dev/NAME.sbatch, /dev/NAME-%j.out).
TEST(Sbatch, FilesOfAJobWritingToADeviceGoBesideTheJobFile) {
    const std::string dir = temp_dir();
    std::ofstream(dir + "/p.jsonl") << "{\"id\": \"a\", \"input_ids\": [1, 2]}\n";
    std::ofstream(dir + "/j.toml") << "[job]\nname = \"dev\"\n[model]\npath = \"" << TPX_SOURCE_DIR << "/models/tiny\"\n[run]\n"
                                   << "prompts = \"p.jsonl\"\noutput = \"/dev/null\"\n";
    auto r = run_process(tpx_bin("tpx") + " submit " + dir + "/j.toml --dry-run");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("#SBATCH --output=\"" + dir + "/dev-%j.out\""), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("job=\"" + dir + "/dev-\""), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("\"/dev/dev"), std::string::npos) << r.out;
    fs::remove_all(dir);
}

namespace {

class SlurmCluster : public testing::Test {
public:
    static void SetUpTestSuite() {
        dir_ = temp_dir();
        auto r = run_process(std::string(TPX_SOURCE_DIR) + "/scripts/slurm_cluster.sh up " + dir_);
        if (r.exit_code != 0) {
            skip_ = "Slurm could not be started here: " + r.err;
            return;
        }
        setenv("SLURM_CONF", (dir_ + "/slurm.conf").c_str(), 1);
    }
    static void TearDownTestSuite() {
        if (skip_.empty()) run_process(std::string(TPX_SOURCE_DIR) + "/scripts/slurm_cluster.sh down " + dir_);
    }

protected:
    void SetUp() override {
        if (!skip_.empty()) GTEST_SKIP() << skip_;
    }

    // A job folder holding prompts and a job over `model` (golden name or a path).
    std::string make_job(const std::string& dir, const std::string& model, const std::string& extra, int max_new = 8) {
        fs::create_directories(dir);
        write_golden_prompts(dir);
        std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << model << "\"\n[parallel]\ntp = 2\n[run]\nprompts = \"prompts.jsonl\"\n"
                                         << "max_new_tokens = " << max_new << "\noutput = \"out.jsonl\"\n" << extra;
        return dir + "/job.toml";
    }

    std::string submit(const std::string& job, const std::string& env = "") {
        auto r = run_process(env + " " + tpx_bin("tpx") + " submit " + shell(job));
        EXPECT_EQ(r.exit_code, 0) << r.err;
        std::string id = r.out.substr(0, r.out.find('\n'));
        EXPECT_FALSE(id.empty()) << r.err;
        return id;
    }

    // Polls tpx status until the state is one of `states` (or the timeout); returns the line.
    std::string wait_for(const std::string& id, std::vector<std::string> states, double timeout_s = 120) {
        if (id.empty()) return "(no job id)";
        auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
        std::string line;
        while (std::chrono::steady_clock::now() < deadline) {
            line = run_process(tpx_bin("tpx") + " status " + id).out;
            for (const std::string& s : states)
                if (line.find(": " + s + " ") != std::string::npos) return line;
            std::this_thread::sleep_for(std::chrono::milliseconds(250));
        }
        return line;
    }

    static std::string shell(const std::string& s) { return slurm_quote(s, "path"); }

    static std::string dir_, skip_;
};

std::string SlurmCluster::dir_, SlurmCluster::skip_;

}  // namespace

TEST_F(SlurmCluster, TinyJobWithSrunAndWithMpirunGivesTheGoldenTokens) {
    for (const char* launcher : {"srun", "mpirun"}) {
        std::string dir = temp_dir() + "/" + launcher;
        std::string job = make_job(dir, kGolden + "/llama-gqa", std::string("[slurm]\nlauncher = \"") + launcher + "\"\ntime = \"5\"\n");
        std::string id = submit(job);
        std::string status = wait_for(id, {"completed", "failed", "cancelled"});
        ASSERT_NE(status.find(": completed (COMPLETED), exit code 0:0"), std::string::npos)
            << launcher << ": " << status << run_process(tpx_bin("tpx") + " logs " + id).err;
        expect_golden_tokens(dir + "/out.jsonl");
        auto logs = run_process(tpx_bin("tpx") + " logs " + id);
        EXPECT_NE(logs.out.find("rank  host"), std::string::npos) << "the per-rank table is in the job's output";
        EXPECT_TRUE(fs::exists(dir + "/job.sbatch")) << "the script is written beside the output";
        EXPECT_TRUE(fs::exists(dir + "/job-" + id + ".tpx.toml")) << "the job the ranks read, named by the Slurm job";
    }
}

TEST_F(SlurmCluster, HostileNameAndPathsStayLiteral) {
    std::string dir = temp_dir() + "/runs $(touch /tmp/tpx-pwned-slurm); x";
    std::string name = "tiny \"q\" $(touch /tmp/tpx-pwned-slurm) `id`; & 'x' \\ end";
    std::string job = make_job(dir, kGolden + "/llama-gqa", "[job]\nname = \'\'\'" + name + "\'\'\'\n");
    std::string id = submit(job);
    std::string status = wait_for(id, {"completed", "failed", "cancelled"});
    EXPECT_NE(status.find(": completed"), std::string::npos) << status;
    auto show = run_process("scontrol show job " + id);
    EXPECT_NE(show.out.find("JobName=" + name + "\n"), std::string::npos) << show.out;
    expect_golden_tokens(dir + "/out.jsonl");
    EXPECT_FALSE(fs::exists("/tmp/tpx-pwned-slurm")) << "a $(...) in the name or a path was run";
}

TEST_F(SlurmCluster, CancelLeavesTheJobCancelledAndNoWorkerBehind) {
    std::string dir = temp_dir() + "/cancel";
    std::string job = make_job(dir, kGolden + "/llama-gqa", "", 200);
    std::string id = submit(job, "TPX_STEP_DELAY_MS=300");
    std::string running = wait_for(id, {"running"}, 60);
    ASSERT_NE(running.find(": running"), std::string::npos) << running;
    for (int i = 0; i < 100 && pids_matching(dir).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::this_thread::sleep_for(std::chrono::seconds(1));
    auto r = run_process(tpx_bin("tpx") + " cancel " + id);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find(": cancelled (CANCELLED)"), std::string::npos) << r.out;
    for (int i = 0; i < 100 && !pids_matching(dir).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(pids_matching(dir).empty()) << "tpx-worker processes left after cancel";
    EXPECT_FALSE(fs::exists(dir + "/out.jsonl"));
}

TEST_F(SlurmCluster, MissingCheckpointEndsFailedWithTheRanksMessage) {
    std::string dir = temp_dir() + "/missing";
    fs::create_directories(dir + "/model");
    fs::copy(kGolden + "/llama-gqa/config.json", dir + "/model/config.json");  // config, but no weights
    std::string job = make_job(dir, dir + "/model", "");
    std::string id = submit(job);
    std::string status = wait_for(id, {"completed", "failed", "cancelled"});
    EXPECT_NE(status.find(": failed (FAILED)"), std::string::npos) << status;
    auto logs = run_process(tpx_bin("tpx") + " logs " + id);
    std::string all = logs.out + logs.err;
    EXPECT_NE(all.find("rank "), std::string::npos) << all;
    EXPECT_NE(all.find("neither model.safetensors nor model.safetensors.index.json is here"), std::string::npos) << all;
}

TEST_F(SlurmCluster, RefusalsCarrySlurmsOwnMessage) {
    std::string dir = temp_dir() + "/refused";
    std::string job = make_job(dir, kGolden + "/llama-gqa", "[slurm]\npartition = \"nosuch\"\n");
    auto r = run_process(tpx_bin("tpx") + " submit " + shell(job));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("sbatch refused the job: sbatch: error: invalid partition specified: nosuch"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir + "/job.sbatch")) << "a refused job left its script";
    // An earlier script (a job still queued may be named by it) is put back after a refusal.
    std::ofstream(dir + "/job.sbatch") << "#!/bin/bash\n# the queued job's\n";
    r = run_process(tpx_bin("tpx") + " submit " + shell(job));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_EQ(read_text(dir + "/job.sbatch"), "#!/bin/bash\n# the queued job's\n");
    EXPECT_TRUE(fs::exists(dir + "/job.toml"));
    auto status = run_process(tpx_bin("tpx") + " status 999999");
    EXPECT_NE(status.exit_code, 0);
    EXPECT_NE(status.err.find("Invalid job id specified"), std::string::npos) << status.err;
    auto no_sbatch = run_process("PATH=/nonexistent " + tpx_bin("tpx") + " submit " + shell(make_job(temp_dir() + "/p", kGolden + "/llama-gqa", "")));
    EXPECT_NE(no_sbatch.exit_code, 0);
    EXPECT_NE(no_sbatch.err.find("sbatch: command not found"), std::string::npos) << no_sbatch.err;
}
