// Checkpoints that disagree with their config or hold broken numbers are refused with a
// message that names the tensor, the prompt or the path, never run to a silent exit 0:
// - tensors the model does not read (config.json saying 1 layer on a 2-layer models/tiny),
//   refused by the planner unless [model] allow_unused_weights; HF's own unread tensors are not;
// - NaN written into a weight (bf16 NaN bytes in the file): `tpx run` ends naming the prompt
//   and the step, greedy and sampled, at tp=2; `tpx inspect --check` lists the tensor;
// - a symlink loop as a model path or inside a model folder: exit 2 naming the path;
// - a config.json that is not JSON (inspect too), a FIFO or device where a checkpoint file
//   should be: exit 2 naming the file, at once (a FIFO's open would wait for a writer).
// The reference for each is the checkpoint as written here (which tensor, which index).
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "loader/checkpoint.h"
#include "loader/nan_scan.h"
#include "process.h"

namespace fs = std::filesystem;
using namespace tpx;
using tpx_test::run_process;
using tpx_test::tpx_bin;

namespace {

const std::string kTiny = std::string(TPX_SOURCE_DIR) + "/models/tiny";
const char* kPrompt = "{\"id\": \"a\", \"input_ids\": [1, 2, 3, 4]}\n";

// models/tiny copied into a fresh folder: DIR/model.
std::string copy_tiny(const std::string& dir) {
    fs::copy(kTiny, dir + "/model", fs::copy_options::recursive);
    return dir + "/model";
}

std::string write_job(const std::string& dir, int tp, const std::string& extra = "", int max_new = 4) {
    std::ofstream(dir + "/prompts.jsonl") << kPrompt;
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"model\"\n" << extra << "\n[parallel]\ntp = " << tp
                                     << "\n[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = " << max_new << "\n";
    return dir + "/job.toml";
}

void edit_config(const std::string& model, const char* key, const nlohmann::json& value) {
    nlohmann::json c = nlohmann::json::parse(tpx_test::read_text(model + "/config.json"));
    c[key] = value;
    std::ofstream(model + "/config.json") << c.dump(2);
}

// Overwrites element `index` of bf16 tensor `name` in the model's safetensors file.
void poke_bf16(const std::string& model, const std::string& name, int64_t index, uint16_t bits) {
    uint64_t offset = 0;
    {
        auto c = Checkpoint::open(model);
        const TensorInfo& t = c->tensor(name);
        ASSERT_EQ(t.dtype, DType::kBF16);
        ASSERT_LT(index, t.numel());
        offset = t.offset + 2 * (uint64_t)index;
    }
    std::fstream f(model + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp((std::streamoff)offset);
    const char bytes[2] = {(char)(bits & 0xff), (char)(bits >> 8)};  // little-endian, as safetensors
    f.write(bytes, 2);
    ASSERT_TRUE(f.good());
}

constexpr uint16_t kBf16NaN = 0x7fc0, kBf16Inf = 0x7f80;

size_t count_of(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

}  // namespace

// More layers than the checkpoint holds (10^12 once took memory without bound, building the
// graph layer by layer before any tensor was looked for): refused at once, naming the layer.
TEST(UnusedTensors, AConfigWithMoreLayersThanTheCheckpointIsRefusedAtOnce) {
    const std::string dir = tpx_test::temp_dir(), model = copy_tiny(dir);
    const std::string job = write_job(dir, 1);
    edit_config(model, "num_hidden_layers", 5000);
    auto r = run_process("timeout 20 " + tpx_bin("tpx") + " validate " + job);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(model + ": config.json says num_hidden_layers = 5000, but the checkpoint holds layers 0 to 1 only (no tensor of layer 2)"),
              std::string::npos) << r.err;
    EXPECT_LT(r.seconds, 5.0);
    edit_config(model, "num_hidden_layers", 1000000000000);
    r = run_process("timeout 20 " + tpx_bin("tpx") + " validate " + job);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("config.json: \"num_hidden_layers\" = 1000000000000 is past the 10000 layers tpx builds"), std::string::npos) << r.err;
    EXPECT_LT(r.seconds, 5.0);
    std::ofstream(model + "/config.json", std::ios::trunc).close();  // an empty one is named as such, not as missing
    r = run_process("timeout 20 " + tpx_bin("tpx") + " validate " + job);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(model + "/config.json: is empty (a JSON object is expected)"), std::string::npos) << r.err;
    fs::remove_all(dir);
}

// The case that motivated the check: num_hidden_layers 1 on the 2-layer models/tiny ran one
// layer and exited 0. Its 9 layer-1 tensors are named, before any rank starts.
TEST(UnusedTensors, AConfigWithFewerLayersIsRefusedNamingTheTensors) {
    const std::string dir = tpx_test::temp_dir(), model = copy_tiny(dir);
    edit_config(model, "num_hidden_layers", 1);
    std::string job = write_job(dir, 1);
    auto r = run_process(tpx_bin("tpx") + " run " + job);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(model + ": 9 checkpoint tensors are not used by the model (config.json says num_hidden_layers = 1, the "
                                 "checkpoint holds 2): model.layers.1.input_layernorm.weight, "),
              std::string::npos) << r.err;
    EXPECT_NE(r.err.find("; set [model] allow_unused_weights = true to run anyway"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("rank map"), std::string::npos) << "refused before mpirun starts:\n" << r.err;
    auto plan = run_process(tpx_bin("tpx") + " plan " + job);
    EXPECT_EQ(plan.exit_code, 2) << plan.err;
    EXPECT_NE(plan.err.find("9 checkpoint tensors are not used"), std::string::npos) << plan.err;

    // Allowed: it runs, and the warning is printed once (by rank 0), naming them.
    job = write_job(dir, 1, "allow_unused_weights = true");
    r = run_process(tpx_bin("tpx") + " run " + job);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(count_of(r.err, "9 checkpoint tensors are not used by the model"), 1u) << r.err;
    EXPECT_NE(r.err.find("model.layers.1.input_layernorm.weight"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("running anyway: [model] allow_unused_weights = true"), std::string::npos) << r.err;
    plan = run_process(tpx_bin("tpx") + " plan " + job);
    EXPECT_EQ(plan.exit_code, 0) << plan.err;
    EXPECT_NE(plan.out.find("warning: " + model + ": 9 checkpoint tensors"), std::string::npos) << plan.out;
    fs::remove_all(dir);
}

// What HF itself does not read is not "unused": old checkpoints' rotary_emb.inv_freq buffers,
// and lm_head.weight when config.json ties the head to embed_tokens. A tensor of no kind the
// model knows is.
TEST(UnusedTensors, BuffersAndATiedHeadAreNotRefused) {
    const std::string dir = tpx_test::temp_dir(), model = copy_tiny(dir);
    edit_config(model, "tie_word_embeddings", true);
    std::vector<float> inv_freq(8, 0.5f), extra(4, 1.0f);
    auto rewrite = [&](bool with_extra) {
        auto c = Checkpoint::open(kTiny);
        std::vector<std::vector<uint16_t>> keep;
        std::vector<TensorData> out;
        for (const TensorInfo& t : c->tensors()) {
            keep.emplace_back(t.numel());
            c->read(t.name, Slice::whole(), DType::kBF16, keep.back().data());
            out.push_back({t.name, DType::kBF16, t.shape, keep.back().data()});
        }
        out.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::kF32, {8}, inv_freq.data()});
        if (with_extra) out.push_back({"model.vision_tower.weight", DType::kF32, {4}, extra.data()});
        write_safetensors(model + "/model.safetensors", out);
    };
    rewrite(false);
    const std::string job = write_job(dir, 1);
    auto plan = run_process(tpx_bin("tpx") + " plan " + job);
    EXPECT_EQ(plan.exit_code, 0) << plan.err;
    EXPECT_EQ(plan.out.find("warning"), std::string::npos) << plan.out;
    rewrite(true);
    plan = run_process(tpx_bin("tpx") + " plan " + job);
    EXPECT_EQ(plan.exit_code, 2) << plan.err;
    EXPECT_NE(plan.err.find(model + ": 1 checkpoint tensor is not used by the model: model.vision_tower.weight; set"), std::string::npos)
        << plan.err;
    fs::remove_all(dir);
}

// A NaN in a weight makes every logit NaN (the residual carries it into every norm). Greedy
// (the backend's argmax reports the row) and sampled (rank 0 checks the host logits) both end
// the run naming the prompt and the step. The decode case: NaN in the embedding row of the
// token the clean model chooses first, so the prefill is clean and decode step 1 is not.
TEST(NonFiniteLogits, EndTheRunNamingThePromptAndTheStep) {
    const std::string dir = tpx_test::temp_dir(), model = copy_tiny(dir);
    std::string job = write_job(dir, 2);
    auto clean = run_process(tpx_bin("tpx") + " run " + job);
    ASSERT_EQ(clean.exit_code, 0) << clean.err;
    const int64_t first = nlohmann::json::parse(tpx_test::read_text(dir + "/job.out.jsonl"))["output_ids"][0];
    ASSERT_TRUE(first > 4) << "the first generated token is in the prompt: " << first;
    poke_bf16(model, "model.embed_tokens.weight", first * 128 + 3, kBf16NaN);
    fs::remove(dir + "/job.out.jsonl");
    auto r = run_process(tpx_bin("tpx") + " run " + job);
    EXPECT_EQ(r.exit_code, 2) << r.err;  // the checkpoint's fault, as `tpx inspect --check` says
    EXPECT_NE(r.err.find("rank 0 ("), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("prompt a: the logits at decode step 1 hold NaN or Inf, so no token can be chosen; `tpx inspect --check " +
                         model + "` finds non-finite weights"),
              std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir + "/job.out.jsonl")) << "no results from a broken model";

    poke_bf16(model, "model.layers.0.mlp.down_proj.weight", 1234, kBf16NaN);
    for (const char* sampling : {"", "[run.sampling]\ntemperature = 0.8\n"}) {
        job = write_job(dir, 2);
        std::ofstream(job, std::ios::app) << sampling;
        r = run_process(tpx_bin("tpx") + " run " + job);
        EXPECT_EQ(r.exit_code, 2) << sampling << r.err;
        EXPECT_NE(r.err.find("prompt a: the logits at prefill hold NaN or Inf"), std::string::npos) << sampling << r.err;
        EXPECT_NE(r.err.find("tpx inspect --check " + model), std::string::npos) << r.err;
    }
    fs::remove_all(dir);
}

// `tpx inspect --check` reads every tensor through the loader: the poked tensor is listed with
// its counts and first flat index (exit 2); models/tiny is clean (exit 0); the same from the
// HDF5 form, whose reader delivers other chunks.
TEST(InspectCheck, ListsTensorsHoldingNaNOrInf) {
    const std::string dir = tpx_test::temp_dir(), model = copy_tiny(dir);
    poke_bf16(model, "model.layers.0.mlp.down_proj.weight", 40000, kBf16Inf);
    poke_bf16(model, "model.layers.0.mlp.down_proj.weight", 1234, kBf16NaN);
    poke_bf16(model, "model.norm.weight", 127, kBf16NaN);
    auto conv = run_process(tpx_bin("tpx") + " convert " + model + " " + dir + "/model.h5");
    ASSERT_EQ(conv.exit_code, 0) << conv.err;
    for (const std::string& path : {model, dir + "/model.h5"}) {
        auto r = run_process(tpx_bin("tpx") + " inspect --check " + path);
        EXPECT_EQ(r.exit_code, 2) << path << r.err;
        EXPECT_NE(r.out.find("model.layers.0.mlp.down_proj.weight: 1 NaN, 1 Inf of 45056 elements, the first at flat index 1234\n"),
                  std::string::npos) << path << r.out;
        EXPECT_NE(r.out.find("model.norm.weight: 1 NaN, 0 Inf of 128 elements, the first at flat index 127\n"), std::string::npos)
            << path << r.out;
        EXPECT_EQ(count_of(r.out, " NaN, "), 2u) << path << r.out;
        EXPECT_NE(r.err.find(path + ": 2 of 21 tensors hold NaN or Inf"), std::string::npos) << r.err;
    }
    auto ok = run_process(tpx_bin("tpx") + " inspect --check " + kTiny);
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
    EXPECT_NE(ok.out.find("no NaN or Inf in 21 tensors ("), std::string::npos) << ok.out;
    fs::remove_all(dir);
}

// A tensor bigger than one read task (8 MiB of float32) arrives in chunks from several
// threads in any order: the counts add up and the first index is the least over chunks.
TEST(InspectCheck, ScanCountsAcrossChunks) {
    const std::string dir = tpx_test::temp_dir();
    const int64_t rows = 2048, cols = 2048;
    std::vector<uint16_t> w(rows * cols, 0x3f80);  // 1.0
    const std::vector<int64_t> nan_at = {3500000, 2100000, 4194303}, inf_at = {2000000};  // the first, in another chunk than the NaNs
    for (int64_t i : nan_at) w[i] = 0xffc1;  // a negative NaN with payload: still NaN
    for (int64_t i : inf_at) w[i] = 0xff80;  // -Inf
    std::vector<float> clean(16, 2.0f);
    write_safetensors(dir + "/m.safetensors", {{"big", DType::kBF16, {rows, cols}, w.data()}, {"clean", DType::kF32, {16}, clean.data()}});
    auto c = Checkpoint::open(dir + "/m.safetensors", 4);
    NanScan scan = scan_non_finite(*c);
    ASSERT_EQ(scan.bad.size(), 1u);
    EXPECT_EQ(scan.bad[0].name, "big");
    EXPECT_EQ(scan.bad[0].nan, 3);
    EXPECT_EQ(scan.bad[0].inf, 1);
    EXPECT_EQ(scan.bad[0].first_index, 2000000);
    EXPECT_EQ(scan.tensors, 2);
    EXPECT_EQ(scan.bytes, (uint64_t)(rows * cols * 2 + 16 * 4));
    fs::remove_all(dir);
}

// `ln -s loop loop`: std::filesystem throws on it ("internal error", exit 1); every command
// that looks at a model path names the path and the reason instead, with exit 2.
TEST(SymlinkLoops, AreNamedWithExit2) {
    const std::string dir = tpx_test::temp_dir();
    fs::create_symlink("loop", dir + "/loop");
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"loop\"\n";
    const std::string reason = ": cannot be looked at: Too many levels of symbolic links (a symlink loop?)";
    for (const std::string& cmd : {"validate " + dir + "/job.toml", "plan " + dir + "/job.toml", "inspect " + dir + "/loop"}) {
        auto r = run_process(tpx_bin("tpx") + " " + cmd);
        EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.err;
        EXPECT_NE(r.err.find(dir + "/loop" + reason), std::string::npos) << cmd << "\n" << r.err;
    }
    // Inside a model folder: the weights (found by the planner and the loader) and config.json
    // (found by the job's checks).
    const std::string model = copy_tiny(dir);
    fs::remove(model + "/model.safetensors");
    fs::create_symlink("model.safetensors", model + "/model.safetensors");
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"model\"\n";
    for (const std::string& cmd : {"plan " + dir + "/job.toml", "inspect " + model, "inspect --check " + model}) {
        auto r = run_process(tpx_bin("tpx") + " " + cmd);
        EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.err;
        EXPECT_NE(r.err.find(model + "/model.safetensors" + reason), std::string::npos) << cmd << "\n" << r.err;
    }
    fs::remove(model + "/config.json");
    fs::create_symlink("config.json", model + "/config.json");
    auto r = run_process(tpx_bin("tpx") + " validate " + dir + "/job.toml");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("model.path: " + model + "/config.json" + reason), std::string::npos) << r.err;
    fs::remove_all(dir);
}

// A config.json that is not JSON: `tpx inspect` (which needs no model config) refuses it as the
// job's checks do, naming the file, rather than listing the folder as an unquantized checkpoint.
TEST(ConfigJson, NotJsonIsNamedByEveryCommand) {
    const std::string dir = tpx_test::temp_dir();
    const std::string model = copy_tiny(dir);
    std::ofstream(model + "/config.json", std::ios::trunc) << "{\"architectures\": [\"LlamaForCausalLM\"],";
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"model\"\n";
    for (const std::string& cmd : {"inspect " + model, "inspect --check " + model, "validate " + dir + "/job.toml", "plan " + dir + "/job.toml"}) {
        auto r = run_process(tpx_bin("tpx") + " " + cmd);
        EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.err;
        EXPECT_NE(r.err.find(model + "/config.json: not valid JSON: parse error at line 1"), std::string::npos) << cmd << "\n" << r.err;
        EXPECT_EQ(r.err.find("[json.exception"), std::string::npos) << cmd << ": the library's tag is not the user's\n" << r.err;
    }
    std::ofstream(model + "/config.json", std::ios::trunc) << "[1, 2]";
    auto r = run_process(tpx_bin("tpx") + " inspect " + model);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(model + "/config.json: not a JSON object"), std::string::npos) << r.err;
    fs::remove_all(dir);
}

// A FIFO (or a device) where a checkpoint file should be: refused at once, naming it. Opening a
// FIFO for reading waits for a writer, so a refit that named one held every rank (a server's
// refit path comes from any client).
TEST(NonRegularFiles, AreRefusedWithoutWaiting) {
    const std::string dir = tpx_test::temp_dir();
    const std::string model = copy_tiny(dir);
    const std::string weights = model + "/model.safetensors";
    fs::rename(weights, dir + "/weights.safetensors");
    ASSERT_EQ(::mkfifo(weights.c_str(), 0600), 0);
    ASSERT_EQ(::mkfifo((dir + "/fifo.h5").c_str(), 0600), 0);
    ASSERT_EQ(::mkfifo((dir + "/fifo.safetensors").c_str(), 0600), 0);
    const std::string fifo = ": is a FIFO, not a regular file";
    for (const auto& [path, named] : std::vector<std::pair<std::string, std::string>>{
             {model, weights}, {dir + "/fifo.h5", dir + "/fifo.h5"}, {dir + "/fifo.safetensors", dir + "/fifo.safetensors"},
             {"/dev/zero", "/dev/zero"}}) {
        auto r = run_process("timeout 20 " + tpx_bin("tpx") + " inspect " + path);
        EXPECT_EQ(r.exit_code, 2) << path << "\n" << r.err;  // 124: timeout's, the open waited
        EXPECT_NE(r.err.find(named + (named == "/dev/zero" ? std::string(": not a model folder") : fifo)), std::string::npos)
            << path << "\n" << r.err;
    }
    fs::remove(weights);
    fs::create_symlink("/dev/zero", weights);  // a device inside the folder
    auto dev = run_process("timeout 20 " + tpx_bin("tpx") + " inspect " + model);
    EXPECT_EQ(dev.exit_code, 2) << dev.err;
    EXPECT_NE(dev.err.find(weights + ": is a character device, not a regular file"), std::string::npos) << dev.err;
    fs::remove(weights);
    fs::rename(dir + "/weights.safetensors", weights);
    fs::remove(model + "/config.json");
    ASSERT_EQ(::mkfifo((model + "/config.json").c_str(), 0600), 0);
    auto r = run_process("timeout 20 " + tpx_bin("tpx") + " inspect " + model);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(model + "/config.json" + fifo), std::string::npos) << r.err;
    fs::remove_all(dir);
}
