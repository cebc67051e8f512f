// Job files: every example validates, the example round-trips, and each malformed job in
// tests/data/jobs/bad is rejected by `tpx validate` with exit code 2 and the message (with
// file:line:col) written on its first line as "# expect: ...".
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "common/error.h"
#include "common/path.h"
#include "jobs/emit.h"
#include "jobs/hostfile.h"
#include "jobs/parse.h"
#include "process.h"

namespace fs = std::filesystem;
using tpx_test::run_process;
using tpx_test::tpx_bin;

namespace {

const std::string kData = TPX_TEST_DATA;
const std::string kSource = TPX_SOURCE_DIR;

std::string expectation(const fs::path& file) {
    fs::path side = file.string() + ".expect";
    std::string text = tpx_test::read_text(fs::exists(side) ? side.string() : file.string());
    const std::string tag = "# expect: ";
    if (text.rfind(tag, 0) == 0) text = text.substr(tag.size());
    return text.substr(0, text.find('\n'));
}

}  // namespace

TEST(Jobs, ExamplesValidate) {
    int n = 0;
    for (const auto& e : fs::directory_iterator(kSource + "/jobs/examples")) {
        if (e.path().extension() != ".toml") continue;
        ++n;
        auto r = run_process(tpx_bin("tpx") + " validate " + e.path().string());
        EXPECT_EQ(r.exit_code, 0) << e.path() << "\n" << r.err;
        EXPECT_NE(r.out.find("[parallel]"), std::string::npos) << r.out;
    }
    EXPECT_GE(n, 3);
}

TEST(Jobs, ExampleRoundTripsThroughValidate) {
    auto example = run_process(tpx_bin("tpx") + " example");
    ASSERT_EQ(example.exit_code, 0) << example.err;
    auto first = run_process(tpx_bin("tpx") + " validate /dev/stdin", example.out);
    ASSERT_EQ(first.exit_code, 0) << first.err;
    // The resolved job is itself a valid job, and resolving it again changes nothing.
    auto second = run_process(tpx_bin("tpx") + " validate /dev/stdin", first.out);
    ASSERT_EQ(second.exit_code, 0) << second.err;
    EXPECT_EQ(first.out, second.out);
    // The example documents every key that validate prints.
    std::istringstream lines(first.out);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.empty() || line[0] == '[') continue;
        std::string key = line.substr(0, line.find(' '));
        EXPECT_NE(example.out.find("\n" + key + " = "), std::string::npos) << "example lacks key " << key;
    }
}

// Strings come back as written through emit_job_toml (the workers of a piped job and a
// submitted job read the emitted copy): a leading newline, quotes, backslashes, control characters.
TEST(Jobs, StringsRoundTripThroughTheEmittedJob) {
    const std::vector<std::string> stops = {"\n remain", "\n",      "a\"b\\c", "tab\there\r\n", std::string("nul\x01\x1f\x7f\0", 7),
                                            "'''x'''",   "\"\"\""};
    tpx::Job job = tpx::parse_job("[model]\npath = \"models/tiny\"\n", "s.toml", kSource);
    job.name = "\nlead";
    job.run.stop = stops;
    tpx::Job again = tpx::parse_job(tpx::emit_job_toml(job, tpx::Secrets::kWritten), "s.toml", kSource);
    EXPECT_EQ(again.name, "\nlead");
    EXPECT_EQ(again.run.stop, stops);
    EXPECT_EQ(tpx::emit_job_toml(again, tpx::Secrets::kWritten), tpx::emit_job_toml(job, tpx::Secrets::kWritten));
}

TEST(Jobs, DefaultsAreFilledAndPathsResolved) {
    std::string dir = kSource + "/jobs/examples";
    tpx::Job job = tpx::parse_job("[model]\npath = \"../../models/tiny\"\n[parallel]\ntp = 4\nnodes = 2\n",
                                  "inline.toml", dir);
    EXPECT_EQ(job.name, "inline");
    EXPECT_EQ(job.parallel.ranks_per_node, 2);
    EXPECT_EQ(job.parallel.ep, 1);
    EXPECT_TRUE(fs::equivalent(job.model.path, kSource + "/models/tiny")) << job.model.path;
    EXPECT_EQ(job.run.output, tpx::absolute_path(dir + "/inline.out.jsonl"));
    EXPECT_EQ(job.slurm.nodes, 2);
    EXPECT_EQ(job.slurm.gpus_per_node, 0);  // cpu backend asks for no GPUs
    EXPECT_EQ(job.run.sampling.temperature, 0.0);
    EXPECT_EQ(job.launch.mpirun, "mpirun");  // a bare name stays, for PATH
    // A path in launch.mpirun is the job folder's, as every other path.
    tpx::Job own = tpx::parse_job("[model]\npath = \"../../models/tiny\"\n[launch]\nmpirun = \"./mp.sh\"\n", "m.toml", dir);
    EXPECT_EQ(own.launch.mpirun, tpx::absolute_path(dir + "/mp.sh"));
}

// [run.sampling]'s penalties: read, round-tripped, and refused out of range naming the key.
TEST(Jobs, SamplingPenaltiesAreReadAndChecked) {
    tpx::Job job = tpx::parse_job("[model]\npath = \"models/tiny\"\n[run.sampling]\npresence_penalty = -0.5\nfrequency_penalty = 2\n"
                                  "repetition_penalty = 1.25\n",
                                  "p.toml", kSource);
    const tpx::SamplingSection& s = job.run.sampling;
    EXPECT_EQ(s.presence_penalty, -0.5);
    EXPECT_EQ(s.frequency_penalty, 2.0);
    EXPECT_EQ(s.repetition_penalty, 1.25);
    tpx::Job again = tpx::parse_job(tpx::emit_job_toml(job, tpx::Secrets::kWritten), "p.toml", kSource);
    EXPECT_EQ(again.run.sampling.repetition_penalty, 1.25);
    EXPECT_EQ(again.run.sampling.presence_penalty, -0.5);
    EXPECT_EQ(again.run.sampling.frequency_penalty, 2.0);
    for (const char* bad : {"presence_penalty = 2.5", "frequency_penalty = -3", "repetition_penalty = 0", "repetition_penalty = \"high\"",
                            "presence_penalty = 2.0000001"}) {
        try {
            tpx::parse_job(std::string("[model]\npath = \"models/tiny\"\n[run.sampling]\n") + bad + "\n", "p.toml", kSource);
            ADD_FAILURE() << bad << " was taken";
        } catch (const tpx::JobError& e) {
            const std::string key = std::string(bad).substr(0, std::string(bad).find(' '));
            EXPECT_NE(std::string(e.what()).find("run.sampling." + key), std::string::npos) << e.what();
            if (std::string(bad).find("2.0000001") != std::string::npos) {  // not rounded to 2
                EXPECT_NE(std::string(e.what()).find("= 2.0000001 is out of range"), std::string::npos) << e.what();
            }
        }
    }
}

// [backend.tuning]: absent keys keep tpx's choices, given ones are read, and the emitted job
// parses back to the same settings.
TEST(Jobs, KernelTuningIsReadAndRoundTrips) {
    tpx::Job defaults = tpx::parse_job("[model]\npath = \"models/tiny\"\n", "d.toml", kSource);
    const tpx::KernelConfig k0;
    EXPECT_EQ(tpx::format_kernel_config(defaults.backend.tuning), tpx::format_kernel_config(k0));
    tpx::Job job = tpx::parse_job(
        "[model]\npath = \"models/tiny\"\n[backend]\ndevice = \"cuda\"\n[backend.tuning]\npdl = false\ngemv_splitk = 2\n"
        "decode_splits = 8\nflash_tile = \"1x64\"\nflash_short_max = 0\nmoe = \"dense\"\nfused_all_reduce = false\n",
        "t.toml", kSource);
    const tpx::KernelConfig& k = job.backend.tuning;
    EXPECT_FALSE(k.pdl);
    EXPECT_EQ(k.gemv_splitk, 2);
    EXPECT_EQ(k.decode_splits, 8);
    EXPECT_EQ(k.flash_tile, "1x64");
    EXPECT_EQ(k.flash_short_max, 0);
    EXPECT_EQ(k.moe, "dense");
    EXPECT_FALSE(k.fused_all_reduce);
    EXPECT_TRUE(k.gemv_early);  // not given: the default
    tpx::Job again = tpx::parse_job(tpx::emit_job_toml(job, tpx::Secrets::kWritten), "t.toml", kSource);
    EXPECT_EQ(tpx::format_kernel_config(again.backend.tuning), tpx::format_kernel_config(k));
}

// [bench]: its lists and counts are read in the user's order, and the emitted job reads back
// to the same; absent, the defaults (prompts of 128 and 2048 tokens, batches 1, 8 and 64).
TEST(Jobs, BenchTableIsReadAndRoundTrips) {
    tpx::Job defaults = tpx::parse_job("[model]\npath = \"models/tiny\"\n", "d.toml", kSource);
    EXPECT_EQ(defaults.bench.prompt_lengths, (std::vector<int64_t>{128, 2048}));
    EXPECT_EQ(defaults.bench.batch_sizes, (std::vector<int64_t>{1, 8, 64}));
    tpx::Job job = tpx::parse_job("[model]\npath = \"models/tiny\"\n[bench]\nprompt_lengths = []\nbatch_sizes = [32, 16]\n"
                                  "decode_prompt_length = 512\ndecode_warmup = 0\ndecode_steps = 7\n",
                                  "b.toml", kSource);
    EXPECT_TRUE(job.bench.prompt_lengths.empty());
    EXPECT_EQ(job.bench.batch_sizes, (std::vector<int64_t>{32, 16}));
    EXPECT_EQ(job.bench.decode_prompt_length, 512);
    EXPECT_EQ(job.bench.decode_warmup, 0);
    EXPECT_EQ(job.bench.decode_steps, 7);
    tpx::Job again = tpx::parse_job(tpx::emit_job_toml(job, tpx::Secrets::kWritten), "b.toml", kSource);
    EXPECT_EQ(again.bench.prompt_lengths, job.bench.prompt_lengths);
    EXPECT_EQ(again.bench.batch_sizes, job.bench.batch_sizes);
    EXPECT_EQ(tpx::emit_job_toml(again, tpx::Secrets::kWritten), tpx::emit_job_toml(job, tpx::Secrets::kWritten));
}

TEST(Jobs, TransformOptionsKeepTheirPositions) {
    tpx::Job job = tpx::parse_job(
        "[model]\npath = \"models/tiny\"\n[transforms.fuse_qkv]\nenabled = false\n[transforms.load_weights]\n"
        "checkpoint_device = \"cpu\"\n",
        "t.toml", kSource);
    ASSERT_EQ(job.transforms.size(), 2u);
    EXPECT_EQ(job.transforms[0].name, "fuse_qkv");
    EXPECT_EQ(std::get<bool>(job.transforms[0].options.at("enabled").value), false);
    EXPECT_EQ(job.transforms[1].options.at("checkpoint_device").line, 6);
}

TEST(Jobs, MalformedJobsAreRejectedWithKeyAndLine) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(kData + "/jobs/bad"))
        if (e.path().extension() == ".toml") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    ASSERT_GE(files.size(), 15u);
    for (const fs::path& file : files) {
        std::string expected = expectation(file);
        ASSERT_FALSE(expected.empty()) << file << " has no '# expect:' line";
        // Run from the file's folder so that the message's file name is as written.
        auto r = run_process("cd " + file.parent_path().string() + " && " + tpx_bin("tpx") + " validate " +
                             file.filename().string());
        EXPECT_EQ(r.exit_code, 2) << file << "\n" << r.err;
        EXPECT_NE(r.err.find(expected), std::string::npos) << file << "\nexpected: " << expected << "\ngot: " << r.err;
        EXPECT_TRUE(r.out.empty()) << file << " printed a job although it is invalid";
        // One message, not a stack of errors.
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    }
}

TEST(Jobs, UsageErrorsExitTwo) {
    EXPECT_EQ(run_process(tpx_bin("tpx") + " validate").exit_code, 2);
    EXPECT_EQ(run_process(tpx_bin("tpx") + " validate a.toml b.toml").exit_code, 2);
    EXPECT_EQ(run_process(tpx_bin("tpx") + " frobnicate").exit_code, 2);
    EXPECT_EQ(run_process(tpx_bin("tpx") + " validate /no/such/job.toml").exit_code, 2);
    const std::string job = kSource + "/jobs/examples/tiny.toml";
    for (const std::string& args : {" run " + job + " --dump-logits '' --dry-run", " bench " + job + " --json ''"}) {
        auto r = run_process(tpx_bin("tpx") + args);
        EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
        EXPECT_NE(r.err.find("needs a file name"), std::string::npos) << r.err;
    }
    auto help = run_process(tpx_bin("tpx") + " validate --help");
    EXPECT_EQ(help.exit_code, 0);
    EXPECT_NE(help.out.find("usage: tpx validate JOB"), std::string::npos);
}

// /dev/stdin is a stream whether a pipe or a redirected file feeds it: relative paths resolve
// against the current folder.
TEST(Jobs, AJobOnStdinResolvesAgainstTheCurrentFolder) {
    const std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/p.jsonl") << "{\"input_ids\": [1, 2]}\n";
    std::ofstream(dir + "/j.toml") << "[model]\npath = \"" << kSource << "/models/tiny\"\n[run]\nprompts = \"p.jsonl\"\n";
    auto r = run_process("cd " + dir + " && " + tpx_bin("tpx") + " validate /dev/stdin < j.toml");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("prompts = \"" + dir + "/p.jsonl\""), std::string::npos) << r.out;
    // The ranks get a resolved copy: in the temporary folder for one node; for several beside the
    // output, where the other hosts can read it (they were handed this host's /tmp).
    auto one = run_process("cd " + dir + " && " + tpx_bin("tpx") + " run /dev/stdin --dry-run < j.toml");
    EXPECT_EQ(one.exit_code, 0) << one.err;
    const size_t job_at = one.out.find("--job " + fs::temp_directory_path().string() + "/");
    ASSERT_NE(job_at, std::string::npos) << one.out;
    fs::remove(one.out.substr(job_at + 6, one.out.find(' ', job_at + 6) - job_at - 6));  // --dry-run keeps it for the command
    std::ofstream(dir + "/j.toml", std::ios::app) << "[parallel]\ntp = 2\nnodes = 2\nranks_per_node = 1\n[launch]\nhosts = [\"h1\", \"h2\"]\n";
    auto two = run_process("cd " + dir + " && " + tpx_bin("tpx") + " run /dev/stdin --dry-run < j.toml");
    EXPECT_EQ(two.exit_code, 0) << two.err;
    EXPECT_NE(two.out.find("--job " + dir + "/"), std::string::npos) << two.out;
    fs::remove_all(dir);
}

// tpx validate withholds the api_key (a key the parser refuses says one is set); the ranks' copy of a piped job
// that carries one is its owner's alone whatever the umask.
TEST(Jobs, AnApiKeyIsNotPrintedAndItsCopyIsTheOwnersAlone) {
    const std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/j.toml") << "[model]\npath = \"" << kSource << "/models/tiny\"\n[serve]\napi_key = \"sk-secret-42\"\n";
    auto v = run_process(tpx_bin("tpx") + " validate " + dir + "/j.toml");
    EXPECT_EQ(v.exit_code, 0) << v.err;
    EXPECT_EQ(v.out.find("sk-secret-42"), std::string::npos) << v.out;
    EXPECT_NE(v.out.find("api_key_withheld = \"set, 12 characters, not printed: write it as api_key\""), std::string::npos) << v.out;
    try {  // never a job that serves without its key
        tpx::parse_job(v.out, "v.toml", kSource);
        ADD_FAILURE() << "validate's output with a withheld key was taken as a job";
    } catch (const tpx::JobError& e) {
        EXPECT_NE(std::string(e.what()).find("unknown key 'api_key_withheld' in [serve]"), std::string::npos) << e.what();
    }
    fs::create_directories(dir + "/tmp");  // the copy goes to the temporary folder: this one, removed with dir
    auto r = run_process("cd " + dir + " && umask 022 && TMPDIR=" + dir + "/tmp " + tpx_bin("tpx") + " serve /dev/stdin --dry-run < j.toml");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    int copies = 0;
    for (const auto& e : fs::directory_iterator(dir + "/tmp")) {
        ++copies;
        EXPECT_EQ(e.status().permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write) << e.path();
        EXPECT_NE(tpx_test::read_text(e.path().string()).find("api_key = \"sk-secret-42\""), std::string::npos);
    }
    EXPECT_EQ(copies, 1) << r.out;
    // Under a new name each time, which nothing can have been planted at beforehand.
    auto again = run_process("cd " + dir + " && TMPDIR=" + dir + "/tmp " + tpx_bin("tpx") + " serve /dev/stdin --dry-run < j.toml");
    EXPECT_EQ(again.exit_code, 0) << again.err;
    EXPECT_EQ(std::distance(fs::directory_iterator(dir + "/tmp"), fs::directory_iterator()), 2);
    fs::remove_all(dir);
}

// A pipeline with a transform the plan needs turned off names that transform.
TEST(Jobs, APlanWithoutShardingNamesTheTransformTurnedOff) {
    const std::string dir = tpx_test::temp_dir();
    for (const char* name : {"build_model", "detect_sharding"}) {
        std::ofstream(dir + "/j.toml", std::ios::trunc) << "[model]\npath = \"" << kSource << "/models/tiny\"\n[transforms." << name
                                                        << "]\nenabled = false\n";
        auto r = run_process(tpx_bin("tpx") + " validate " + dir + "/j.toml");
        EXPECT_EQ(r.exit_code, 2) << r.err;
        EXPECT_NE(r.err.find(std::string("no weight was sharded, so there is no plan to make (turned off: ") + name + ")"), std::string::npos)
            << r.err;
    }
    fs::remove_all(dir);
}

// Default output names: readable characters of any script stay; distinct job names never share
// a file (a name that lost or changed a character ends in a hash of the whole name).
TEST(Jobs, DefaultOutputNamesAreReadableAndDistinct) {
    EXPECT_EQ(tpx::file_safe("tiny"), "tiny");
    EXPECT_EQ(tpx::file_safe("ジョブ"), "ジョブ");
    EXPECT_NE(tpx::file_safe("ジョブ"), tpx::file_safe("テスト"));
    std::set<std::string> names = {tpx::file_safe("a b"), tpx::file_safe("a/b"), tpx::file_safe("a_b"), tpx::file_safe("a\\b")};
    EXPECT_EQ(names.size(), 4u);
    EXPECT_EQ(tpx::file_safe("a_b"), "a_b");
    EXPECT_EQ(tpx::file_safe("a b").rfind("a_b-", 0), 0u) << tpx::file_safe("a b");
    EXPECT_EQ(tpx::file_safe("..").find('/'), std::string::npos);
    EXPECT_NE(tpx::file_safe(".."), "..");
    std::string long_name = tpx::file_safe(std::string(300, 'x'));
    EXPECT_LE(long_name.size(), 120u);
    EXPECT_NE(long_name, tpx::file_safe(std::string(301, 'x')));
}

// A hostfile as Open MPI 4.1's mpirun reads it (each count as its --display-allocation gives
// it): comments, "slots = N" spaced, a repeated line a slot more, max_slots raised by slots or
// standing in for them, keys tpx does not read left to mpirun; and what mpirun refuses.
TEST(Jobs, AHostfileIsReadAsMpirunReadsIt) {
    const std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/hosts") << "# the cluster\n\n  node-a slots = 4   # four GPUs\nnode-b max_slots=2 slots=8\nnode-c\n"
                                     "node-d user=me\nnode-a max-slots=6\nnode-e max_slots=3\nnode-f\nnode-f\n";
    const std::vector<tpx::HostfileHost> hosts = tpx::read_hostfile(dir + "/hosts");
    ASSERT_EQ(hosts.size(), 6u);
    EXPECT_EQ(hosts[0].name, "node-a");
    EXPECT_EQ(hosts[0].line, 3);
    EXPECT_EQ(hosts[0].slots, 5);   // 4, and one for its second line
    EXPECT_EQ(hosts[1].slots, 8);
    EXPECT_EQ(hosts[2].slots, -1);  // mpirun counts its cores
    EXPECT_EQ(hosts[3].slots, -1);
    EXPECT_EQ(hosts[4].slots, 3);
    EXPECT_EQ(hosts[5].slots, 2);   // a line a slot
    const std::pair<std::string, std::string> refused[] = {
        {"n\nn slots=4\n", "hosts:2: host n has its slots given twice"},
        {"n slots=4\nn max-slots=3\n", "hosts:2: host n: max_slots = 3 is less than its slots = 5"},
        {"n slots=x\n", "hosts:1: slots = \"x\" is not a number of slots"},
    };
    for (const auto& [text, message] : refused) {
        std::ofstream(dir + "/hosts") << text;
        try {
            tpx::read_hostfile(dir + "/hosts");
            ADD_FAILURE() << "accepted: " << text;
        } catch (const tpx::JobError& e) {
            EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
        }
    }
    EXPECT_THROW(tpx::read_hostfile(dir), tpx::JobError);  // a folder

    // Two nodes of 2 ranks fit node-a and node-b; the job file names the hostfile.
    std::ofstream(dir + "/hosts") << "node-a slots=2\nnode-b\n";
    std::ofstream(dir + "/j.toml") << "[model]\npath = \"" << kSource << "/models/tiny\"\n[parallel]\ntp = 4\nnodes = 2\n"
                                   << "[launch]\nhostfile = \"hosts\"\n";
    auto r = run_process(tpx_bin("tpx") + " validate " + dir + "/j.toml");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    // Three ranks a node do not fit node-b's two slots.
    std::ofstream(dir + "/hosts") << "node-b slots=2\nnode-a slots=4\n";
    std::ofstream(dir + "/j.toml") << "[model]\npath = \"" << kSource << "/models/tiny\"\n[parallel]\ntp = 6\nnodes = 2\n"
                                   << "[launch]\nhostfile = \"hosts\"\n";
    r = run_process(tpx_bin("tpx") + " validate " + dir + "/j.toml");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("j.toml:7:12: launch.hostfile " + dir + "/hosts:1: host node-b has 2 slots, fewer than the 3 ranks"),
              std::string::npos)
        << r.err;
    fs::remove_all(dir);
}

// What a command prints must reach standard output: a full disk is an error, not exit 0 with an
// empty file.
TEST(Jobs, AFailedWriteToStandardOutputIsAnError) {
    if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full here";
    for (const std::string& args : {std::string("example"), "validate " + kSource + "/jobs/examples/tiny.toml", std::string("--help")}) {
        auto r = run_process(tpx_bin("tpx") + " " + args + " > /dev/full");
        EXPECT_EQ(r.exit_code, 1) << args << ": " << r.err;
        EXPECT_NE(r.err.find("cannot write to standard output: "), std::string::npos) << args << ": " << r.err;
    }
}
