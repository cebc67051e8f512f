// The quantized GEMVs (kernels/cuda/quant_gemv.cu: fp32 FMAs; quant_gemv_mma.cu: tensor cores)
// against their CPU twins (kernels/cpu/quant_gemv.h) on fresh random layouts: FP8 with scales by
// block rows, by row, blocks of 256, cuts at and inside a block; GPTQ symmetric and asymmetric,
// in order and act-order (segments, padded groups); each case asserts which GEMV ran. x is
// random bf16 (both sides see the same values); outputs are poisoned with NaN first.
// Tolerance: the GPU rounds its fp32 sums to bf16 (2^-8 relative) after summing in another
// order, so |gpu - cpu| <= 2^-7 |cpu| + 1e-3 x the largest |cpu|. The tensor cores take x in
// fp16, exact for these x (normal bf16 values of magnitude 2^-14 to 2^15; smaller ones would
// lose bits, far under the bound), and their products of fp16 values are exact. The dequantization to
// bf16 is one fp32 product rounded once on both sides, and the norm prologue repeats the
// add_rmsnorm kernel's arithmetic: both bit-identical. The prefill routes (quant_prefill.h): the
// activations' FP8 quantization bit for bit, and the w8a8 FP8 GEMM against cpu::linear_w8a8 with
// the GEMV's tolerance. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "common/cuda_check.h"
#include "kernels/cpu/quant_gemv.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/quant_gemv.h"
#include "kernels/cuda/quant_prefill.h"
#include "loader/dtype.h"

using namespace tpx;
using bf16 = __nv_bfloat16;

namespace {

bool have_gpu() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#define REQUIRE_GPU() \
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device on this machine: quantized GEMV tests skipped"

std::mt19937 rng(29);

// The kernel settings the launches run under: the defaults, the test's own.
KernelConfig tuning;
cuda::Launch on(cudaStream_t stream) { return cuda::Launch(stream, tuning); }

// Device copies that free themselves.
struct Buffers {
    std::vector<void*> all;
    ~Buffers() {
        for (void* p : all) cudaFree(p);
    }
    template <typename T>
    T* up(const std::vector<T>& v) {
        if (v.empty()) return nullptr;
        void* d = nullptr;
        CUDA_CHECK(cudaMalloc(&d, v.size() * sizeof(T)));
        CUDA_CHECK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
        all.push_back(d);
        return static_cast<T*>(d);
    }
    bf16* poisoned(size_t n) { return reinterpret_cast<bf16*>(up(std::vector<uint16_t>(n, 0x7fc0))); }
};

std::vector<float> download(const bf16* d, size_t n) {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint16_t> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost));
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(h[i]);
    return v;
}

std::vector<float> random_bf16(size_t n) {
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = bf16_to_f32(f32_to_bf16(d(rng)));
    return v;
}
std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
    return h;
}

cpu::Fp8Weight random_fp8(int64_t N, int64_t K, int64_t rows_per_scale, int64_t in_offset) {
    cpu::Fp8Weight w;
    w.l = {N, K, 128, in_offset, rows_per_scale, (in_offset + K + 127) / 128};
    w.w.resize(N * K);
    for (uint8_t& b : w.w) b = (uint8_t)(rng() & 0xff), b = (b & 0x7f) == 0x7f ? 0x3f : b;  // no NaN codes
    std::uniform_real_distribution<float> s(1e-3f, 2e-3f);
    w.scale.resize((N + rows_per_scale - 1) / rows_per_scale * w.l.scale_cols);
    for (float& v : w.scale) v = s(rng);
    return w;
}

// segments: row runs with their own act-order permutation (0: in order); groups of `group`
// positions (act-order groups padded to whole chunks).
cpu::GptqWeight random_gptq(int64_t N, int64_t K, int64_t group, int segments, bool asym) {
    cpu::GptqWeight w;
    const int64_t G = (K + group - 1) / group, per_group = (group + 31) / 32 * 32;
    const bool permuted = segments > 0;
    w.l.N = N, w.l.K = K, w.l.G = G, w.l.Kp = permuted ? G * per_group : K;
    w.l.segments = std::max(1, segments);
    for (int s = 0; s < w.l.segments; ++s) w.l.seg_end[s] = N * (s + 1) / w.l.segments;
    const int64_t chunks = w.l.Kp / cpu::kGptqChunk;
    w.chunk_group.resize(w.l.segments * chunks);
    if (permuted) w.perm.assign(w.l.segments * w.l.Kp, -1);
    for (int s = 0; s < w.l.segments; ++s) {
        std::vector<int32_t> ks(K);
        std::iota(ks.begin(), ks.end(), 0);
        if (permuted) std::shuffle(ks.begin(), ks.end(), rng);
        for (int64_t c = 0; c < chunks; ++c) w.chunk_group[s * chunks + c] = (int32_t)(permuted ? c * 32 / per_group : c * 32 / group);
        for (int64_t i = 0; permuted && i < K; ++i) w.perm[s * w.l.Kp + (i / group) * per_group + i % group] = ks[i];
    }
    w.qw.resize(cpu::gptq_words(w.l));
    for (uint32_t& q : w.qw) q = (uint32_t)rng();
    std::uniform_real_distribution<float> s(0.005f, 0.02f);
    w.scales.resize(N * G);
    for (uint16_t& v : w.scales) v = f32_to_f16(s(rng));
    if (asym) {
        w.zeros.resize(N * G);
        for (uint8_t& z : w.zeros) z = (uint8_t)(rng() % 16 + 1);
    }
    cpu::gptq_mark_steps(w);
    return w;
}

cuda::QuantWeightView device_view(Buffers& b, const cpu::Fp8Weight& w) {
    cuda::QuantWeightView v;
    v.format = cuda::QuantWeightView::Format::kFp8;
    v.fp8 = {w.l, b.up(w.w), b.up(w.scale)};
    return v;
}
cuda::QuantWeightView device_view(Buffers& b, const cpu::GptqWeight& w) {
    cuda::QuantWeightView v;
    v.format = cuda::QuantWeightView::Format::kGptq;
    v.gptq = {w.l, b.up(w.qw), b.up(w.scales), b.up(w.zeros), b.up(w.perm), b.up(w.chunk_group)};
    return v;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
    float big = 0;
    for (float v : want) big = std::max(big, std::fabs(v));
    int64_t bad = 0;
    for (size_t i = 0; i < want.size(); ++i)
        if (!(std::fabs(got[i] - want[i]) <= std::ldexp(std::fabs(want[i]), -7) + 1e-3f * big)) {
            if (bad++ < 5) ADD_FAILURE() << what << " [" << i << "]: gpu " << got[i] << ", cpu " << want[i];
        }
    EXPECT_EQ(bad, 0) << what;
}

// The GEMV at several token counts and the SwiGLU epilogue, and the dequantization, against the twin.
// mma: whether the tensor-core GEMV must be the one that runs (at every token count), under
// tuning.quant_mma; -1: either.
template <typename W>
void check_weight(const W& w, const std::string& what, int mma = -1) {
    Buffers b;
    const cuda::QuantWeightView v = device_view(b, w);
    const int64_t N = v.N(), K = v.K();
    for (int64_t T : {1, 2, 3, 5, 8}) {
        const std::vector<float> x = random_bf16(T * K), bias = random_bf16(N);
        std::vector<float> want(T * N);
        if constexpr (std::is_same_v<W, cpu::Fp8Weight>) cpu::gemv_fp8(w.view(), T, x.data(), bias.data(), want.data());
        else cpu::gemv_gptq(w.view(), T, x.data(), bias.data(), want.data());
        cuda::QuantGemvArgs a;
        a.w = v, a.tokens = T, a.x = reinterpret_cast<const bf16*>(b.up(to_bf16(x)));
        a.bias = reinterpret_cast<const bf16*>(b.up(to_bf16(bias)));
        a.y = b.poisoned(T * N);
        ASSERT_TRUE(cuda::quant_gemv_applies(a)) << what;
        if (mma >= 0) EXPECT_EQ(cuda::quant_gemv_on_tensor_cores(a, tuning), mma == 1) << what << ", " << T << " tokens: which GEMV runs";
        cuda::quant_gemv(a, on(nullptr));
        expect_close(download(a.y, T * N), want, what + ", " + std::to_string(T) + " tokens");
        if (T != 1) continue;
        // SwiGLU: silu(z[j]) * z[j + N/2] of the bf16-rounded outputs, as the unfused kernels.
        std::vector<float> act(N / 2);
        for (int64_t j = 0; j < N / 2; ++j) {
            const float g = bf16_to_f32(f32_to_bf16(want[j])), u = bf16_to_f32(f32_to_bf16(want[j + N / 2]));
            act[j] = g / (1.0f + std::exp(-g)) * u;
        }
        a.epi = cuda::GemvEpilogue::kSwiglu;
        a.y = b.poisoned(N / 2);
        cuda::quant_gemv(a, on(nullptr));
        expect_close(download(a.y, N / 2), act, what + ", SwiGLU");
        a.epi = cuda::GemvEpilogue::kNone;
        if (v.format == cuda::QuantWeightView::Format::kGptq && v.gptq.perm) continue;  // (no norm prologue with act-order)
        // The norm prologue: bit for bit add_rmsnorm's kernel, then the GEMV on its output.
        const bf16* delta = reinterpret_cast<const bf16*>(b.up(to_bf16(random_bf16(K))));
        const bf16* residual = reinterpret_cast<const bf16*>(b.up(to_bf16(random_bf16(K))));
        const bf16* weight = reinterpret_cast<const bf16*>(b.up(to_bf16(random_bf16(K))));
        bf16 *res_ref = b.poisoned(K), *normed = b.poisoned(K), *res_fused = b.poisoned(K);
        cuda::add_rmsnorm({1, K, 1e-5f, delta, weight, normed}, residual, res_ref, on(nullptr));
        a.x = normed, a.y = b.poisoned(N);
        cuda::quant_gemv(a, on(nullptr));
        cuda::QuantGemvArgs fused = a;
        fused.x = nullptr, fused.y = b.poisoned(N), fused.has_norm = true;
        fused.norm.x = delta, fused.norm.residual = residual, fused.norm.residual_out = res_fused, fused.norm.weight = weight;
        fused.norm.eps = 1e-5f;
        if (K > cuda::kRmsnormVecMaxWidth) {  // add_rmsnorm sums such rows in another order: no prologue
            EXPECT_FALSE(cuda::quant_gemv_applies(fused)) << what;
            continue;
        }
        ASSERT_TRUE(cuda::quant_gemv_applies(fused)) << what;
        cuda::quant_gemv(fused, on(nullptr));
        const std::vector<float> y_ref = download(a.y, N), y_fused = download(fused.y, N);
        const std::vector<float> r_ref = download(res_ref, K), r_fused = download(res_fused, K);
        int64_t differ_y = 0, differ_r = 0, first = -1;
        for (int64_t i = 0; i < N; ++i)
            if (!(y_ref[i] == y_fused[i])) differ_y++, first = first < 0 ? i : first;
        for (int64_t i = 0; i < K; ++i) differ_r += !(r_ref[i] == r_fused[i]);
        EXPECT_EQ(differ_y + differ_r, 0) << what << ": the norm prologue differs from add_rmsnorm + the GEMV: " << differ_y << " of " << N
                                          << " outputs (the first at " << first << ": " << (first < 0 ? 0.0f : y_fused[first]) << " against "
                                          << (first < 0 ? 0.0f : y_ref[first]) << "), " << differ_r << " of " << K << " residuals";
    }
    std::vector<float> dense(N * K, 0.0f);
    if constexpr (std::is_same_v<W, cpu::Fp8Weight>) cpu::dequantize_fp8_layout(w.view(), dense.data());
    else cpu::dequantize_gptq_layout(w.view(), dense.data());
    for (int64_t off : {0, 1}) {  // 1: off the 16-byte boundary, the kernels' element-wise stores
        bf16* d = b.poisoned(N * K + 8) + off;
        cuda::quant_dequantize(v, d, on(nullptr));
        const std::vector<float> got = download(d, N * K);
        int64_t bad = 0;
        for (int64_t i = 0; i < N * K; ++i) bad += bf16_to_f32(f32_to_bf16(dense[i])) != got[i];
        EXPECT_EQ(bad, 0) << what << ": dequantized to bf16 at offset " << off;
    }
}

// x of T tokens: normal values, one block of zeros, one large outlier (a scale far from the others).
std::vector<float> prefill_x(int64_t T, int64_t K) {
    std::vector<float> x = random_bf16(T * K);
    for (int64_t k = 0; k < std::min<int64_t>(K, 128); ++k) x[k] = 0.0f;
    if (T > 1) x[K + K / 2] = 3008.0f;  // (a bf16 value: both sides must see the same x)
    return x;
}

template <typename T>
std::vector<T> download_raw(const T* d, size_t n) {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

// The w8a8 route at several token counts: x's quantization bit for bit, then the GEMM against the
// twin on the same quantized x. On a mismatch, also says whether the twin with the scale tensors
// read the other way round ([rows][blocks]) matches: the layout cuBLASLt expects.
void check_fp8_prefill(const cpu::Fp8Weight& w, const std::string& what) {
    Buffers b;
    cuda::QuantWeightView v = device_view(b, w);
    const std::vector<float> rs = cpu::fp8_row_scales(w.view());
    v.fp8.row_scale = b.up(rs);
    const int64_t N = w.l.N, K = w.l.K, blocks = (K + 127) / 128;
    cuda::GemmTuner tuner;
    cuda::QuantPrefillArgs odd;
    odd.w = v, odd.tokens = 9;
    EXPECT_FALSE(cuda::quant_prefill_fp8_applies(odd)) << what << ": 9 tokens (not a multiple of 4) take the dequantized route";
    for (int64_t T : {12, 64, 200}) {
        const std::vector<float> x = prefill_x(T, K);
        std::vector<uint8_t> xq(T * K);
        std::vector<float> xs(blocks * T);
        cpu::quantize_act_fp8(x.data(), T, K, xq.data(), xs.data());
        cuda::QuantPrefillArgs p;
        p.w = v, p.tokens = T, p.x = reinterpret_cast<const bf16*>(b.up(to_bf16(x))), p.y = b.poisoned(T * N);
        ASSERT_TRUE(cuda::quant_prefill_fp8_applies(p)) << what;
        p.scratch = b.up(std::vector<uint8_t>(cuda::quant_prefill_scratch_bytes(p)));
        ASSERT_TRUE(cuda::quant_prefill_fp8(tuner, p, on(nullptr))) << what << ": cuBLASLt took no block-scaled FP8 algorithm";
        const std::vector<uint8_t> gq = download_raw(static_cast<const uint8_t*>(p.scratch), T * K);
        const std::vector<float> gs = download_raw(cuda::act_fp8_at(p.scratch, T, K).s, blocks * T);
        int64_t codes = 0, scales = 0;
        for (int64_t i = 0; i < T * K; ++i)
            if (gq[i] != xq[i] && codes++ < 3)
                ADD_FAILURE() << what << ", " << T << " tokens: x[" << i / K << ", " << i % K << "] = " << x[i] << " (scale "
                              << xs[(i % K / 128) * T + i / K] << ") to e4m3 " << (int)gq[i] << " on the GPU, " << (int)xq[i] << " in the twin";
        for (size_t i = 0; i < xs.size(); ++i)
            if (gs[i] != xs[i] && scales++ < 3) ADD_FAILURE() << what << ": scale " << i << " gpu " << gs[i] << " cpu " << xs[i];
        EXPECT_EQ(codes + scales, 0) << what << ", " << T << " tokens: x's e4m3 codes or scales differ from the twin";
        cpu::Fp8View tv = w.view();
        tv.row_scale = rs.data();
        std::vector<float> want(T * N);
        cpu::linear_w8a8(tv, xq.data(), xs.data(), T, nullptr, want.data());
        const std::vector<float> got = download(p.y, T * N);
        float big = 0;
        int64_t bad = 0;
        for (float v2 : want) big = std::max(big, std::fabs(v2));
        for (size_t i = 0; i < want.size(); ++i) bad += !(std::fabs(got[i] - want[i]) <= std::ldexp(std::fabs(want[i]), -7) + 1e-3f * big);
        if (bad) {  // which layout the library read
            std::vector<float> xs_t(blocks * T), rs_t(blocks * N), alt(T * N);
            for (int64_t k = 0; k < blocks; ++k) {
                for (int64_t t = 0; t < T; ++t) xs_t[t * blocks + k] = xs[k * T + t];
                for (int64_t n = 0; n < N; ++n) rs_t[n * blocks + k] = rs[k * N + n];
            }
            // the twin reading xs_t / rs_t as if they were [blocks][rows]: what a [rows][blocks] reader of ours sees
            tv.row_scale = rs_t.data();
            cpu::linear_w8a8(tv, xq.data(), xs_t.data(), T, nullptr, alt.data());
            int64_t alt_bad = 0;
            for (size_t i = 0; i < alt.size(); ++i) alt_bad += !(std::fabs(got[i] - alt[i]) <= std::ldexp(std::fabs(alt[i]), -7) + 1e-3f * big);
            ADD_FAILURE() << what << ", " << T << " tokens: " << bad << " of " << want.size() << " outputs off the twin (first: gpu " << got[0]
                          << ", cpu " << want[0] << "); with the scale tensors transposed " << alt_bad << " off";
        }
        if (T != 64) continue;
        // the residual added in the epilogue (or after it, where cuBLASLt has no such algorithm),
        // large against the product, so that the tolerance (set by the largest sum) sees a wrong one
        std::vector<float> residual = random_bf16(T * N);
        for (float& r : residual) r *= 64.0f;
        p.add = reinterpret_cast<const bf16*>(b.up(to_bf16(residual))), p.y = b.poisoned(T * N);
        ASSERT_TRUE(cuda::quant_prefill_fp8(tuner, p, on(nullptr))) << what << ": with the residual";
        for (size_t i = 0; i < want.size(); ++i) want[i] += residual[i];
        expect_close(download(p.y, T * N), want, what + ", 64 tokens + the residual");
    }
}

// An e4m3 form (cuda::ActFp8) in one device buffer, and its bytes back on the host.
struct Form {
    Form(Buffers& b, int64_t T, int64_t K) : T(T), K(K), base(b.up(std::vector<uint8_t>(cuda::act_fp8_bytes(T, K), 0xff))) {}
    cuda::ActFp8 at() const { return cuda::act_fp8_at(base, T, K); }
    std::vector<uint8_t> codes() const { return download_raw(base, T * K); }
    std::vector<float> scales() const { return download_raw(at().s, (K + 127) / 128 * T); }
    int64_t T, K;
    uint8_t* base;
};

void expect_same_form(const Form& got, const Form& want, const std::string& what) {
    EXPECT_EQ(got.codes(), want.codes()) << what << ": e4m3 codes";
    EXPECT_EQ(got.scales(), want.scales()) << what << ": scales";
}

// What fp8_quantize_act makes of y [T, K].
Form quantized(Buffers& b, const bf16* y, int64_t T, int64_t K) {
    Form f(b, T, K);
    cuda::fp8_quantize_act(y, T, K, f.at(), on(nullptr));
    return f;
}

// x's quantization alone, bit for bit, in both kernels: the vector one (K whole blocks of 128, x
// on 16 bytes; an odd count of blocks, so a half-warp's second item falls past the end) and the
// one-warp form (K not whole blocks; x off its 16-byte boundary).
TEST(QuantKernels, Fp8ActivationQuantizationEqualsItsTwin) {
    REQUIRE_GPU();
    struct Case { int64_t T, K, offset; };
    for (const Case c : {Case{7, 384, 0}, Case{5, 400, 0}, Case{6, 256, 1}}) {
        const std::string what = std::to_string(c.T) + " x " + std::to_string(c.K) + ", x at element " + std::to_string(c.offset);
        const int64_t blocks = (c.K + 127) / 128;
        std::vector<float> x = prefill_x(c.T, c.K);
        std::vector<uint8_t> want(c.T * c.K);
        std::vector<float> want_s(blocks * c.T);
        cpu::quantize_act_fp8(x.data(), c.T, c.K, want.data(), want_s.data());
        x.insert(x.begin(), c.offset, 0.0f);
        Buffers b;
        const Form got = quantized(b, reinterpret_cast<const bf16*>(b.up(to_bf16(x))) + c.offset, c.T, c.K);
        EXPECT_EQ(got.codes(), want) << what << ": e4m3 codes";
        EXPECT_EQ(got.scales(), want_s) << what << ": scales";
    }
}

// The kernels that write the w8a8 route's input in e4m3 themselves (the norms, SwiGLU): their
// codes and scales bit for bit what fp8_quantize_act makes of their bf16 output, the residual
// unchanged (rows of 384 and of 4096, whose blocks a thread's second vector holds); and
// fp8_dequantize_act's values (the route's fallback) against e4m3 x scale in bf16.
TEST(QuantKernels, Fp8OutputsOfNormAndSwigluEqualTheQuantizedBf16) {
    REQUIRE_GPU();
    Buffers b;
    auto dev = [&](const std::vector<float>& v) { return reinterpret_cast<bf16*>(b.up(to_bf16(v))); };
    const int64_t T = 12, I = 256;
    for (int64_t K : {384, 4096}) {
        const bf16 *x = dev(prefill_x(T, K)), *res = dev(random_bf16(T * K)), *nw = dev(random_bf16(K));
        for (bool add : {false, true}) {
            const std::string what = (add ? "add_rmsnorm, " : "rmsnorm, ") + std::to_string(K) + " wide";
            bf16 *y = b.poisoned(T * K), *res_a = b.poisoned(T * K), *res_b = b.poisoned(T * K);
            cuda::RmsnormArgs a{T, K, 1e-5f, x, nw, y};
            if (add) cuda::add_rmsnorm(a, res, res_a, on(nullptr));
            else cuda::rmsnorm(a, on(nullptr));
            const Form got(b, T, K);
            a.y = nullptr, a.y8 = got.at();
            ASSERT_TRUE(cuda::rmsnorm_fp8_applies(a, add ? res : nullptr, add ? res_b : nullptr)) << what;
            if (add) cuda::add_rmsnorm(a, res, res_b, on(nullptr));
            else cuda::rmsnorm(a, on(nullptr));
            expect_same_form(got, quantized(b, y, T, K), what);
            if (add) EXPECT_EQ(download(res_a, T * K), download(res_b, T * K)) << what << ": the new residual";
        }
    }
    const std::vector<float> gu = random_bf16(T * 2 * I);
    const bf16* dgu = dev(gu);
    bf16* y = b.poisoned(T * I);
    cuda::silu_mul_fused(T, I, dgu, y, on(nullptr));
    const Form want = quantized(b, y, T, I), fused(b, T, I), apart(b, T, I);
    cuda::silu_mul_fp8(T, I, dgu, dgu + I, 2 * I, fused.at(), on(nullptr));
    expect_same_form(fused, want, "silu_mul_fp8, gate_up fused");
    std::vector<float> g(T * I), u(T * I);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < I; ++j) g[t * I + j] = gu[t * 2 * I + j], u[t * I + j] = gu[t * 2 * I + I + j];
    cuda::silu_mul_fp8(T, I, dev(g), dev(u), I, apart.at(), on(nullptr));
    expect_same_form(apart, want, "silu_mul_fp8, gate and up apart");
    bf16* back = b.poisoned(T * I);
    cuda::fp8_dequantize_act(want.at(), T, I, back, on(nullptr));
    const std::vector<uint8_t> codes = want.codes();
    const std::vector<float> scales = want.scales();
    std::vector<float> expect(T * I);
    for (int64_t i = 0; i < T * I; ++i) expect[i] = bf16_to_f32(f32_to_bf16(cpu::e4m3_to_f32(codes[i]) * scales[(i % I / 128) * T + i / I]));
    EXPECT_EQ(download(back, T * I), expect) << "fp8_dequantize_act";
}

// A cuBLAS handle for one test.
struct Cublas {
    Cublas() { CUBLAS_CHECK(cublasCreate(&h)); }
    ~Cublas() { cublasDestroy(h); }
    cublasHandle_t h = nullptr;
};

// The attention case of Fp8OutputOfPrefillAttentionEqualsTheQuantizedBf16, under `tuning`.
void check_fp8_attention() {
    const int64_t heads = 4, kv_heads = 2, hd = 128, max_seq = 400, T = 370, qw = heads * hd, kvw = kv_heads * hd;
    Cublas cublas;
    Buffers b;
    auto dev = [&](int64_t n) { return reinterpret_cast<const bf16*>(b.up(to_bf16(random_bf16(n)))); };
    std::vector<int32_t> slot, pos;
    for (int i = 0; i < 300; ++i) slot.push_back(0), pos.push_back(i);
    for (int i = 0; i < 70; ++i) slot.push_back(1), pos.push_back(i);
    std::vector<cuda::AttentionSegment> segs = {{0, 300, 0, 0}, {300, 70, 1, 0}};
    bf16 *kc = b.poisoned(2 * max_seq * kvw), *vc = b.poisoned(2 * max_seq * kvw), *out = b.poisoned(T * qw);
    cuda::AttentionArgs a{{T, heads, kv_heads, hd, max_seq, 0}, b.up(slot), b.up(pos), dev(T * qw), dev(T * kvw), dev(T * kvw), kc, vc, out, 0, 0,
                          cublas.h, &segs};
    cuda::attention(a, on(nullptr));
    const Form want = quantized(b, out, T, qw), got(b, T, qw);
    a.out8 = got.at();
    ASSERT_TRUE(cuda::attention_fp8_applies(a));
    cuda::attention(a, on(nullptr));
    expect_same_form(got, want, "prefill attention");
    std::vector<cuda::AttentionSegment> with_short = {{0, 300, 0, 0}, {300, 3, 1, 0}, {303, 67, 1, 3}};
    a.segments = &with_short;
    EXPECT_FALSE(cuda::attention_fp8_applies(a)) << "a 3-token segment takes the decode kernels";
}

// Prefill attention writing its output's e4m3 form (the flash kernel, head_dim 128, for the
// w8a8 route's o_proj): bit for bit what fp8_quantize_act makes of its bf16 output, in a segment
// of 128-row blocks (flash_tile "2x64"; 64-row blocks with "1x64") and one of 32-row blocks; a
// batch with a short segment is declined.
TEST(QuantKernels, Fp8OutputOfPrefillAttentionEqualsTheQuantizedBf16) {
    REQUIRE_GPU();
    for (const char* tile : {"2x64", "1x64"}) {
        SCOPED_TRACE(std::string("flash_tile ") + tile);
        tuning.flash_tile = tile;
        check_fp8_attention();
    }
    tuning.flash_tile = KernelConfig().flash_tile;
}

TEST(QuantKernels, Fp8PrefillEqualsItsTwin) {
    REQUIRE_GPU();
    check_fp8_prefill(random_fp8(384, 1024, 128, 0), "fp8 w8a8, block rows (cuBLASLt's 128 x 128 blocks)");
    check_fp8_prefill(random_fp8(200, 4096, 1, 0), "fp8 w8a8, per-row scales");
    check_fp8_prefill(random_fp8(256, 384, 128, 128), "fp8 w8a8, a cut at column 128");
    EXPECT_FALSE(cpu::fp8_w8a8_applies(random_fp8(64, 400, 128, 0).l));  // K not whole blocks of 128: the fp16 route
    EXPECT_FALSE(cpu::fp8_w8a8_applies(random_fp8(130, 272, 1, 48).l));  // a cut inside a block
}

// Every form: the ring of whole lines (quant_ring, blocks of 128 x 128), the tensor-core GEMV
// of 64-column steps (quant_mma, where the weight allows: not the cut inside a block) and FMAs.
TEST(QuantKernels, Fp8GemvEqualsItsTwin) {
    REQUIRE_GPU();
    for (int form = 0; form < 3; ++form) {
        const bool mma = form < 2;
        tuning.quant_mma = mma, tuning.quant_ring = form == 0;
        const std::string how = form == 0 ? " (ring)" : form == 1 ? " (tensor cores, 64-column steps)" : " (FMA)";
        // Between 2 and 3 tiles of 32 rows an SM: blocks of 3 tiles, 6 of their 8 warps busy (ring).
        if (form == 0) check_weight(random_fp8(9608, 256, 128, 0), "fp8 blocks of several tiles" + how, mma);
        // 320 steps of 128 columns over 8 warps a tile: 40 a warp, past the 32 scales a lane holds (ring;
        // more than a token of x does not fit beside the ring: the other forms, hence no form asserted).
        if (form == 0) check_weight(random_fp8(64, 40960, 128, 0), "fp8 over 32 steps a warp" + how);
        check_weight(random_fp8(384, 1024, 128, 0), "fp8 block rows" + how, mma);
        check_weight(random_fp8(200, 4096, 1, 0), "fp8 per-row scales" + how, mma);
        // (x of 8 tokens of 14336 takes 229,504 bytes: the tensor-core GEMV's opt-in shared memory)
        check_weight(random_fp8(136, 14336, 128, 0), "fp8 down_proj width" + how, mma);
        check_weight(random_fp8(96, 1040, 128, 0), "fp8 K not whole steps of 64" + how, mma);
        check_weight(random_fp8(72, 4112, 128, 0), "fp8 K not whole steps of 64, the tail in a later batch" + how, mma);
        check_weight(random_fp8(64, 512, 128, 128), "fp8 cut at column 128" + how, mma);
        check_weight(random_fp8(160, 1024, 256, 0), "fp8 scale rows of 256" + how, mma);
        check_weight(random_fp8(130, 272, 1, 48), "fp8 cut inside a block" + how, 0);
    }
    tuning.quant_mma = true, tuning.quant_ring = true;
}

// x past fp16's range (a power-of-two rescale of the token in the tensor-core GEMV): the outputs
// still the twin's.
TEST(QuantKernels, Fp8GemvTakesLargeActivations) {
    REQUIRE_GPU();
    const cpu::Fp8Weight w = random_fp8(64, 512, 128, 0);
    Buffers b;
    const cuda::QuantWeightView v = device_view(b, w);
    for (int64_t T : {1, 3}) {
        std::vector<float> x = random_bf16(T * 512);
        x[7] = 90112.0f;  // bf16 values past 65504: token 0, and the last of 3
        if (T > 1) x[(T - 1) * 512 + 300] = -200704.0f;
        std::vector<float> want(T * 64);
        cpu::gemv_fp8(w.view(), T, x.data(), nullptr, want.data());
        cuda::QuantGemvArgs a;
        a.w = v, a.tokens = T, a.x = reinterpret_cast<const bf16*>(b.up(to_bf16(x))), a.y = b.poisoned(T * 64);
        ASSERT_TRUE(cuda::quant_gemv_on_tensor_cores(a, tuning));
        cuda::quant_gemv(a, on(nullptr));
        const std::vector<float> got = download(a.y, T * 64);
        for (int64_t t = 0; t < T; ++t)  // each token against its own largest output
            expect_close(std::vector<float>(got.begin() + t * 64, got.begin() + (t + 1) * 64),
                         std::vector<float>(want.begin() + t * 64, want.begin() + (t + 1) * 64),
                         "fp8 with |x| past fp16's range, token " + std::to_string(t) + " of " + std::to_string(T));
    }
}

// Both GEMVs; the tensor-core one takes groups of 128 (or one group): not group 32 or 48.
TEST(QuantKernels, GptqGemvEqualsItsTwin) {
    REQUIRE_GPU();
    for (bool mma : {true, false}) {
        tuning.quant_mma = mma;
        const std::string how = mma ? " (tensor cores)" : " (FMA)";
        check_weight(random_gptq(256, 1024, 128, 0, false), "gptq sym in order" + how, mma);
        check_weight(random_gptq(96, 1024, 256, 0, false), "gptq sym, groups of 256" + how, mma);
        check_weight(random_gptq(264, 2048, 128, 0, true), "gptq asym in order" + how, mma);
        check_weight(random_gptq(72, 1024, 1024, 0, true), "gptq asym, one group" + how, mma);
        // Runs of steps a warp past one batch of U (a short last batch), and a split below 8 warps a tile.
        check_weight(random_gptq(136, 14336, 128, 0, true), "gptq asym, down_proj width" + how);  // (8 tokens: x and its sums past the shared memory)
        check_weight(random_gptq(8192, 1024, 128, 0, true), "gptq asym, 512 tiles" + how, mma);
        check_weight(random_gptq(264, 4096, 128, 2, true), "gptq act-order asym, 2 segments of 16 steps" + how, mma);
        check_weight(random_gptq(200, 4096, 32, 0, true), "gptq asym in order, group 32" + how, 0);
        check_weight(random_gptq(192, 512, 128, 1, true), "gptq act-order" + how, mma);
        check_weight(random_gptq(300, 384, 128, 3, true), "gptq act-order asym, 3 segments" + how, mma);
        check_weight(random_gptq(300, 384, 48, 3, false), "gptq act-order, 3 segments, padded groups" + how, 0);
    }
    tuning.quant_mma = true;
}

}  // namespace
