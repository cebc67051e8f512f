// The GPU layouts of quantized parameters (worker/quant_pack.h) and the quantized GEMVs' CPU
// twins (kernels/cpu/quant_gemv.h), on the CPU. References: the loader's dequantization of the
// same slices (loader/dequant.h, itself checked against HF's rules in test_quant): the layout's
// dequantized values must equal it bit for bit (both are one fp32 product of the same numbers),
// and the twins' products must equal a double-precision dot product with it to within fp32
// summation error, 1e-5 of the sum of |x w| (sums of at most a few hundred fp32 terms).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "kernels/cpu/quant_gemv.h"
#include "loader/quantized.h"
#include "quant_fixtures.h"
#include "worker/quant_pack.h"

namespace fs = std::filesystem;
using namespace tpx;
using namespace tpx_test;

namespace {

std::vector<float> random_values(int64_t n, uint32_t seed, float sd = 0.08f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, sd);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

void write_config(const std::string& dir, const nlohmann::json& quantization) {
    nlohmann::json config = nlohmann::json::parse(read_text(std::string(TPX_TEST_DATA) + "/golden/llama-gqa/config.json"));
    config["quantization_config"] = quantization;
    std::ofstream(dir + "/config.json") << config.dump(2);
}

// A parameter made of (tensor, slice) pieces stacked along N, as a plan makes it.
struct Stack {
    std::vector<std::pair<std::string, Slice>> pieces;
    int64_t K = 0;
};

// Packs the stack, then checks the layout's dequantization against the reader's and each
// twin's product against the reference.
void check_stack(Checkpoint& c, const Stack& st, uint32_t seed) {
    std::vector<ReadRequest> requests;
    for (size_t i = 0; i < st.pieces.size(); ++i) requests.push_back({st.pieces[i].first, st.pieces[i].second, DType::kF32, i});
    auto slices = read_packed_slices(c, requests);
    std::vector<QuantPiece> pieces;
    std::vector<float> deq;  // the reader's values, stacked
    int64_t N = 0;
    for (size_t i = 0; i < st.pieces.size(); ++i) {
        std::vector<int64_t> shape = slice_shape(c.tensor(st.pieces[i].first), st.pieces[i].second);
        ASSERT_EQ(shape[1], st.K);
        pieces.push_back({slices[i].get(), N, shape[0]});
        std::vector<float> part(shape[0] * shape[1]);
        c.read(st.pieces[i].first, st.pieces[i].second, DType::kF32, part.data());
        deq.insert(deq.end(), part.begin(), part.end());
        N += shape[0];
    }
    const int64_t K = st.K;
    QuantParam q = pack_quant_param("test", N, K, pieces);
    std::vector<float> got(N * K, NAN);  // poisoned
    if (q.method == QuantConfig::Method::kFp8) cpu::dequantize_fp8_layout(q.fp8.view(), got.data());
    else cpu::dequantize_gptq_layout(q.gptq.view(), got.data());
    int64_t bad = 0;
    for (int64_t i = 0; i < N * K; ++i) bad += !(got[i] == deq[i]);
    EXPECT_EQ(bad, 0) << "layout dequantization differs from the reader's in " << bad << " of " << N * K;
    const int64_t T = 3;
    std::vector<float> x = random_values(T * K, seed, 1.0f), bias = random_values(N, seed + 1), y(T * N, NAN);
    if (q.method == QuantConfig::Method::kFp8) cpu::gemv_fp8(q.fp8.view(), T, x.data(), bias.data(), y.data());
    else cpu::gemv_gptq(q.gptq.view(), T, x.data(), bias.data(), y.data());
    for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) {
            double ref = bias[n], mag = std::fabs(bias[n]);
            for (int64_t k = 0; k < K; ++k) ref += (double)x[t * K + k] * deq[n * K + k], mag += std::fabs((double)x[t * K + k] * deq[n * K + k]);
            ASSERT_NEAR(y[t * N + n], ref, 1e-5 * mag + 1e-30) << "token " << t << " row " << n;
        }
}

TEST(QuantPack, GptqLayoutsDequantizeAsTheReaderAndTheTwinMultipliesThem) {
    const int64_t in = 96;
    const std::string a = "model.layers.0.self_attn.q_proj", b = "model.layers.0.self_attn.k_proj";
    const int64_t out_a = 40, out_b = 24;
    // group 24 is not a multiple of the 32-position chunk: every group is padded to two chunks.
    const GptqOptions variants[] = {{32, false, true, false, 3}, {32, true, false, false, 4}, {-1, true, false, true, 5},
                                    {24, false, true, true, 6},  {48, true, true, false, 7}};
    for (const GptqOptions& o : variants) {
        SCOPED_TRACE("group " + std::to_string(o.group) + (o.desc_act ? " act-order" : "") + (o.sym ? " sym" : " asym") + (o.v2 ? " v2" : ""));
        std::string dir = temp_dir();
        TensorSet t;
        uint32_t seed = o.seed;
        for (auto [name, out] : {std::pair{a, out_a}, std::pair{b, out_b}}) {
            GptqOptions each = o;
            each.seed = seed++;  // act-order: each linear its own permutation
            GptqLinear g = gptq_quantize(random_values(out * in, each.seed), out, in, each);
            t.add(name + ".qweight", DType::kI32, {in / 8, out}, g.qweight);
            t.add(name + ".qzeros", DType::kI32, {g.groups, (out + 7) / 8}, g.qzeros);
            t.add(name + ".scales", DType::kF16, {g.groups, out}, g.scales);
            t.add(name + ".g_idx", DType::kI32, {in}, g.g_idx);
        }
        t.write(dir + "/model.safetensors");
        write_config(dir, {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", o.group}, {"desc_act", o.desc_act}, {"sym", o.sym},
                           {"checkpoint_format", o.v2 ? "gptq_v2" : "gptq"}});
        auto c = Checkpoint::open(dir);
        const std::string wa = a + ".weight", wb = b + ".weight";
        check_stack(*c, {{{wa, Slice::whole()}}, in}, 1);
        check_stack(*c, {{{wa, Slice::range(0, 8, 20)}, {wb, Slice::range(0, 3, 13)}, {wb, Slice::range(0, 16, 8)}}, in}, 2);  // fused, cut
        check_stack(*c, {{{wa, Slice::range(1, 32, 64)}}, 64}, 3);   // row-parallel cuts (inside groups too)
        check_stack(*c, {{{wb, Slice::range(1, 8, 40)}}, 40}, 4);
        fs::remove_all(dir);
    }
}

TEST(QuantPack, Fp8LayoutsDequantizeAsTheReaderAndTheTwinMultipliesThem) {
    const int64_t out = 200, in = 288;  // edge blocks of 72 rows and 32 columns
    const std::string name = "model.layers.0.mlp.down_proj.weight";
    std::string dir = temp_dir();
    Fp8Linear f = fp8_quantize(random_values(out * in, 11), out, in);
    TensorSet t;
    t.add(name, DType::kF8E4M3, {out, in}, f.q);
    t.add("model.layers.0.mlp.down_proj.weight_scale_inv", DType::kF32, {2, 3}, f.scale);
    t.write(dir + "/model.safetensors");
    write_config(dir, {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {128, 128}}});
    auto c = Checkpoint::open(dir);
    check_stack(*c, {{{name, Slice::whole()}}, in}, 1);
    check_stack(*c, {{{name, Slice::range(0, 0, 128)}, {name, Slice::range(0, 128, 72)}}, in}, 2);  // scales by block rows
    check_stack(*c, {{{name, Slice::range(0, 0, 100)}, {name, Slice::range(0, 100, 100)}}, in}, 3);  // by row
    check_stack(*c, {{{name, Slice::range(1, 144, 144)}}, 144}, 4);  // a cut inside a block
    check_stack(*c, {{{name, Slice::range(1, 16, 48)}}, 48}, 5);
    // A cut the 16-byte chunks cannot take is refused by name.
    auto slices = read_packed_slices(*c, {{name, Slice::range(1, 8, 32), DType::kF32, 0}});
    EXPECT_THROW(pack_quant_param("layers.0.down", out, 32, {{slices[0].get(), 0, out}}), Error);
    fs::remove_all(dir);
}

}  // namespace

// The e4m3 rounding of the w8a8 prefill's twin (kernels/cpu/quant_gemv.h): every finite code is
// its own value's rounding; halfway values go to the even code; beyond 448 saturates.
TEST(QuantTwins, E4m3RoundsToNearestEvenAndSaturates) {
    for (int c = 0; c < 256; ++c) {
        if ((c & 0x7f) == 0x7f) continue;  // NaN
        EXPECT_EQ(cpu::f32_to_e4m3(cpu::e4m3_to_f32((uint8_t)c)), (uint8_t)c) << "code " << c;
    }
    for (int c = 0; c < 0x7e; ++c) {  // the midpoint between neighbours rounds to the even code
        const float lo = cpu::e4m3_to_f32((uint8_t)c), hi = cpu::e4m3_to_f32((uint8_t)(c + 1));
        EXPECT_EQ(cpu::f32_to_e4m3(0.5f * (lo + hi)), (uint8_t)(c % 2 ? c + 1 : c)) << "between codes " << c << " and " << c + 1;
        EXPECT_EQ(cpu::f32_to_e4m3(-0.5f * (lo + hi)), (uint8_t)(0x80 | (c % 2 ? c + 1 : c)));
    }
    EXPECT_EQ(cpu::f32_to_e4m3(1e6f), 0x7e);
    EXPECT_EQ(cpu::f32_to_e4m3(-500.0f), 0xfe);
    EXPECT_EQ(cpu::f32_to_e4m3(1e-9f), 0x00);
}

// Per-token, per-128-column scales: max |x| / 448 maps onto the largest code, a zero block has
// scale 1, and the w8a8 twin over an exact case (x and W already e4m3 values) is the plain product.
TEST(QuantTwins, W8a8TwinIsThePlainProductOnExactValues) {
    const int64_t T = 3, K = 256, N = 5;
    std::mt19937 rng(3);
    std::vector<float> x(T * K, 0.0f);
    for (int64_t k = 0; k < K; ++k) x[0 * K + k] = cpu::e4m3_to_f32((uint8_t)(rng() % 0x7e)), x[2 * K + k] = -x[0 * K + k];
    for (int64_t k : {7, 135}) x[0 * K + k] = 448.0f, x[2 * K + k] = -448.0f;  // scale exactly 1 in both blocks
    for (int64_t k = 128; k < K; ++k) x[1 * K + k] = 2.0f * cpu::e4m3_to_f32((uint8_t)(rng() % 0x7e));  // row 1: first block zero
    x[1 * K + 130] = 896.0f;                                                                            // scale 2
    std::vector<uint8_t> xq(T * K);
    std::vector<float> xs(2 * T);
    cpu::quantize_act_fp8(x.data(), T, K, xq.data(), xs.data());
    EXPECT_EQ(xs[0 * T + 0], 1.0f);
    EXPECT_EQ(xs[0 * T + 1], 1.0f);  // an all-zero block
    EXPECT_EQ(xs[1 * T + 1], 2.0f);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t k = 0; k < K; ++k) EXPECT_EQ(cpu::e4m3_to_f32(xq[t * K + k]) * xs[(k / 128) * T + t], x[t * K + k]);
    cpu::Fp8Weight w;
    w.l = {N, K, 128, 0, 1, 2};
    w.w.resize(N * K);
    for (uint8_t& b : w.w) b = (uint8_t)(rng() % 0x7e) | (rng() % 2 ? 0x80 : 0);
    w.scale.resize(N * 2);
    for (size_t i = 0; i < w.scale.size(); ++i) w.scale[i] = std::ldexp(1.0f, (int)(i % 5) - 2);
    ASSERT_TRUE(cpu::fp8_w8a8_applies(w.l));
    const std::vector<float> rs = cpu::fp8_row_scales(w.view());
    cpu::Fp8View v = w.view();
    v.row_scale = rs.data();
    std::vector<float> got(T * N), want(T * N);
    cpu::linear_w8a8(v, xq.data(), xs.data(), T, nullptr, got.data());
    std::vector<float> dense(N * K);
    cpu::dequantize_fp8_layout(w.view(), dense.data());
    for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) {
            double d = 0, magnitude = 0;
            for (int64_t k = 0; k < K; ++k) d += (double)x[t * K + k] * dense[n * K + k], magnitude += std::fabs((double)x[t * K + k] * dense[n * K + k]);
            EXPECT_NEAR(got[t * N + n], d, 1e-6 * magnitude) << "t " << t << " n " << n;  // fp32 sums of exact products
        }
    w.l.in_offset = 64;
    EXPECT_FALSE(cpu::fp8_w8a8_applies(w.l));  // a cut inside a block: its 128 columns have two scales
}
