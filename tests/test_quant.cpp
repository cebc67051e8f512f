// Quantized checkpoints (GPTQ int4, fine-grained FP8) read as published, sliced per rank and
// dequantized to fp32 on load. References: HF transformers' float32 outputs on the dequantized
// weights (golden gptq-llama, fp8-llama; logits to 1e-4 of the largest, as test_run's goldens:
// fp32 on the same weights agrees to ~1e-5), and for the cases HF's set lacks (act-order,
// asymmetric zeros, gptq_v2, one group, tied FP8 embeddings) a run of the same model with the
// dequantized weights written as plain F32 tensors (quant_fixtures.h): the same fp32 numbers
// through the same kernels, so the logits must be bit-identical (tolerance 0). Every rank
// reads exactly its plan's bytes: the packed slices, never more.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include <nlohmann/json.hpp>

#include "golden.h"
#include "loader/checkpoint.h"
#include "loader/dequant.h"
#include "loader/quantized.h"
#include "process.h"
#include "quant_fixtures.h"

namespace fs = std::filesystem;
using namespace tpx;
using namespace tpx_test;

namespace {

// float8_e4m3fn against values the OCP FP8 spec lists, and the encoder's rounding.
TEST(Fp8, CodesDecodeAsTheSpecDefinesThem) {
    EXPECT_EQ(fp8_e4m3_to_f32(0x00), 0.0f);
    EXPECT_EQ(fp8_e4m3_to_f32(0x01), 0.001953125f);  // smallest subnormal, 2^-9
    EXPECT_EQ(fp8_e4m3_to_f32(0x07), 0.013671875f);  // largest subnormal, 7 x 2^-9
    EXPECT_EQ(fp8_e4m3_to_f32(0x08), 0.015625f);     // smallest normal, 2^-6
    EXPECT_EQ(fp8_e4m3_to_f32(0x38), 1.0f);
    EXPECT_EQ(fp8_e4m3_to_f32(0x39), 1.125f);
    EXPECT_EQ(fp8_e4m3_to_f32(0x7e), 448.0f);  // largest finite
    EXPECT_EQ(fp8_e4m3_to_f32(0xb8), -1.0f);
    EXPECT_EQ(fp8_e4m3_to_f32(0xfe), -448.0f);
    EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0x7f)));
    EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0xff)));
    for (int c = 1; c < 0x7f; ++c) EXPECT_LT(fp8_e4m3_to_f32((uint8_t)(c - 1)), fp8_e4m3_to_f32((uint8_t)c)) << c;
    for (int c = 0; c < 256; ++c)
        if ((c & 0x7f) != 0x7f) {
            EXPECT_EQ(f32_to_fp8_e4m3(fp8_e4m3_to_f32((uint8_t)c)), c) << c;
        }
    EXPECT_EQ(f32_to_fp8_e4m3(1.0625f), 0x38);  // a tie: to the even mantissa
    EXPECT_EQ(f32_to_fp8_e4m3(1.1875f), 0x3a);
    EXPECT_EQ(f32_to_fp8_e4m3(1e6f), 0x7e);     // saturates
    EXPECT_EQ(f32_to_fp8_e4m3(-1e6f), 0xfe);
}

// One quantized linear `name` [out, in] in a fresh folder, with its config.json.
void write_one_linear(const std::string& dir, const nlohmann::json& quantization, TensorSet& t) {
    t.write(dir + "/model.safetensors");
    nlohmann::json config = nlohmann::json::parse(read_text(kGolden + "/llama-gqa/config.json"));
    config["quantization_config"] = quantization;
    std::ofstream(dir + "/config.json") << config.dump(2);
}

std::vector<float> random_weight(int64_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 0.08f);
    std::vector<float> w(n);
    for (float& x : w) x = d(rng);
    return w;
}

// Reads `slice` of the virtual tensor and checks it against `deq` [out, in] (exact: both are
// one fp32 product of the same numbers), and the bytes read against read_bytes().
void expect_slice(Checkpoint& c, const std::string& name, const std::vector<float>& deq, int64_t out, int64_t in, const Slice& s) {
    std::vector<int64_t> shape = slice_shape(c.tensor(name), s);
    std::vector<float> got(shape[0] * shape[1], NAN);  // poisoned
    c.reset_stats();
    c.read(name, s, DType::kF32, got.data());
    EXPECT_EQ(c.stats().data_bytes, c.read_bytes(name, s)) << name << " dim " << s.dim << " [" << s.start << ", +" << s.length << ")";
    const int64_t r0 = s.dim == 0 ? s.start : 0, c0 = s.dim == 1 ? s.start : 0;
    int64_t bad = 0;
    for (int64_t r = 0; r < shape[0]; ++r)
        for (int64_t k = 0; k < shape[1]; ++k) bad += !(got[r * shape[1] + k] == deq[(r0 + r) * in + c0 + k]);
    EXPECT_EQ(bad, 0) << name << " dim " << s.dim << " [" << s.start << ", +" << s.length << ") of [" << out << ", " << in << "]";
    std::vector<uint16_t> bf(shape[0] * shape[1]);
    c.read(name, s, DType::kBF16, bf.data());
    EXPECT_EQ(bf[bf.size() - 1], f32_to_bf16(got[got.size() - 1]));
}

// Row and column cuts at word, group and block boundaries and inside them.
const std::vector<Slice> kCuts = {Slice::whole(),           Slice::range(0, 0, 16),  Slice::range(0, 8, 24), Slice::range(0, 13, 7),
                                  Slice::range(0, 39, 1),   Slice::range(1, 0, 32),  Slice::range(1, 32, 64), Slice::range(1, 5, 50),
                                  Slice::range(1, 95, 1),   Slice::range(1, 40, 48)};

TEST(QuantizedReader, GptqSlicesDequantizeExactlyAndReadTheirPlannedBytes) {
    const int64_t out = 40, in = 96;
    const std::string name = "model.layers.0.mlp.down_proj";
    struct Variant {
        GptqOptions o;
        bool with_g_idx;
    } variants[] = {{{32, false, true, false, 3}, true},  {{32, true, false, false, 4}, true}, {{-1, true, false, true, 5}, true},
                    {{24, false, true, true, 6}, true},   {{32, false, false, false, 7}, false}};
    for (const Variant& v : variants) {
        std::string dir = temp_dir();
        GptqLinear g = gptq_quantize(random_weight(out * in, v.o.seed), out, in, v.o);
        TensorSet t;
        t.add(name + ".qweight", DType::kI32, {in / 8, out}, g.qweight);
        t.add(name + ".qzeros", DType::kI32, {g.groups, out / 8}, g.qzeros);
        t.add(name + ".scales", DType::kF16, {g.groups, out}, g.scales);
        if (v.with_g_idx) t.add(name + ".g_idx", DType::kI32, {in}, g.g_idx);
        write_one_linear(dir, {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", v.o.group}, {"desc_act", v.o.desc_act},
                               {"sym", v.o.sym}, {"checkpoint_format", v.o.v2 ? "gptq_v2" : "gptq"}}, t);
        auto c = Checkpoint::open(dir);
        ASSERT_EQ(c->tensors().size(), 1u) << "the packed tensors stand behind one virtual weight";
        EXPECT_EQ(c->tensor(name + ".weight").shape, (std::vector<int64_t>{out, in}));
        EXPECT_EQ(c->tensor(name + ".weight").dtype, DType::kF32);
        EXPECT_EQ(quantization_of(*c).v2, v.o.v2);
        for (const Slice& s : kCuts) expect_slice(*c, name + ".weight", g.deq, out, in, s);
        fs::remove_all(dir);
    }
}

TEST(QuantizedReader, Fp8SlicesDequantizeExactlyAcrossPartialBlocks) {
    const int64_t out = 200, in = 300;  // edge blocks of 72 rows and 44 columns
    const std::string name = "model.layers.0.mlp.down_proj.weight";
    std::string dir = temp_dir();
    Fp8Linear f = fp8_quantize(random_weight(out * in, 11), out, in);
    TensorSet t;
    t.add(name, DType::kF8E4M3, {out, in}, f.q);
    t.add("model.layers.0.mlp.down_proj.weight_scale_inv", DType::kF32, {2, 3}, f.scale);
    write_one_linear(dir, {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {128, 128}}}, t);
    auto c = Checkpoint::open(dir);
    ASSERT_EQ(c->tensors().size(), 1u);
    for (const Slice& s : {Slice::whole(), Slice::range(0, 0, 100), Slice::range(0, 100, 100), Slice::range(0, 120, 16),
                           Slice::range(0, 199, 1), Slice::range(1, 0, 150), Slice::range(1, 150, 150), Slice::range(1, 127, 2),
                           Slice::range(1, 256, 44)})
        expect_slice(*c, name, f.deq, out, in, s);
    fs::remove_all(dir);
}

// `tpx run` of `model` at `tp` over golden `g`'s prompts: per prompt its prompt logits and
// output ids, and ranks.json.
struct RunOutput {
    std::vector<std::vector<float>> logits;
    std::vector<std::vector<int32_t>> tokens;
    nlohmann::json ranks;
};

RunOutput run_prompts(const std::string& model, const Golden& g, int tp, const std::string& model_keys = "") {
    RunOutput o;
    std::string dir = temp_dir();
    write_golden_prompts(dir, g);
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << model << "\"\n" << model_keys << "[parallel]\ntp = " << tp
                                     << "\n[run]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = " << g.total_len - g.prompt_len
                                     << "\noutput = \"out.jsonl\"\n";
    auto r = run_process(tpx_bin("tpx") + " run " + dir + "/job.toml --quiet --dump-logits " + dir + "/logits.h5");
    EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
    if (r.exit_code != 0) return o;
    for (int64_t b = 0; b < g.batch; ++b) o.logits.push_back(read_h5(dir + "/logits.h5", "prompt_" + std::to_string(b) + "/prompt_logits"));
    std::ifstream out(dir + "/out.jsonl");
    for (std::string line; std::getline(out, line);) o.tokens.push_back(nlohmann::json::parse(line)["output_ids"].get<std::vector<int32_t>>());
    o.ranks = nlohmann::json::parse(read_text(dir + "/out.jsonl.ranks.json"));
    fs::remove_all(dir);
    return o;
}

// Each rank read exactly the bytes its plan gave it.
void expect_reads_as_planned(const RunOutput& o, int tp) {
    ASSERT_EQ((int)o.ranks.size(), tp);
    for (const auto& rank : o.ranks) {
        EXPECT_GT(rank["planned_read_bytes"].get<double>(), 0);
        EXPECT_EQ(rank["read_bytes"].get<double>(), rank["planned_read_bytes"].get<double>()) << "rank " << rank["rank"];
    }
}

struct GoldenCase {
    const char* model;
    int tp;
};

class QuantGolden : public testing::TestWithParam<GoldenCase> {};

TEST_P(QuantGolden, LogitsTokensAndBytesMatchHf) {
    const GoldenCase& c = GetParam();
    Golden g = read_golden(c.model);
    // make_refs.py's reference for these is a fresh float32 model given the dequantized weights:
    // its RoPE frequencies were never rounded to the checkpoint's dtype (docs/NUMERICS.md).
    RunOutput o = run_prompts(kGolden + "/" + c.model, g, c.tp, "rope_precision = \"float32\"\n");
    ASSERT_EQ((int64_t)o.logits.size(), g.batch);
    double max_err = 0, max_ref = 0;
    for (int64_t b = 0; b < g.batch; ++b) {
        ASSERT_EQ((int64_t)o.logits[b].size(), g.prompt_len * g.vocab);
        for (int64_t i = 0; i < g.prompt_len * g.vocab; ++i) {
            const float ref = g.logits[b * g.prompt_len * g.vocab + i];
            max_err = std::max(max_err, (double)std::fabs(o.logits[b][i] - ref));
            max_ref = std::max(max_ref, (double)std::fabs(ref));
        }
        std::vector<int32_t> want(g.greedy_ids.begin() + b * g.total_len + g.prompt_len, g.greedy_ids.begin() + (b + 1) * g.total_len);
        EXPECT_EQ(o.tokens.at(b), want) << "prompt " << b;
    }
    EXPECT_LE(max_err / max_ref, 1e-4) << "max abs error " << max_err << " over max abs logit " << max_ref;
    expect_reads_as_planned(o, c.tp);
}

INSTANTIATE_TEST_SUITE_P(Hf, QuantGolden,
                         testing::Values(GoldenCase{"gptq-llama", 1}, GoldenCase{"gptq-llama", 2}, GoldenCase{"gptq-llama", 4},
                                         GoldenCase{"fp8-llama", 1}, GoldenCase{"fp8-llama", 2}, GoldenCase{"fp8-llama", 4},
                                         GoldenCase{"gptq-llama-g128-actorder-asym", 1}, GoldenCase{"gptq-llama-g128-actorder-asym", 2},
                                         GoldenCase{"gptq-llama-g128-actorder-asym", 4}, GoldenCase{"gptq-llama-g128", 1},
                                         GoldenCase{"gptq-llama-g128", 2}, GoldenCase{"fp8-llama-tied", 1}, GoldenCase{"fp8-llama-tied", 2},
                                         GoldenCase{"fp8-llama-tied", 4}),
                         [](const testing::TestParamInfo<GoldenCase>& i) {
                             std::string m = i.param.model;
                             std::replace(m.begin(), m.end(), '-', '_');
                             return m + "_tp" + std::to_string(i.param.tp);
                         });

struct OwnCase {
    const char* name;
    QuantKind kind;
    GptqOptions o;
    bool tie;
    int tp;
};

class QuantVsDequantized : public testing::TestWithParam<OwnCase> {};

// llama-gqa quantized here: the quantized checkpoint's run against the run of its dequantized
// weights in plain F32 (the reference), same tp: identical logits and tokens.
TEST_P(QuantVsDequantized, LogitsAreBitIdenticalAndBytesAsPlanned) {
    const OwnCase& c = GetParam();
    std::string dir = temp_dir(), ref = temp_dir();
    write_quantized_llama(dir, ref, c.kind, c.o, c.tie);
    Golden g = read_golden("llama-gqa");
    RunOutput q = run_prompts(dir, g, c.tp), r = run_prompts(ref, g, c.tp);
    ASSERT_EQ(q.logits.size(), r.logits.size());
    ASSERT_EQ((int64_t)q.logits.size(), g.batch);
    for (int64_t b = 0; b < g.batch; ++b) {
        int64_t differ = 0;
        for (size_t i = 0; i < q.logits[b].size(); ++i) differ += q.logits[b][i] != r.logits[b][i];
        EXPECT_EQ(differ, 0) << "prompt " << b << ": logits that differ from the dequantized checkpoint's";
    }
    EXPECT_EQ(q.tokens, r.tokens);
    expect_reads_as_planned(q, c.tp);
    // The quantized model is a different model: its logits are not llama-gqa's own (so the
    // comparison above is not of two runs that ignored the quantization).
    double diff = 0;
    for (int64_t i = 0; i < g.prompt_len * g.vocab; ++i) diff = std::max(diff, (double)std::fabs(q.logits[0][i] - g.logits[i]));
    EXPECT_GT(diff, 1e-3);
    fs::remove_all(dir), fs::remove_all(ref);
}

INSTANTIATE_TEST_SUITE_P(
    Own, QuantVsDequantized,
    testing::Values(OwnCase{"gptq_actorder_asym_g32_tp2", QuantKind::kGptq, {32, true, false, false, 21}, false, 2},
                    OwnCase{"gptq_actorder_asym_g32_tp4", QuantKind::kGptq, {32, true, false, false, 21}, false, 4},
                    OwnCase{"gptq_v2_asym_onegroup_tp2", QuantKind::kGptq, {-1, false, false, true, 31}, false, 2},
                    OwnCase{"fp8_tied_tp2", QuantKind::kFp8, {}, true, 2}, OwnCase{"fp8_tied_tp4", QuantKind::kFp8, {}, true, 4}),
    [](const testing::TestParamInfo<OwnCase>& i) { return std::string(i.param.name); });

// `tpx plan` on a quantized checkpoint: each rank's read bytes are the packed bytes of its
// slices. At tp = 1 that is every byte of the tensors once; at tp = 2 each rank reads its
// columns or rows of every packed tensor and half the vocabulary (norms and the g_idx of
// column-parallel linears whole): 62% of the bytes here, not 50%, because a column cut of these
// tiny tensors (rows of 512 bytes) reads the gaps between its runs (at most a page each,
// loader/slice.h); on a real model's rows (tens of KB) the gaps are not read.
TEST(QuantPlan, ShowsThePackedBytesEachRankReads) {
    std::string dir = temp_dir();
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/gptq-llama\"\n";
    auto c = Checkpoint::open(kGolden + "/gptq-llama");
    const double total = (double)c->total_bytes();
    auto r = run_process(tpx_bin("tpx") + " plan " + dir + "/job.toml --world 1 --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json plan = nlohmann::json::parse(r.out);
    EXPECT_EQ(plan["ranks"][0]["read_bytes"].get<double>(), total);
    EXPECT_EQ(plan["ranks"][0]["weight_bytes"].get<double>(), 4.0 * 426'624) << "the dequantized fp32 weights: 426,624 parameters";
    r = run_process(tpx_bin("tpx") + " plan " + dir + "/job.toml --world 2 --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    plan = nlohmann::json::parse(r.out);
    for (const auto& rank : plan["ranks"]) {
        EXPECT_GT(rank["read_bytes"].get<double>(), 0.50 * total) << rank["rank"];
        EXPECT_LT(rank["read_bytes"].get<double>(), 0.65 * total) << rank["rank"];
    }
    r = run_process(tpx_bin("tpx") + " plan " + dir + "/job.toml --world 2");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("quantized: gptq int4, group 32, symmetric, format gptq (read: the packed bytes; weights: dequantized to fp32 "
                         "on load)"), std::string::npos) << r.out;
    // The GPU backend plans them too (the linears stay packed on the device).
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kGolden << "/fp8-llama\"\n[backend]\ndevice = \"cuda\"\n";
    r = run_process(tpx_bin("tpx") + " plan " + dir + "/job.toml --world 1");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("quantized: fp8 e4m3, 128x128 blocks, dynamic activations (read: the packed bytes; weights: kept packed on the "
                         "device"), std::string::npos) << r.out;
    fs::remove_all(dir);
}

// What tpx cannot run is refused by name when the checkpoint is opened (and so by `tpx run`
// before any rank starts), with the key and the supported values.
TEST(QuantRefusals, UnsupportedConfigurationsAreNamed) {
    struct Case {
        nlohmann::json config;
        std::string message;
    } cases[] = {
        {{{"quant_method", "awq"}, {"bits", 4}}, "\"quant_method\" \"awq\" is not supported"},
        {{{"bits", 4}}, "has no \"quant_method\" (supported: \"gptq\" with 4 bits"},
        {{{"quant_method", "gptq"}, {"bits", 8}}, "\"bits\" = 8 is not supported (GPTQ: 4 bits only)"},
        {{{"quant_method", "gptq"}, {"bits", 4}, {"checkpoint_format", "marlin"}}, "\"checkpoint_format\" \"marlin\" is not supported"},
        {{{"quant_method", "fp8"}, {"activation_scheme", "static"}}, "\"activation_scheme\" \"static\" is not supported"},
        {{{"quant_method", "fp8"}, {"weight_block_size", {128}}}, "\"weight_block_size\" is [128]"},
        // Integers that do not fit, or whose group or block count would overflow: never wrapped, never a crash.
        {{{"quant_method", "gptq"}, {"bits", 4294967300LL}}, "\"bits\" = 4294967300 is not supported"},
        {{{"quant_method", "gptq"}, {"bits", 4}, {"group_size", UINT64_MAX}}, "\"group_size\" = 18446744073709551615 is out of range"},
        {{{"quant_method", "gptq"}, {"bits", 4}, {"group_size", INT64_MAX}},
         "\"group_size\" = 9223372036854775807 is larger than 2147483647"},
        {{{"quant_method", "fp8"}, {"weight_block_size", {INT64_MAX, 128}}},
         "\"weight_block_size\" is [9223372036854775807,128]: a block side larger than 2147483647"},
        {{{"quant_method", "fp8"}, {"weight_block_size", {128, UINT64_MAX}}}, "\"weight_block_size\"[1] = 18446744073709551615 is out of range"},
        {{{"quant_method", "fp8"}, {"modules_to_not_convert", 5}}, "\"modules_to_not_convert\" is 5, not a list of module names"},
        {{{"quant_method", "fp8"}, {"modules_to_not_convert", {"lm_head", 3}}},
         "\"modules_to_not_convert\" is [\"lm_head\",3], not a list of module names"},
    };
    for (const Case& c : cases) {
        std::string dir = temp_dir();
        fs::copy(kGolden + "/gptq-llama", dir, fs::copy_options::recursive);
        nlohmann::json config = nlohmann::json::parse(read_text(dir + "/config.json"));
        config["quantization_config"] = c.config;
        std::ofstream(dir + "/config.json") << config.dump(2);
        try {
            Checkpoint::open(dir);
            ADD_FAILURE() << "accepted " << c.config.dump();
        } catch (const CheckpointError& e) {
            EXPECT_NE(std::string(e.what()).find(dir + "/config.json: quantization_config: " + c.message), std::string::npos) << e.what();
        }
        fs::remove_all(dir);
    }
}

// `tpx convert` writes plain tensors: a quantized checkpoint is refused, not silently
// dequantized into a file four to eight times larger that still says it is quantized.
TEST(QuantRefusals, ConvertToHdf5IsRefused) {
    std::string dir = temp_dir();
    auto r = run_process(tpx_bin("tpx") + " convert " + kGolden + "/gptq-llama " + dir + "/out.h5");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("holds gptq int4, group 32, symmetric, format gptq weights: tpx convert writes plain tensors only"),
              std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir + "/out.h5"));
    r = run_process(tpx_bin("tpx") + " convert --hf " + kGolden + "/fp8-llama " + dir + "/hf");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("holds fp8 e4m3, 128x128 blocks, dynamic activations weights: tpx convert writes plain tensors only"),
              std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir + "/hf"));
    fs::remove_all(dir);
}

// A gptq-llama copy with one tensor replaced; `tpx run` refuses it with exit 2, naming it,
// before mpirun starts any rank.
void expect_refused(const std::string& model, const std::string& message, const std::string& backend = "cpu") {
    std::string dir = temp_dir();
    write_golden_prompts(dir);
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << model << "\"\n[backend]\ndevice = \"" << backend
                                     << "\"\n[run]\nprompts = \"prompts.jsonl\"\n";
    auto r = run_process(tpx_bin("tpx") + " run " + dir + "/job.toml");
    EXPECT_EQ(r.exit_code, 2) << r.err << r.out;
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find("rank map"), std::string::npos) << "mpirun was started";
    fs::remove_all(dir);
}

// gptq-llama (or fp8-llama) rewritten with `change` applied to its tensors.
std::string corrupted(const std::string& model, const std::function<void(const TensorInfo&, std::vector<char>&, std::vector<int64_t>&)>& change) {
    std::string dir = temp_dir();
    fs::copy(kGolden + "/" + model, dir, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add);
    for (const auto& e : fs::directory_iterator(dir)) fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
    SafetensorsHeader h = read_safetensors_header(kGolden + "/" + model + "/model.safetensors");
    TensorSet t;
    std::ifstream in(kGolden + "/" + model + "/model.safetensors", std::ios::binary);
    for (const TensorInfo& info : h.tensors) {
        std::vector<char> bytes(info.nbytes);
        in.seekg((std::streamoff)info.offset);
        in.read(bytes.data(), (std::streamsize)bytes.size());
        std::vector<int64_t> shape = info.shape;
        change(info, bytes, shape);
        t.add(info.name, info.dtype, shape, bytes);
    }
    fs::remove(dir + "/model.safetensors");
    t.write(dir + "/model.safetensors");
    return dir;
}

// `tpx inspect --check` reads the quantized linears dequantized: an FP8 NaN code (0x7f) in a
// weight is found and named with its flat index, as in any other tensor.
TEST(QuantInspect, CheckFindsANanInADequantizedWeight) {
    std::string dir = corrupted("fp8-llama", [](const TensorInfo& t, std::vector<char>& b, std::vector<int64_t>&) {
        if (t.name == "model.layers.0.mlp.up_proj.weight") b[1000] = 0x7f;
    });
    auto r = run_process(tpx_bin("tpx") + " inspect --check " + dir);
    EXPECT_EQ(r.exit_code, 2) << r.err << r.out;
    EXPECT_NE(r.out.find("model.layers.0.mlp.up_proj.weight: 1 NaN, 0 Inf of 131072 elements, the first at flat index 1000"),
              std::string::npos) << r.out;
    fs::remove_all(dir);
}

TEST(QuantRefusals, CorruptTensorsAreRefusedBeforeAnyRankStarts) {
    // g_idx out of range (read and checked when the launcher plans).
    std::string dir = corrupted("gptq-llama", [](const TensorInfo& t, std::vector<char>& b, std::vector<int64_t>&) {
        if (t.name == "model.layers.1.mlp.up_proj.g_idx") reinterpret_cast<int32_t*>(b.data())[70] = 9;
    });
    expect_refused(dir, "tensor 'model.layers.1.mlp.up_proj.g_idx': g_idx[70] = 9 is outside the 4 groups of "
                        "'model.layers.1.mlp.up_proj.scales'");
    fs::remove_all(dir);
    // scales with a row too few for the groups.
    dir = corrupted("gptq-llama", [](const TensorInfo& t, std::vector<char>& b, std::vector<int64_t>& shape) {
        if (t.name == "model.layers.0.self_attn.o_proj.scales") shape[0] -= 1, b.resize(b.size() / 4 * 3);
    });
    expect_refused(dir, "tensor 'model.layers.0.self_attn.o_proj.scales' is F16 [3, 128], expected F16 [4, 128] (qweight [16, 128]: "
                        "in = 128, out = 128; group_size 32: 4 groups)");
    fs::remove_all(dir);
    // qweight with a packed row too few: its in no longer matches the model's.
    dir = corrupted("gptq-llama", [](const TensorInfo& t, std::vector<char>& b, std::vector<int64_t>& shape) {
        if (t.name == "model.layers.0.mlp.down_proj.qweight") shape[0] -= 1, b.resize(b.size() / 32 * 31);
    });
    expect_refused(dir, "tensor 'model.layers.0.mlp.down_proj.g_idx' is I32 [256], expected I32 [248] (qweight [31, 128]: in = 248");
    fs::remove_all(dir);
    // FP8 scales for 64x64 blocks under a 128x128 config.
    dir = corrupted("fp8-llama", [](const TensorInfo& t, std::vector<char>& b, std::vector<int64_t>& shape) {
        if (t.name == "model.layers.1.mlp.gate_proj.weight_scale_inv") shape = {8, 4}, b.resize(8 * 4 * 4);
    });
    expect_refused(dir, "tensor 'model.layers.1.mlp.gate_proj.weight_scale_inv' is F32 [8, 4], expected F32 [4, 2]: one scale per "
                        "128x128 block of 'model.layers.1.mlp.gate_proj.weight' [512, 256]");
    fs::remove_all(dir);
    // (The GPU backend takes them: test_gpu_run's Quantized tests.)
}

}  // namespace
