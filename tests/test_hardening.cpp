// Issue 24's rules, each checked by running the real commands: no output ever replaces an
// input or another output (refused before any rank starts, exit 2, naming both paths); FIFOs
// and devices written in place; outputs proven writable before launch; no process outlives
// `tpx run` (SIGKILL, SIGHUP); a job larger than memory refused with the numbers; seeded
// sampling independent of the batch, max_batch and tp; the job's numbers checked against the
// model (eos, max_seq_len); messages and exit codes a user can act on.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "process.h"

namespace fs = std::filesystem;
using tpx_test::run_process;
using tpx_test::tpx_bin;

namespace {

const std::string kTiny = std::string(TPX_SOURCE_DIR) + "/models/tiny";
const char* kPrompts = "{\"id\": \"a\", \"input_ids\": [1, 2, 3, 4]}\n{\"id\": \"b\", \"input_ids\": [5, 6, 7]}\n";

// A job in a fresh folder: the tiny model, `tp` ranks, prompts.jsonl, `run_extra` lines in
// [run] (max_new_tokens = 4 and output = "out.jsonl" unless given there), `head` before
// [model] and `tail` after [run] (e.g. [run.sampling]).
struct TestJob {
    std::string dir, file;
};
TestJob make_job(const std::string& run_extra = "", int tp = 2, const std::string& prompts = kPrompts, const std::string& head = "",
                 const std::string& tail = "") {
    TestJob j;
    j.dir = tpx_test::temp_dir();
    j.file = j.dir + "/job.toml";
    std::ofstream(j.dir + "/prompts.jsonl") << prompts;
    std::string run = run_extra;
    if (run.find("output") == std::string::npos) run += "\noutput = \"out.jsonl\"";
    if (run.find("max_new_tokens") == std::string::npos) run += "\nmax_new_tokens = 4";
    std::ofstream(j.file) << head << "[model]\npath = \"" << kTiny << "\"\n[parallel]\ntp = " << tp << "\n[run]\nprompts = \"prompts.jsonl\"\n"
                          << run << "\n" << tail;
    return j;
}

tpx_test::ProcessResult tpx(const std::string& args) { return run_process(tpx_bin("tpx") + " " + args); }

// Refused before any rank started: exit 2, the message holds each of `needles`, no rank map.
void expect_refused(const tpx_test::ProcessResult& r, const std::vector<std::string>& needles) {
    EXPECT_EQ(r.exit_code, 2) << r.err;
    for (const std::string& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "missing '" << n << "' in: " << r.err;
    EXPECT_EQ(r.err.find("rank map"), std::string::npos) << "ranks were started: " << r.err;
}

std::string file_bytes(const std::string& path) { return tpx_test::read_text(path); }

}  // namespace

TEST(Outputs, AnOutputThatIsAnInputIsRefusedAndTheInputKept) {
    // run.output naming the job file, the prompts file or a checkpoint file.
    std::string tiny_copy = tpx_test::temp_dir() + "/tiny";
    fs::copy(kTiny, tiny_copy, fs::copy_options::recursive);
    struct Case {
        std::string output, role;
    } cases[] = {{"job.toml", "the job file"}, {"prompts.jsonl", "run.prompts"}, {tiny_copy + "/model.safetensors", "a file of the checkpoint"}};
    for (const Case& c : cases) {
        TestJob j = make_job("output = \"" + c.output + "\"", 2, kPrompts, "");
        // The checkpoint case needs the job to read the copy.
        std::string text = file_bytes(j.file);
        size_t at = text.find(kTiny);
        text.replace(at, kTiny.size(), tiny_copy);
        std::ofstream(j.file) << text;
        std::string target = c.output[0] == '/' ? c.output : j.dir + "/" + c.output;
        std::string before = file_bytes(target);
        auto r = tpx("run " + j.file);
        expect_refused(r, {"run.output", c.role, "an output never replaces an input"});
        EXPECT_EQ(file_bytes(target), before) << c.output << " was changed";
        // validate says the same, before anything runs.
        expect_refused(tpx("validate " + j.file), {"run.output", c.role});
    }
    // A new file in the checkpoint's folder under a name its readers take (an index beside
    // model.safetensors made the folder ambiguous, and unreadable); other names may go there.
    // HF's readers' names too (the folder stays loadable by transformers).
    for (const char* name : {"model.safetensors.index.json", "model-00001-of-00002.safetensors", "tokenizer.json", "consolidated.00.pth",
                             "vocab.json", "merges.txt", "tokenizer.model", "pytorch_model-00001-of-00002.bin"}) {
        TestJob j = make_job(std::string("output = \"") + tiny_copy + "/" + name + "\"");
        std::string text = file_bytes(j.file);
        text.replace(text.find(kTiny), kTiny.size(), tiny_copy);
        std::ofstream(j.file) << text;
        expect_refused(tpx("run " + j.file), {"run.output", "would be read as a file of the checkpoint's folder", tiny_copy});
        EXPECT_FALSE(fs::exists(tiny_copy + "/" + name)) << name;
    }
}

// The tokenizer and the chat template a job names are inputs too.
TEST(Outputs, TheJobsTokenizerAndChatTemplateAreInputs) {
    const std::string text_model = std::string(TPX_SOURCE_DIR) + "/models/tiny-text";
    TestJob j = make_job();
    fs::create_directory(j.dir + "/tk");
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(text_model + "/" + f, j.dir + "/tk/" + f);
    std::ofstream(j.dir + "/t.jinja") << "{% for m in messages %}{{ m.content }}{% endfor %}";
    for (const auto& [output, role] : std::vector<std::pair<std::string, std::string>>{
             {"tk/tokenizer.json", "model.tokenizer"}, {"tk/tokenizer_config.json", "model.tokenizer"}, {"t.jinja", "run.chat_template"}}) {
        std::ofstream(j.file, std::ios::trunc) << "[model]\npath = \"" << text_model << "\"\ntokenizer = \"tk\"\n[parallel]\ntp = 1\n[run]\n"
                                               << "prompts = \"prompts.jsonl\"\nchat_template = \"t.jinja\"\noutput = \"" << output << "\"\n";
        const std::string before = file_bytes(j.dir + "/" + output);
        for (const char* cmd : {"validate ", "run "}) expect_refused(tpx(cmd + j.file), {"run.output", role, "an output never replaces an input"});
        EXPECT_EQ(file_bytes(j.dir + "/" + output), before) << output << " was changed";
    }
    // A tokenizer.json named alone reads tokenizer_config.json and special_tokens_map.json beside
    // it: those were overwritten (and the next run failed on them).
    for (const char* output : {"tk/tokenizer_config.json", "tk/special_tokens_map.json"}) {
        std::ofstream(j.file, std::ios::trunc) << "[model]\npath = \"" << text_model << "\"\ntokenizer = \"tk/tokenizer.json\"\n[parallel]\n"
                                               << "tp = 1\n[run]\nprompts = \"prompts.jsonl\"\noutput = \"" << output << "\"\n";
        const std::string before = fs::exists(j.dir + "/" + output) ? file_bytes(j.dir + "/" + output) : "(none)";
        expect_refused(tpx("run " + j.file), {"run.output", "would be read as a file of model.tokenizer's folder"});
        EXPECT_EQ(fs::exists(j.dir + "/" + output) ? file_bytes(j.dir + "/" + output) : "(none)", before) << output;
    }
}

// tpx's own programs are inputs too.
TEST(Outputs, TpxsOwnProgramsAreInputs) {
    for (const char* program : {"tpx-worker", "tpx"}) {
        TestJob j = make_job("output = \"" + tpx_bin(program) + "\"");
        expect_refused(tpx("validate " + j.file), {"run.output", std::string("the ") + program + " program", "an output never replaces an input"});
    }
    // So are the programs the job names by path (the mpirun script was overwritten by the results).
    for (const char* key : {"mpirun", "rsh_agent"}) {
        TestJob j = make_job("output = \"launcher.sh\"", 2, kPrompts, "", std::string("[launch]\n") + key + " = \"./launcher.sh\"\n");
        std::ofstream(j.dir + "/launcher.sh") << "#!/bin/sh\nexec mpirun \"$@\"\n";
        expect_refused(tpx("run " + j.file), {"run.output", std::string("launch.") + key, "an output never replaces an input"});
        EXPECT_EQ(file_bytes(j.dir + "/launcher.sh"), "#!/bin/sh\nexec mpirun \"$@\"\n");
    }
}

// The planner's DOT files never go over an input; [transforms.visualize] dir is the job
// folder's, as every path.
TEST(Outputs, GraphFilesNeverReplaceAnInput) {
    TestJob j = make_job("", 2, kPrompts, "", "[transforms.fuse_gate_up]\ndebug_visualize_dir = \".\"\n");
    std::string text = file_bytes(j.file);
    text.replace(text.find("prompts.jsonl"), 13, "03_fuse_gate_up.dot");
    std::ofstream(j.file, std::ios::trunc) << text;
    fs::rename(j.dir + "/prompts.jsonl", j.dir + "/03_fuse_gate_up.dot");
    const std::string before = file_bytes(j.dir + "/03_fuse_gate_up.dot");
    expect_refused(tpx("validate " + j.file), {"transforms.fuse_gate_up.debug_visualize_dir", "run.prompts", "an output never replaces an input"});
    EXPECT_EQ(file_bytes(j.dir + "/03_fuse_gate_up.dot"), before);
    TestJob v = make_job("", 2, kPrompts, "", "[transforms.visualize]\nenabled = true\ndir = \"graphs\"\n");
    auto r = run_process("cd / && " + tpx_bin("tpx") + " validate " + v.file);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("dir = \"" + v.dir + "/graphs\""), std::string::npos) << r.out;  // not /graphs
}

// An mpirun that exits 0 without starting the ranks is not a finished job.
TEST(Outputs, ARunThatWroteNoOutputFails) {
    TestJob j = make_job("", 2, kPrompts, "", "[launch]\nmpirun = \"true\"\n");
    auto r = tpx("run " + j.file);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("true exited 0, but no rank wrote run.output (" + j.dir + "/out.jsonl)"), std::string::npos) << r.err;
}

TEST(Outputs, TwoOutputsOfOneRunMayNotShareAFile) {
    TestJob j = make_job();
    expect_refused(tpx("run " + j.file + " --dump-logits " + j.dir + "/out.jsonl"), {"--dump-logits", "run.output", "its own file"});
    expect_refused(tpx("run " + j.file + " --dump-logits " + j.dir + "/./out.jsonl.ranks.json"), {"--dump-logits", "ranks table"});
    EXPECT_FALSE(fs::exists(j.dir + "/out.jsonl"));
    // Links whose chains end at one file that does not exist yet: the file each write would make.
    fs::create_symlink("shared", j.dir + "/logits.h5");
    fs::create_symlink("logits.h5", j.dir + "/chain.h5");
    fs::create_symlink("shared", j.dir + "/out.jsonl");
    expect_refused(tpx("run " + j.file + " --dump-logits " + j.dir + "/chain.h5"), {"--dump-logits", "run.output", "its own file"});
    fs::remove(j.dir + "/out.jsonl");
    fs::create_symlink("out.jsonl.ranks.json", j.dir + "/out.jsonl");  // the output onto its own ranks table
    expect_refused(tpx("run " + j.file), {"run.output", "ranks table"});
    EXPECT_FALSE(fs::exists(j.dir + "/shared"));
    EXPECT_FALSE(fs::exists(j.dir + "/out.jsonl.ranks.json"));
}

TEST(Outputs, FoldersUnwritablePlacesAndLongNamesAreRefusedBeforeLaunch) {
    TestJob j = make_job();
    fs::create_directory(j.dir + "/sub");
    expect_refused(tpx("run " + j.file + " --dump-logits " + j.dir + "/sub"), {"--dump-logits", "is a folder"});
    TestJob d = make_job("output = \"sub\"");
    fs::create_directory(d.dir + "/sub");
    expect_refused(tpx("run " + d.file), {"run.output", "is a folder"});
    // /proc takes no new files, even from root.
    TestJob u = make_job("output = \"/proc/tpx-test.out.jsonl\"");
    expect_refused(tpx("run " + u.file), {"run.output", "cannot write in /proc"});
    // A name for a file of the process that opens it is rank 0's there, not tpx's (/dev/stdin:
    // the results went to the rank's own input, and the run said "finished").
    for (const char* own : {"/dev/stdin", "/proc/self/fd/1", "/dev/fd/3"}) {
        TestJob s = make_job(std::string("output = \"") + own + "\"");
        expect_refused(tpx("run " + s.file), {"run.output", own, "names a file of the process that opens it"});
    }
    // ... also through links: to /dev/stdin, and among the folders to /proc/self.
    TestJob links = make_job("output = \"in\"");
    fs::create_symlink("/dev/stdin", links.dir + "/in");
    expect_refused(tpx("run " + links.file), {"run.output", "names a file of the process that opens it (/dev/stdin)"});
    TestJob me = make_job("output = \"me/fd/1\"");
    fs::create_symlink("/proc/self", me.dir + "/me");
    expect_refused(tpx("run " + me.file), {"run.output", "names a file of the process that opens it (/proc/"});
    // A 300-character job name: the default output name is cut and hashed, so the run works.
    TestJob n = make_job("output = \"\"", 1, kPrompts, "[job]\nname = \"" + std::string(300, 'x') + "\"\n");
    auto ok = tpx("run " + n.file);
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
    // ... and an output named that long is refused before launch.
    TestJob l = make_job("output = \"" + std::string(300, 'y') + ".jsonl\"");
    expect_refused(tpx("run " + l.file), {"run.output", "too long"});
}

TEST(Outputs, DevicesAndFifosAreWrittenInPlace) {
    TestJob j = make_job("output = \"/dev/null\"");
    auto r = tpx("run " + j.file + " --dump-logits /dev/null");
    // Two outputs on one device are fine: nothing is replaced.
    EXPECT_EQ(r.exit_code, 0) << r.err;
    struct stat st;
    ASSERT_EQ(stat("/dev/null", &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode)) << "/dev/null was replaced";
    EXPECT_FALSE(fs::exists("/dev/null.ranks.json"));

    // Standard output redirected to a file: the results alone there (the report goes to standard
    // error), and nothing made in /dev (it was treated as a file: a temporary file beside it).
    TestJob o = make_job("output = \"/dev/stdout\"");
    auto so = run_process(tpx_bin("tpx") + " run " + o.file + " > " + o.dir + "/captured.jsonl");
    EXPECT_EQ(so.exit_code, 0) << so.err;
    std::istringstream lines(file_bytes(o.dir + "/captured.jsonl"));
    int results = 0;
    for (std::string line; std::getline(lines, line); ++results) {
        const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        EXPECT_TRUE(j.is_object() && j.contains("output_ids")) << line;
    }
    EXPECT_EQ(results, 2);
    EXPECT_NE(so.err.find("output: /dev/stdout"), std::string::npos) << so.err;
    for (const auto& e : fs::directory_iterator("/dev")) EXPECT_EQ(e.path().filename().string().rfind("stdout.tmp-", 0), std::string::npos) << e.path();
    // Standard output on a full device: the results are lost, and tpx says so (mpirun, which
    // forwarded them, ignored the failed write: exit 0).
    auto full = run_process(tpx_bin("tpx") + " run " + o.file + " > /dev/full");
    EXPECT_EQ(full.exit_code, 1) << full.err;
    EXPECT_NE(full.err.find("cannot write to standard output"), std::string::npos) << full.err;

    TestJob f = make_job("output = \"results.fifo\"");
    std::string fifo = f.dir + "/results.fifo";
    ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
    auto reader = tpx_test::start_background("cat " + fifo);
    auto w = tpx("run " + f.file);
    EXPECT_EQ(w.exit_code, 0) << w.err;
    EXPECT_EQ(tpx_test::wait_background(reader, 10), 0);
    std::string got = file_bytes(reader.out_path);
    EXPECT_NE(got.find("\"output_ids\""), std::string::npos) << got;
    ASSERT_EQ(stat(fifo.c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
    // No reader: rank 0 waits half the collective timeout, then says so (it waited forever at
    // tp = 1; at tp = 2 rank 1's barrier timed out, naming no FIFO).
    TestJob n = make_job("output = \"results.fifo\"", 2, kPrompts, "[backend]\ncollective_timeout_s = 4\n");
    ASSERT_EQ(mkfifo((n.dir + "/results.fifo").c_str(), 0644), 0);
    auto none = tpx("run " + n.file);
    EXPECT_EQ(none.exit_code, 1) << none.err;
    EXPECT_NE(none.err.find("results.fifo: no process opened this FIFO for reading within 2 s"), std::string::npos) << none.err;
    EXPECT_LT(none.seconds, 15) << none.err;
}

// A run whose last output cannot be written (--dump-logits on a full device) leaves every
// output as it was: run.output was moved into place before the logits were written.
TEST(Outputs, AFailedOutputLeavesTheOthersAsTheyWere) {
    auto staged_for_dev_full = [] {
        std::set<std::string> names;
        for (const auto& e : fs::directory_iterator(fs::temp_directory_path()))
            if (e.path().filename().string().rfind("tpx-full.tmp-", 0) == 0) names.insert(e.path().string());
        return names;
    };
    const std::set<std::string> before = staged_for_dev_full();
    TestJob j = make_job();
    std::ofstream(j.dir + "/out.jsonl") << "old results";
    std::ofstream(j.dir + "/out.jsonl.ranks.json") << "old table";
    auto r = tpx("run " + j.file + " --dump-logits /dev/full");
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("/dev/full: cannot write"), std::string::npos) << r.err;
    EXPECT_EQ(file_bytes(j.dir + "/out.jsonl"), "old results");
    EXPECT_EQ(file_bytes(j.dir + "/out.jsonl.ranks.json"), "old table");
    for (const auto& e : fs::directory_iterator(j.dir)) EXPECT_EQ(e.path().string().find(".tmp-"), std::string::npos) << e.path();
    // The logits' staged copy for the device lay in the temporary folder: gone too.
    EXPECT_EQ(staged_for_dev_full(), before) << "a staged copy for /dev/full was left in " << fs::temp_directory_path();
}

// The last output's rename fails (a folder was put at the ranks table's path during the run):
// run.output, already renamed into place, is put back as it was.
TEST(Outputs, AFailedRenameTakesBackTheOutputsAlreadyInPlace) {
    TestJob j = make_job("", 2, kPrompts, "", "[backend]\ncollective_timeout_s = 30\n");
    std::ofstream(j.dir + "/out.jsonl") << "old results";
    std::ofstream(j.dir + "/out.jsonl.ranks.json") << "old table";
    auto run = tpx_test::start_background(tpx_bin("tpx") + " run " + j.file + " --step-delay-ms 400");
    // Once the ranks have loaded (the launcher's checks are behind them), the table becomes a folder.
    for (int i = 0; i < 300 && file_bytes(run.err_path).find("loaded") == std::string::npos; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_NE(file_bytes(run.err_path).find("loaded"), std::string::npos) << file_bytes(run.err_path);
    fs::remove(j.dir + "/out.jsonl.ranks.json");
    fs::create_directory(j.dir + "/out.jsonl.ranks.json");
    std::ofstream(j.dir + "/out.jsonl.ranks.json/keep") << "x";
    EXPECT_EQ(tpx_test::wait_background(run, 60), 1) << file_bytes(run.err_path);
    EXPECT_NE(file_bytes(run.err_path).find("the run's other files were put back as they were"), std::string::npos)
        << file_bytes(run.err_path);
    EXPECT_EQ(file_bytes(j.dir + "/out.jsonl"), "old results");
    for (const auto& e : fs::directory_iterator(j.dir)) EXPECT_EQ(e.path().string().find(".tmp-"), std::string::npos) << e.path();
}

// Ctrl-C while rank 0 waits for a FIFO's reader: the run's other outputs, already written to
// their temporary files, are not left beside their places.
TEST(Outputs, AnInterruptedRunLeavesNoTemporaryFile) {
    TestJob j = make_job("", 2, kPrompts, "", "[backend]\ncollective_timeout_s = 60\n");
    ASSERT_EQ(mkfifo((j.dir + "/logits.fifo").c_str(), 0644), 0);
    auto run = tpx_test::start_background(tpx_bin("tpx") + " run " + j.file + " --dump-logits " + j.dir + "/logits.fifo");
    auto staged = [&] {
        for (const auto& e : fs::directory_iterator(j.dir))
            if (e.path().filename().string().rfind("out.jsonl.tmp-", 0) == 0) return true;
        return false;
    };
    for (int i = 0; i < 600 && !staged(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(staged()) << "run.output was never staged: " << file_bytes(run.err_path);
    kill(run.pid, SIGINT);
    EXPECT_EQ(tpx_test::wait_background(run, 30), 130) << file_bytes(run.err_path);
    for (const auto& e : fs::directory_iterator(j.dir)) EXPECT_EQ(e.path().string().find(".tmp-"), std::string::npos) << e.path();
    EXPECT_FALSE(fs::exists(j.dir + "/out.jsonl"));
}

TEST(Outputs, ConvertNeverReplacesItsSourceAndAsksBeforeReplacingAFile) {
    std::string dir = tpx_test::temp_dir();
    fs::copy(kTiny, dir + "/tiny", fs::copy_options::recursive);
    std::string src = dir + "/tiny/model.safetensors";
    std::string before = file_bytes(src);
    expect_refused(tpx("convert " + dir + "/tiny " + src + " --force"), {"same file", "model.safetensors"});
    EXPECT_EQ(file_bytes(src), before);
    expect_refused(tpx("convert " + dir + "/tiny " + dir + "/nodir/t.h5"), {"folder does not exist: " + dir + "/nodir"});
    // --hf: not a folder under a reader's name in the checkpoint (params.json/ beside config.json
    // made it both Meta's and HF's), but any other name, with or without a trailing '/'.
    expect_refused(tpx("convert " + dir + "/tiny " + dir + "/tiny/params.json --hf"), {"would be read as a file of the checkpoint's folder"});
    EXPECT_FALSE(fs::exists(dir + "/tiny/params.json"));
    auto sub = tpx("convert " + dir + "/tiny " + dir + "/tiny/sub/ --hf");
    EXPECT_EQ(sub.exit_code, 0) << sub.err;
    EXPECT_TRUE(fs::exists(dir + "/tiny/sub/model.safetensors"));
    fs::remove_all(dir + "/tiny/sub");
    // --hf: an empty OUT and a folder that cannot be made in (it was "internal error", exit 1).
    expect_refused(tpx("convert " + dir + "/tiny '' --hf"), {"OUT is empty"});
    expect_refused(tpx("convert " + dir + "/tiny /proc/tpx-hf --hf"), {"OUT (/proc/tpx-hf): cannot write in /proc"});
    std::ofstream(dir + "/t.h5") << "keep me";
    expect_refused(tpx("convert " + dir + "/tiny " + dir + "/t.h5"), {"already exists", "--force"});
    EXPECT_EQ(file_bytes(dir + "/t.h5"), "keep me");
    auto forced = tpx("convert " + dir + "/tiny " + dir + "/t.h5 --force");
    EXPECT_EQ(forced.exit_code, 0) << forced.err;
    EXPECT_NE(file_bytes(dir + "/t.h5"), "keep me");
    // A symlink is written through: a dangling one replaces nothing (no --force) and makes its
    // target; into a folder that does not exist, that folder is named. An HDF5 file under another
    // format's name would be read as that (beside a checkpoint: as one of its files).
    fs::create_symlink("d.h5", dir + "/dangling.h5");
    auto through = tpx("convert " + dir + "/tiny " + dir + "/dangling.h5");
    EXPECT_EQ(through.exit_code, 0) << through.err;
    EXPECT_TRUE(fs::is_symlink(dir + "/dangling.h5"));
    EXPECT_TRUE(fs::is_regular_file(dir + "/d.h5"));
    expect_refused(tpx("convert " + dir + "/tiny " + dir + "/dangling.h5"), {"already exists", "--force"});
    fs::create_directories(dir + "/other");
    fs::create_symlink("other/model.safetensors", dir + "/disguised.h5");  // the name written is the target's
    expect_refused(tpx("convert " + dir + "/tiny " + dir + "/disguised.h5 --force"), {"a link to", "must end in .h5"});
    fs::create_symlink("dangling.h5", dir + "/hf_out");  // --hf makes a folder at OUT itself
    expect_refused(tpx("convert " + dir + "/tiny " + dir + "/hf_out --hf"), {"already exists", "replaces nothing"});
    fs::create_symlink("nowhere/d.h5", dir + "/lost.h5");
    expect_refused(tpx("convert " + dir + "/tiny " + dir + "/lost.h5 --force"), {"folder does not exist: " + dir + "/nowhere", "where its symlink leads"});
    EXPECT_TRUE(fs::is_symlink(dir + "/lost.h5"));
    expect_refused(tpx("convert " + dir + "/tiny " + dir + "/tiny/model-00002-of-00002.safetensors"), {"would be read as a file of the checkpoint's folder"});
    EXPECT_FALSE(fs::exists(dir + "/tiny/model-00002-of-00002.safetensors"));
    expect_refused(tpx("convert " + dir + "/tiny " + dir + "/model.safetensors"), {"must end in .h5 or .hdf5"});
    EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
    // Writes that fail as on a full disk (a file size limit; HDF5 fails only as it closes the
    // file): exit 1 naming the file, the file there kept, no temp left (it said "wrote", then
    // crashed in HDF5's exit handler, leaving a truncated file in place of the old one).
    const std::string converted = file_bytes(dir + "/t.h5");
    auto full = run_process("trap '' XFSZ; ulimit -f 100; exec " + tpx_bin("tpx") + " convert " + dir + "/tiny " + dir + "/t.h5 --force");
    EXPECT_EQ(full.exit_code, 1) << full.err;
    EXPECT_NE(full.err.find(dir + "/t.h5: cannot write the HDF5 file"), std::string::npos) << full.err;
    EXPECT_EQ(full.out.find("wrote"), std::string::npos) << full.out;
    EXPECT_EQ(file_bytes(dir + "/t.h5"), converted);
    for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().string().find(".tmp-"), std::string::npos) << e.path();
    auto dev = tpx("convert " + dir + "/tiny /dev/null");
    EXPECT_EQ(dev.exit_code, 0) << dev.err;
    struct stat st;
    ASSERT_EQ(stat("/dev/null", &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode));
}

// tpx run killed by SIGKILL (no handler can run) or SIGHUP (its terminal closed): mpirun and
// every worker end within 5 s, and no output appears later.
class KillLauncher : public testing::TestWithParam<int> {};

// `sig` to tpx run once both ranks decode: within 5 s no process of the job is left, and no output
// appears. `tail`: the job's lines after [run]. Returns tpx run's stderr.
std::string interrupt_run(int sig, const std::string& tail = "") {
    TestJob j = make_job("max_new_tokens = 40", 2, kPrompts, "", tail);
    auto b = tpx_test::start_background(tpx_bin("tpx") + " run " + j.file + " --step-delay-ms 200");
    // Wait until both ranks decode (a worker with the job in its command line per rank).
    int workers = 0;
    for (int i = 0; i < 200 && workers < 2; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        workers = 0;
        for (int pid : tpx_test::pids_matching(j.dir + "/job.toml")) {
            std::string cmdline = tpx_test::read_text("/proc/" + std::to_string(pid) + "/cmdline");
            std::string argv0 = cmdline.substr(0, cmdline.find('\0'));
            if (argv0.size() >= 10 && argv0.compare(argv0.size() - 10, 10, "tpx-worker") == 0) ++workers;  // not mpirun's line
        }
    }
    EXPECT_EQ(workers, 2) << tpx_test::read_text(b.err_path);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    kill(b.pid, sig);
    auto sent = std::chrono::steady_clock::now();
    tpx_test::wait_background(b, 10);
    while (!tpx_test::pids_matching(j.dir).empty() && std::chrono::steady_clock::now() - sent < std::chrono::seconds(10))
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
    EXPECT_TRUE(tpx_test::pids_matching(j.dir).empty()) << "processes outlived tpx run";
    EXPECT_LT(seconds, 5.0);
    std::this_thread::sleep_for(std::chrono::seconds(1));
    EXPECT_FALSE(fs::exists(j.dir + "/out.jsonl")) << "an output appeared from a run the user saw end";
    return tpx_test::read_text(b.err_path);
}

TEST_P(KillLauncher, NoProcessOutlivesTpxRunAndNoOutputAppears) {
    const std::string err = interrupt_run(GetParam());
    if (GetParam() == SIGHUP) {
        EXPECT_NE(err.find("interrupted by Hangup"), std::string::npos) << err;
    }
}

// A `[launch] mpirun` wrapper that runs mpirun as its child (no exec): SIGTERM reaches the wrapper
// alone, which ends and leaves mpirun running; tpx inherits it (a child subreaper) and ends it.
TEST(KillLauncherWrapper, AnMpirunAWrapperLeftBehindIsEnded) {
    const std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/mpirun_child.sh") << "#!/bin/sh\nmpirun \"$@\"\n";
    fs::permissions(dir + "/mpirun_child.sh", fs::perms::owner_all);
    const std::string err = interrupt_run(SIGTERM, "[launch]\nmpirun = \"" + dir + "/mpirun_child.sh\"\n");
    EXPECT_NE(err.find("interrupted by Terminated"), std::string::npos) << err;
    fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Signals, KillLauncher, testing::Values(SIGKILL, SIGHUP),
                         [](const testing::TestParamInfo<int>& i) { return i.param == SIGKILL ? std::string("SIGKILL") : std::string("SIGHUP"); });

TEST(Memory, AJobLargerThanTheHostIsRefusedWithTheNumbers) {
    TestJob j = make_job("max_batch = 1000000");
    auto r = tpx("run " + j.file);
    expect_refused(r, {"not enough memory", "KV cache", "max_batch 1000000", "run.max_seq_len or run.max_batch"});
    EXPECT_LT(r.seconds, 10.0);
}

// Each prompt's tokens depend on (seed, prompt id) alone: alone or beside others, max_batch 1
// or 8, tp 1 or 2, drawn by the backend's forward or (keeping the logits for --dump-logits) by
// rank 0 from them. The reference is the prompt run alone at tp 1.
TEST(Sampling, SeededTokensDoNotDependOnTheBatchOrTheWorld) {
    const std::string sampling = "[run.sampling]\ntemperature = 0.8\nseed = 42\n";
    auto tokens_of = [&](const std::string& prompts, int tp, int max_batch, bool dump = false) {
        TestJob j = make_job("max_new_tokens = 12\nmax_batch = " + std::to_string(max_batch), tp, prompts, "", sampling);
        auto r = tpx("run " + j.file + (dump ? " --dump-logits " + j.dir + "/logits.h5" : ""));
        EXPECT_EQ(r.exit_code, 0) << r.err;
        std::ifstream in(j.dir + "/out.jsonl");
        for (std::string line; std::getline(in, line);) {
            auto o = nlohmann::json::parse(line);
            if (o["id"] == "a") return o["output_ids"].get<std::vector<int>>();
        }
        return std::vector<int>{};
    };
    const std::string alone = "{\"id\": \"a\", \"input_ids\": [1, 2, 3, 4]}\n";
    const std::string crowd = std::string("{\"id\": \"z\", \"input_ids\": [9, 8]}\n") + kPrompts + "{\"id\": \"c\", \"input_ids\": [11]}\n";
    std::vector<int> ref = tokens_of(alone, 1, 8);
    ASSERT_EQ(ref.size(), 12u);
    EXPECT_EQ(tokens_of(crowd, 1, 8), ref);
    EXPECT_EQ(tokens_of(crowd, 1, 1), ref);
    EXPECT_EQ(tokens_of(crowd, 2, 3), ref);
    EXPECT_EQ(tokens_of(crowd, 2, 3, true), ref);
    EXPECT_EQ(tokens_of(alone, 1, 1, true), ref);
}

// A sampling key that greedy decoding ignores is refused by tpx run, naming it.
TEST(Checks, SamplingKeysThatGreedyDecodingIgnoresAreRefused) {
    for (const char* key : {"top_k = 5", "top_p = 0.5", "seed = 7"}) {
        TestJob j = make_job("", 1, kPrompts, "", std::string("[run.sampling]\n") + key + "\n");
        auto r = tpx("run " + j.file);
        EXPECT_EQ(r.exit_code, 2) << r.err;
        EXPECT_NE(r.err.find(std::string("[run.sampling] ") + key + " does nothing at temperature = 0"), std::string::npos) << r.err;
    }
}

TEST(Checks, EosOutsideTheVocabularyAndPositionsBeyondTheModelAreRefused) {
    expect_refused(tpx("run " + make_job("eos = 99999").file), {"run.eos holds 99999", "vocabulary of 512"});
    expect_refused(tpx("run " + make_job("max_seq_len = 100000").file), {"run.max_seq_len = 100000", "max_position_embeddings"});
}

TEST(Checks, APromptLineGivingAKeyTwiceIsRefusedWithItsLine) {
    TestJob j = make_job("", 2, std::string(kPrompts) + "{\"id\": \"c\", \"input_ids\": [1], \"input_ids\": [2]}\n");
    auto r = tpx("run " + j.file);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("prompts.jsonl:3: key 'input_ids' is given twice"), std::string::npos) << r.err;
}

TEST(Messages, WhatAUserTypesWrongIsNamed) {
    auto folder = tpx("validate .");
    EXPECT_EQ(folder.exit_code, 2);
    EXPECT_NE(folder.err.find("is a folder, not a job file"), std::string::npos) << folder.err;
    auto endless = tpx("validate /dev/zero");  // read to a bound, not until memory runs out
    EXPECT_EQ(endless.exit_code, 2) << endless.err;
    EXPECT_NE(endless.err.find("/dev/zero: longer than 16 MiB: not a job file"), std::string::npos) << endless.err;
    auto no_job = tpx("run");
    EXPECT_EQ(no_job.exit_code, 2);
    EXPECT_NE(no_job.err.find("missing JOB"), std::string::npos) << no_job.err;
    EXPECT_EQ(no_job.err.find("--job"), std::string::npos) << no_job.err;
    TestJob j = make_job("", 2, kPrompts, "");
    std::ofstream(j.file, std::ios::app) << "[launch]\nmpirun = \"/nonexistent/mpirun\"\n";
    auto no_mpirun = tpx("run " + j.file);
    EXPECT_NE(no_mpirun.err.find("could not start /nonexistent/mpirun"), std::string::npos) << no_mpirun.err;
    EXPECT_EQ(no_mpirun.err.find("tpx run: error: tpx run:"), std::string::npos) << no_mpirun.err;
    for (const char* flag : {"--steps", "--graph", "--detail"}) {
        auto both = tpx("plan " + j.file + " --json " + flag);
        EXPECT_EQ(both.exit_code, 2) << both.err;
        EXPECT_NE(both.err.find(std::string("--json prints the plan alone; ") + flag + " is text"), std::string::npos) << both.err;
    }
    for (const char* world : {"0", "-1"}) {
        auto bad = tpx("plan " + j.file + " --world " + world);
        EXPECT_EQ(bad.exit_code, 2) << bad.err;
        EXPECT_NE(bad.err.find(std::string("--world ") + world + ": must be >= 1"), std::string::npos) << bad.err;
    }
    // Something there that is not a file is said to be what it is (it was "no such file").
    TestJob pf = make_job("", 2, kPrompts, "");
    fs::remove(pf.dir + "/prompts.jsonl");
    fs::create_directory(pf.dir + "/prompts.jsonl");
    expect_refused(tpx("validate " + pf.file), {"run.prompts: " + pf.dir + "/prompts.jsonl is a folder, not a file"});
    // Options the benchmark would ignore (the logits file was checked, then never written).
    for (const char* unused : {"--dump-logits x.h5", "--step-delay-ms 5"}) {
        auto ignored = tpx("run " + j.file + " --bench " + j.dir + "/b.json " + unused);
        expect_refused(ignored, {std::string(unused).substr(0, std::string(unused).find(' ')) + " does nothing with --bench"});
    }
    for (const char* call : {"run JOB --step-delay-ms -1", "serve JOB --read-delay-ms -5 --dry-run"}) {
        std::string command = call;
        command.replace(command.find("JOB"), 3, j.file);
        auto negative = tpx(command);
        EXPECT_EQ(negative.exit_code, 2) << command << ": " << negative.err;
        EXPECT_NE(negative.err.find("-delay-ms -"), std::string::npos) << negative.err;
        EXPECT_NE(negative.err.find(": must be >= 0"), std::string::npos) << negative.err;
    }
    auto help = run_process(tpx_bin("tpx-worker") + " --help");
    EXPECT_EQ(help.exit_code, 0) << help.err;
    EXPECT_NE(help.out.find("--job"), std::string::npos);
}

// Open MPI 4.1's mpirun sometimes follows a rank's abort with "ORTE_ERROR_LOG: Data unpack would
// read past end of buffer", which reads like a second failure, and then (or not) its box saying
// that MPI_ABORT was invoked, which repeats the rank's message in 8 lines. A stand-in mpirun
// ([launch] mpirun) prints the rank's message, that line, the box and another box, the way a real
// one does: the user sees the rank's message and the other box only. A real rank failure too.
TEST(Messages, ARankFailureIsNotFollowedByOpenMpiNoise) {
    TestJob j = make_job();
    std::string fake = j.dir + "/noisy-mpirun";
    const std::string rule(74, '-');
    std::ofstream(fake) << "#!/bin/sh\necho 'rank 1 (vm): the real failure' >&2\n"
                           "echo '[vm:01234] [[1,0],0] ORTE_ERROR_LOG: Data unpack would read past end of buffer in file x.c at line 1' >&2\n"
                        << "echo '" << rule << "' >&2\necho 'MPI_ABORT was invoked on rank 1 in communicator MPI_COMM_WORLD' >&2\n"
                        << "echo 'with errorcode 2.' >&2\necho >&2\necho 'NOTE: invoking MPI_ABORT causes Open MPI to kill all MPI processes.' >&2\n"
                        << "echo '" << rule << "' >&2\necho '" << rule << "' >&2\necho 'another box' >&2\necho '" << rule << "' >&2\nexit 2\n";
    fs::permissions(fake, fs::perms::owner_all);
    std::ofstream(j.file, std::ios::app) << "[launch]\nmpirun = \"" << fake << "\"\n";
    auto r = tpx("run " + j.file);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("the real failure"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("MPI_ABORT"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("errorcode"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(rule + "\nanother box\n" + rule + "\n"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("ORTE_ERROR_LOG"), std::string::npos) << r.err;

    TestJob real = make_job();
    auto f = run_process("TPX_FAULT=1:load " + tpx_bin("tpx") + " run " + real.file);
    EXPECT_NE(f.exit_code, 0);
    EXPECT_NE(f.err.find("injected failure at load"), std::string::npos) << f.err;
    EXPECT_EQ(f.err.find("ORTE_ERROR_LOG"), std::string::npos) << f.err;
}

TEST(Messages, CtrlCSaysInterrupted) {
    TestJob j = make_job("max_new_tokens = 30");
    auto b = tpx_test::start_background(tpx_bin("tpx") + " run " + j.file + " --step-delay-ms 200");
    std::this_thread::sleep_for(std::chrono::seconds(3));
    kill(b.pid, SIGINT);
    int code = tpx_test::wait_background(b, 10);
    std::string err = tpx_test::read_text(b.err_path);
    EXPECT_EQ(code, 128 + SIGINT) << err;
    EXPECT_NE(err.find("interrupted by Interrupt"), std::string::npos) << err;
    EXPECT_EQ(err.find("failed (exit status"), std::string::npos) << err;
}

// A signal that reaches the ranks only after rank 0 moved its outputs into place (mpirun passes
// it on about a second late) does not make a finished run an interrupted one: a stand-in mpirun
// writes run.output, then waits to be stopped. Without the output, the same signal interrupts.
TEST(Messages, ASignalAfterTheOutputsAreInPlaceIsNoInterruption) {
    for (const bool writes : {true, false}) {
        TestJob j = make_job();
        const std::string fake = j.dir + "/late-mpirun", mark = j.dir + "/in-place";
        std::ofstream(fake) << "#!/bin/sh\n" << (writes ? "echo '{}' > " + j.dir + "/out.jsonl\n" : "") << "touch " << mark
                            << "\nexec sleep 30\n";
        fs::permissions(fake, fs::perms::owner_all);
        std::ofstream(j.file, std::ios::app) << "[launch]\nmpirun = \"" << fake << "\"\n";
        auto b = tpx_test::start_background(tpx_bin("tpx") + " run " + j.file);
        for (int i = 0; i < 500 && !fs::exists(mark); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
        ASSERT_TRUE(fs::exists(mark));
        kill(b.pid, SIGINT);
        const int code = tpx_test::wait_background(b, 20);
        const std::string err = tpx_test::read_text(b.err_path);
        if (writes) {
            EXPECT_EQ(code, 0) << err;
            EXPECT_NE(err.find("its outputs were in place before the Interrupt stopped rank 0 (run.output: " + j.dir + "/out.jsonl)"),
                      std::string::npos)
                << err;
        } else {
            EXPECT_EQ(code, 128 + SIGINT) << err;
            EXPECT_NE(err.find("interrupted by Interrupt"), std::string::npos) << err;
        }
    }
}

TEST(Progress, LongDecodingShowsProgressLinesUnlessQuiet) {
    TestJob j = make_job("max_new_tokens = 14");
    auto r = tpx("run " + j.file + " --step-delay-ms 450");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("decode: 0/2 prompts done"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("tokens/s, ETA"), std::string::npos) << r.err;
    auto q = tpx("run " + j.file + " --step-delay-ms 450 --quiet");
    EXPECT_EQ(q.exit_code, 0) << q.err;
    EXPECT_EQ(q.err.find("decode:"), std::string::npos) << q.err;
}
