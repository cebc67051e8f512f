// Each CUDA kernel against its CPU twin (kernels/cpu), on fresh random inputs rounded to bf16
// (so both sides see the same values), outputs poisoned with NaN before the launch so that
// unwritten elements show. Tolerance: the GPU stores its result in bf16 (relative rounding
// 2^-8) after fp32 accumulation in another order than the CPU's, and intermediate results
// (e.g. the residual, q/k after RoPE) are bf16 too, so |gpu - cpu| <= 2^-7 |cpu| + 1e-2 x the
// largest |cpu| of the output. Skips on a machine without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "common/cuda_check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "loader/dtype.h"

using namespace tpx;
using bf16 = __nv_bfloat16;

namespace {

// The kernel settings of this file's launches (defaults but where a test changes one).
KernelConfig tuning;
cuda::Launch on(cudaStream_t stream) { return cuda::Launch(stream, tuning); }

// Restores the settings a test changed, however it ends.
struct TuningGuard {
    KernelConfig saved = tuning;
    ~TuningGuard() { tuning = saved; }
};

// The plain GEMV's warps per row for the launches that follow (0: chosen by K, the default).
void use_gemv_splitk(int ks) { tuning.gemv_splitk = ks; }

bool have_gpu() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define REQUIRE_GPU() \
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device on this machine: GPU kernel tests skipped"

std::mt19937 rng(2024);

// Random values already rounded to bf16, so that CPU and GPU start from the same numbers.
std::vector<float> random_bf16(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = bf16_to_f32(f32_to_bf16(d(rng)));
    return v;
}

template <typename T>
struct Device {
    T* p = nullptr;
    size_t n = 0;
    explicit Device(size_t count) : n(count) { CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T))); }
    ~Device() { cudaFree(p); }
};

Device<bf16>* upload(const std::vector<float>& v) {
    auto* d = new Device<bf16>(v.size());
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
    CUDA_CHECK(cudaMemcpy(d->p, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    return d;
}

Device<bf16>* poisoned(size_t n) {
    auto* d = new Device<bf16>(n);
    std::vector<uint16_t> nan(n, 0x7fc0);
    CUDA_CHECK(cudaMemcpy(d->p, nan.data(), n * 2, cudaMemcpyHostToDevice));
    return d;
}

std::vector<float> download(const Device<bf16>& d) {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint16_t> h(d.n);
    CUDA_CHECK(cudaMemcpy(h.data(), d.p, h.size() * 2, cudaMemcpyDeviceToHost));
    std::vector<float> v(d.n);
    for (size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_f32(h[i]);
    return v;
}

template <typename T>
Device<T>* upload_raw(const std::vector<T>& v) {
    auto* d = new Device<T>(v.size());
    CUDA_CHECK(cudaMemcpy(d->p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

// The fused all-reduce's buffers for `world` ranks, all on this GPU: each rank's exchange buffer
// and counters (zeroed), host-mapped error words, and each rank's OneShotPeers over them (a
// 20 s timeout).
struct EmulatedExchange {
    std::vector<std::unique_ptr<Device<uint2>>> ll;
    std::vector<std::unique_ptr<Device<uint32_t>>> counters;
    std::vector<cuda::OneShotPeers> peers;
    int* error = nullptr;

    EmulatedExchange(int world, int64_t units) : peers(world) {
        CUDA_CHECK(cudaHostAlloc(&error, world * sizeof(int), cudaHostAllocMapped));
        for (int d = 0; d < world; ++d) {
            ll.push_back(std::make_unique<Device<uint2>>(2 * world * units));
            counters.push_back(std::make_unique<Device<uint32_t>>(cuda::kOneShotBlocks + 2));
            CUDA_CHECK(cudaMemset(ll[d]->p, 0, ll[d]->n * sizeof(uint2)));
            CUDA_CHECK(cudaMemset(counters[d]->p, 0, counters[d]->n * 4));
            error[d] = 0;
        }
        for (int d = 0; d < world; ++d) {
            peers[d].rank = d, peers[d].world = world, peers[d].ll_units = units;
            for (int r = 0; r < world; ++r) peers[d].ll[r] = ll[r]->p;
            peers[d].counters = counters[d]->p;
            CUDA_CHECK(cudaHostGetDevicePointer(&peers[d].error, error + d, 0));
            peers[d].timeout_ns = 20'000'000'000ull;
        }
    }
    ~EmulatedExchange() { cudaFreeHost(error); }
    EmulatedExchange(const EmulatedExchange&) = delete;
    EmulatedExchange& operator=(const EmulatedExchange&) = delete;
};

void expect_close(const std::vector<float>& gpu, const std::vector<float>& cpu, const std::string& what) {
    ASSERT_EQ(gpu.size(), cpu.size()) << what;
    float scale = 0;
    for (float x : cpu) scale = std::max(scale, std::fabs(x));
    for (size_t i = 0; i < cpu.size(); ++i) {
        ASSERT_FALSE(std::isnan(gpu[i])) << what << ": element " << i << " unwritten or NaN";
        ASSERT_LE(std::fabs(gpu[i] - cpu[i]), std::ldexp(1.0f, -7) * std::fabs(cpu[i]) + 1e-2f * scale)
            << what << ": element " << i << " gpu " << gpu[i] << " cpu " << cpu[i];
    }
}

}  // namespace

TEST(CudaKernels, LinearWithBiasMatchesTwin) {
    REQUIRE_GPU();
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    for (auto [T, K, N] : {std::tuple<int64_t, int64_t, int64_t>{7, 96, 80}, {1, 4096, 64}, {33, 128, 512}}) {
        auto x = random_bf16(T * K), w = random_bf16(N * K, 0.05f), b = random_bf16(N);
        std::unique_ptr<Device<bf16>> dx(upload(x)), dw(upload(w)), db(upload(b)), dy(poisoned(T * N));
        cuda::linear(h, {{T, K, N}, dx->p, dw->p, db->p, dy->p}, on(nullptr));
        std::vector<float> ref(T * N);
        cpu::linear({T, K, N}, x.data(), w.data(), b.data(), ref.data());
        expect_close(download(*dy), ref, "linear");
    }
    cublasDestroy(h);
}

// Products through the GEMM tuner: the first of a bucket is timed over cuBLASLt's algorithms,
// then run with the fastest; a second row count of the bucket reuses it (past
// kBatchGemmMaxTokens rows: up to it each row count is a bucket of its own); a view offset by 2
// bytes changes the alignment (a bucket of its own, algorithms that take it); fewer than
// kGemmTuneMinTokens rows and an untuned bucket under stream capture are declined (nothing
// written); an added matrix (the residual add) is summed in, not in place. A tuner given a cuBLAS
// handle times cublasGemmEx's own choice too (and declines where it is the fastest, linear()
// then running it). Each result against the twin, with the bias added after.
TEST(CudaKernels, GemmTunerMatchesTwinAndDeclinesWhatItMust) {
    REQUIRE_GPU();
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    cuda::GemmTuner tuner, timed(h);  // timed: cublasGemmEx timed beside the algorithms
    const int64_t K = 256, N = 384, maxT = 1024;
    auto x = random_bf16(maxT * K + 8), w = random_bf16(N * K, 0.05f), b = random_bf16(N);
    std::unique_ptr<Device<bf16>> dx(upload(x)), dw(upload(w)), db(upload(b));
    struct Case {
        int64_t T, offset;
        cuda::GemmTuner* t;
    };
    for (auto [T, offset, t] : {Case{256, 0, &tuner}, {200, 0, &tuner}, {300, 0, &tuner}, {256, 1, &tuner}, {16, 0, &tuner}, {16, 0, &timed},
                                {300, 0, &timed}, {48, 0, &tuner}, {64, 0, &tuner}}) {
        std::unique_ptr<Device<bf16>> dy(poisoned(T * N));
        cuda::linear(h, {{T, K, N}, dx->p + offset, dw->p, db->p, dy->p, t}, on(nullptr));
        std::vector<float> ref(T * N);
        cpu::linear({T, K, N}, x.data() + offset, w.data(), b.data(), ref.data());
        expect_close(download(*dy), ref, "tuned gemm T=" + std::to_string(T) + " offset " + std::to_string(offset));
    }
    {  // with an added matrix (the residual add in the epilogue): a bucket of its own
        const int64_t T = 256;
        auto a = random_bf16(T * N);
        std::unique_ptr<Device<bf16>> da(upload(a)), dy(poisoned(T * N));
        ASSERT_TRUE(tuner.matmul({T, K, N}, dx->p, dw->p, dy->p, nullptr, da->p));
        EXPECT_FALSE(tuner.matmul({T, K, N}, dx->p, dw->p, da->p, nullptr, da->p)) << "in place is declined";
        std::vector<float> ref(T * N);
        cpu::linear({T, K, N}, x.data(), w.data(), nullptr, ref.data());
        for (int64_t i = 0; i < T * N; ++i) ref[i] += a[i];
        expect_close(download(*dy), ref, "tuned gemm + added matrix");
    }
    const std::string summary = tuner.summary();
    EXPECT_NE(summary.find("gemm 256 rows (bucket 256) K=256 N=384: fastest of"), std::string::npos) << summary;
    EXPECT_NE(summary.find("gemm 300 rows (bucket 512)"), std::string::npos) << summary;
    EXPECT_NE(summary.find("gemm 16 rows (bucket 16) K=256 N=384: fastest of"), std::string::npos) << summary;
    EXPECT_NE(summary.find("gemm 48 rows (bucket 48) K=256 N=384: fastest of"), std::string::npos) << summary;
    EXPECT_NE(summary.find("gemm 64 rows (bucket 64) K=256 N=384: fastest of"), std::string::npos) << "a decode row count of its own\n"
                                                                                               << summary;
    EXPECT_EQ(summary.find("cublasGemmEx"), std::string::npos) << "no handle, nothing else timed\n" << summary;
    const std::string timed_summary = timed.summary();
    for (const char* line : {"gemm 300 rows", "gemm 16 rows"}) {
        const size_t at = timed_summary.find(line);
        ASSERT_NE(at, std::string::npos) << timed_summary;
        EXPECT_NE(timed_summary.substr(at, timed_summary.find('\n', at) - at).find(", cublasGemmEx "), std::string::npos) << timed_summary;
    }
    EXPECT_NE(summary.find("K=256 N=384 + add: fastest of"), std::string::npos) << summary;
    EXPECT_EQ(summary.find("gemm 200 rows"), std::string::npos) << "T=200 is bucket 256's: not tuned again\n" << summary;

    std::unique_ptr<Device<bf16>> dy(poisoned(maxT * N));
    EXPECT_FALSE(tuner.matmul({cuda::kGemmTuneMinTokens - 1, K, N}, dx->p, dw->p, dy->p, nullptr));
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t g;
    CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    const bool untuned = tuner.matmul({1024, K, N}, dx->p, dw->p, dy->p, st);  // bucket 1024: never timed
    const bool tuned = tuner.matmul({256, K, N}, dx->p, dw->p, dy->p, st);     // bucket 256: captured as is
    CUDA_CHECK(cudaStreamEndCapture(st, &g));
    EXPECT_FALSE(untuned);
    EXPECT_TRUE(tuned);
    cudaGraphExec_t ge;
    CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
    CUDA_CHECK(cudaGraphLaunch(ge, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    std::vector<float> ref(256 * N);
    cpu::linear({256, K, N}, x.data(), w.data(), nullptr, ref.data());
    std::vector<float> got = download(*dy);
    got.resize(256 * N);
    expect_close(got, ref, "tuned gemm replayed from a graph");
    cudaGraphExecDestroy(ge), cudaGraphDestroy(g), cudaStreamDestroy(st);
    cublasDestroy(h);
}

// Batch-1 products go through the GEMV kernel: K with a remainder after its unrolled loop, N
// not a multiple of its warps per block, with and without bias; the same products through
// cuBLAS must agree with it and with the twin.
TEST(CudaKernels, GemvMatchesTwinAndCublas) {
    REQUIRE_GPU();
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    const int64_t T = 1;
    for (auto [K, N] : {std::pair<int64_t, int64_t>{4104, 37}, {256, 300}, {8, 9}}) {
        auto x = random_bf16(T * K), w = random_bf16(N * K, 0.05f), b = random_bf16(N);
        std::unique_ptr<Device<bf16>> dx(upload(x)), dw(upload(w)), db(upload(b)), dy(poisoned(T * N)), dy2(poisoned(T * N));
        ASSERT_TRUE(cuda::gemv_applies({T, K, N}, dx->p, dw->p));
        const bool with_bias = N % 2 == 1;
        for (const char* ks : {"1", "2"}) {  // the default (4) below
            use_gemv_splitk(std::atoi(ks));
            std::unique_ptr<Device<bf16>> dk(poisoned(T * N));
            cuda::linear(h, {{T, K, N}, dx->p, dw->p, with_bias ? db->p : nullptr, dk->p}, on(nullptr));
            std::vector<float> ref(T * N);
            cpu::linear({T, K, N}, x.data(), w.data(), with_bias ? b.data() : nullptr, ref.data());
            expect_close(download(*dk), ref, ks[0] == '1' ? "gemv, one warp per row" : "gemv, two warps per row");
        }
        use_gemv_splitk(0);
        cuda::linear(h, {{T, K, N}, dx->p, dw->p, with_bias ? db->p : nullptr, dy->p}, on(nullptr));
        cuda::linear(h, {{T, K, N}, dx->p, dw->p, with_bias ? db->p : nullptr, dy2->p, nullptr, cuda::LinearRoute::kGemm}, on(nullptr));
        std::vector<float> ref(T * N);
        cpu::linear({T, K, N}, x.data(), w.data(), with_bias ? b.data() : nullptr, ref.data());
        expect_close(download(*dy), ref, "gemv");
        expect_close(download(*dy), download(*dy2), "gemv against cuBLAS");
    }
    // K not a multiple of 8, more than kBatchGemmMaxTokens rows, or misaligned: cuBLAS.
    auto x = random_bf16(9 * 100);
    std::unique_ptr<Device<bf16>> dx(upload(x)), dw(upload(random_bf16(100 * 4)));
    EXPECT_FALSE(cuda::gemv_applies({2, 100, 4}, dx->p, dw->p));
    EXPECT_TRUE(cuda::gemv_applies({2, 96, 4}, dx->p, dw->p));
    EXPECT_TRUE(cuda::gemv_applies({9, 96, 4}, dx->p, dw->p));
    EXPECT_FALSE(cuda::gemv_applies({65, 96, 4}, dx->p, dw->p));
    EXPECT_FALSE(cuda::gemv_applies({1, 96, 4}, dx->p + 1, dw->p));  // misaligned input
    EXPECT_FALSE(cuda::gemv_applies({2, 96, 4}, dx->p + 1, dw->p));
    cublasDestroy(h);
}

// The batch-1 GEMV with its neighbours fused in must give, bit for bit, what the unfused kernels
// give: residual add + RMSNorm (or RMSNorm alone) before it; nothing, SwiGLU, or RoPE with the
// KV-cache write after it. Shapes: K below the block's thread count in chunks, K = 4096, N not
// a multiple of the warps per block, more work items than the grid has warps (the grid strides).
TEST(CudaKernels, GemvFusedEqualsTheUnfusedKernels) {
    REQUIRE_GPU();
    use_gemv_splitk(1);  // the unfused GEMV with one warp per row: the fused kernels' summation order
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    const float eps = 1e-5f;
    struct Case {
        int64_t K, N;
        bool residual, bias;
        cuda::GemvEpilogue epi;
    };
    const int64_t heads = 4, kvh = 2, hd = 64, max_seq = 8, slots = 2;
    for (Case c : {Case{1000, 37, true, true, cuda::GemvEpilogue::kNone}, Case{4096, 300, false, false, cuda::GemvEpilogue::kNone},
                   Case{1000, 20000, true, false, cuda::GemvEpilogue::kNone}, Case{4096, 600, true, true, cuda::GemvEpilogue::kSwiglu},
                   Case{4096, 9000, true, false, cuda::GemvEpilogue::kSwiglu}, Case{512, 600, false, false, cuda::GemvEpilogue::kSwiglu},
                   Case{512, (heads + 2 * kvh) * hd, true, true, cuda::GemvEpilogue::kRopeKv},
                   Case{4096, (heads + 2 * kvh) * hd, true, false, cuda::GemvEpilogue::kRopeKv}}) {
        for (bool with_norm : {true, false}) {
            SCOPED_TRACE("K " + std::to_string(c.K) + " N " + std::to_string(c.N) + " epilogue " + std::to_string((int)c.epi) +
                         (with_norm ? " norm" : "") + (c.residual ? " residual" : ""));
            auto x = random_bf16(c.K), res = random_bf16(c.K), nw = random_bf16(c.K), w = random_bf16(c.N * c.K, 0.05f), b = random_bf16(c.N);
            std::unique_ptr<Device<bf16>> dx(upload(x)), dres(upload(res)), dnw(upload(nw)), dw(upload(w)), db(upload(b));
            const bf16* bias = c.bias ? db->p : nullptr;
            // Unfused: the norm, the GEMV, then the next op.
            std::unique_ptr<Device<bf16>> normed(poisoned(c.K)), res_ref(poisoned(c.K)), z(poisoned(c.N));
            const bf16* lin_in = dx->p;
            if (with_norm) {
                if (c.residual) cuda::add_rmsnorm({1, c.K, eps, dx->p, dnw->p, normed->p}, dres->p, res_ref->p, on(nullptr));
                else cuda::rmsnorm({1, c.K, eps, dx->p, dnw->p, normed->p}, on(nullptr));
                lin_in = normed->p;
            }
            cuda::linear(h, {{1, c.K, c.N}, lin_in, dw->p, bias, z->p}, on(nullptr));
            // Fused.
            cuda::GemvNorm nm;
            nm.x = dx->p;
            nm.residual = c.residual ? dres->p : nullptr;
            nm.weight = dnw->p;
            nm.eps = eps;
            std::unique_ptr<Device<bf16>> res_out(poisoned(c.K));
            nm.residual_out = c.residual ? res_out->p : nullptr;
            ASSERT_TRUE(cuda::gemv_fused_applies(c.K, &nm, dw->p));
            const int64_t out_n = c.epi == cuda::GemvEpilogue::kSwiglu ? c.N / 2 : c.epi == cuda::GemvEpilogue::kRopeKv ? heads * hd : c.N;
            std::unique_ptr<Device<bf16>> y(poisoned(out_n)), y_ref(poisoned(out_n));
            if (c.epi != cuda::GemvEpilogue::kRopeKv) {
                cuda::gemv_fused({c.K, c.N, dx->p, dw->p, bias, y->p, with_norm ? &nm : nullptr, c.epi, nullptr}, on(nullptr));
                if (c.epi == cuda::GemvEpilogue::kSwiglu) cuda::silu_mul_fused(1, c.N / 2, z->p, y_ref->p, on(nullptr));
                else CUDA_CHECK(cudaMemcpy(y_ref->p, z->p, c.N * 2, cudaMemcpyDeviceToDevice));
                EXPECT_EQ(download(*y), download(*y_ref));
            } else {
                // RoPE on the q and k columns of z, K and V into the cache at (slot 1, position 5),
                // then attention reads them: caches and attention outputs must match.
                cpu::RopeParams p{heads, kvh, hd, 10000.0};
                std::unique_ptr<Device<float>> inv(upload_raw(cpu::rope_inv_freq(p)));
                std::unique_ptr<Device<int32_t>> slot(upload_raw(std::vector<int32_t>{1})), pos(upload_raw(std::vector<int32_t>{5}));
                const int64_t cache_n = slots * max_seq * kvh * hd;
                auto cache_init = random_bf16(cache_n);  // earlier positions: whatever is there
                std::unique_ptr<Device<bf16>> kc(upload(cache_init)), vc(upload(cache_init)), kc_ref(upload(cache_init)),
                    vc_ref(upload(cache_init)), kr(poisoned(kvh * hd)), o(poisoned(heads * hd)), o_ref(poisoned(heads * hd));
                cuda::rope({p, 1, pos->p, inv->p, z->p, z->p + heads * hd, y_ref->p, kr->p, c.N}, on(nullptr));
                cpu::AttentionShape s{1, heads, kvh, hd, max_seq, 0};
                cuda::attention({s, slot->p, pos->p, y_ref->p, kr->p, z->p + (heads + kvh) * hd, kc_ref->p, vc_ref->p, o_ref->p, 0, c.N}, on(nullptr));
                cuda::GemvRopeKv rk;
                rk.heads = heads, rk.kv_heads = kvh, rk.head_dim = hd, rk.max_seq = max_seq;
                rk.slot = slot->p, rk.pos = pos->p, rk.inv_freq = inv->p, rk.k_cache = kc->p, rk.v_cache = vc->p;
                cuda::gemv_fused({c.K, c.N, dx->p, dw->p, bias, y->p, with_norm ? &nm : nullptr, c.epi, &rk}, on(nullptr));
                cuda::attention({s, slot->p, pos->p, y->p, nullptr, nullptr, kc->p, vc->p, o->p}, on(nullptr));
                EXPECT_EQ(download(*y), download(*y_ref)) << "q";
                EXPECT_EQ(download(*kc), download(*kc_ref)) << "k cache";
                EXPECT_EQ(download(*vc), download(*vc_ref)) << "v cache";
                EXPECT_EQ(download(*o), download(*o_ref)) << "attention";
            }
            if (with_norm && c.residual) EXPECT_EQ(download(*res_out), download(*res_ref)) << "residual";
        }
    }
    // K above what the norm stages in shared memory, or misaligned: not fusable.
    std::unique_ptr<Device<bf16>> d(poisoned(40000));
    cuda::GemvNorm nm;
    nm.x = nm.weight = d->p;
    EXPECT_FALSE(cuda::gemv_fused_applies(12296, &nm, d->p));
    EXPECT_TRUE(cuda::gemv_fused_applies(12288, &nm, d->p));
    EXPECT_FALSE(cuda::gemv_fused_applies(4096, &nm, d->p + 4));
    nm.x = d->p + 1;
    EXPECT_FALSE(cuda::gemv_fused_applies(4096, &nm, d->p));
    use_gemv_splitk(0);
    cublasDestroy(h);
}

// The GEMV of 2 to 8 tokens on tensor cores (gemv_mma.cu) and the batch GEMM of 9 to 64
// (batch_gemm.cu): linear()'s route for that many rows against the CPU twin and cuBLAS,
// linear_add's residual against the twin, and gemv_fused with each epilogue equal bit for bit to
// the unfused kernels over every token (linear(), then silu_mul_fused, or rope + attention
// writing the caches), each token at its own slot and position. Shapes: K not a multiple of the
// 64-column step (1000, 4104), K = 14336 (down_proj), N not a multiple of the 32-row tile, more
// tiles than SMs (blocks of several tiles; the 8B's QKV shapes, 192 tiles, one a block and up to
// two blocks an SM where the GPU has 96 to 191 SMs); 2, 5 and 8 tokens (an odd count leaves the
// mma's last column empty); 9, 16, 23, 33 and 64 (n-tiles of 8 tokens part-filled; the batch
// GEMM's steps split over clusters of as many blocks as stay resident, up to 8, and of counts
// that do not divide the steps where the GPU's GPCs allow (the 8B's o_proj, 32 tiles: 7 blocks
// on an H100), K = 4104 leaving the last block fewer).
TEST(CudaKernels, GemvOfUpToSixtyFourTokensOnTensorCores) {
    REQUIRE_GPU();
    TuningGuard guard;
    tuning.batch_gemm = true;
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    struct Case {
        int64_t K, N;
        bool bias;
        cuda::GemvEpilogue epi;
        int64_t heads = 4, kvh = 2, hd = 64;  // kRopeKv: N = (heads + 2 kvh) hd
    };
    const int64_t max_seq = 72, slots = 64;
    for (int64_t T : {2, 5, 8, 9, 16, 23, 33, 64}) {
        for (Case c : {Case{1000, 37, true, cuda::GemvEpilogue::kNone}, Case{4104, 300, false, cuda::GemvEpilogue::kNone},
                       Case{1000, 20000, false, cuda::GemvEpilogue::kNone}, Case{14336, 256, true, cuda::GemvEpilogue::kNone},
                       Case{4096, 4096, false, cuda::GemvEpilogue::kNone},  // 32 tiles
                       Case{4096, 6144, true, cuda::GemvEpilogue::kNone}, Case{4096, 6144, false, cuda::GemvEpilogue::kSwiglu},
                       Case{4096, 600, true, cuda::GemvEpilogue::kSwiglu}, Case{4096, 9000, false, cuda::GemvEpilogue::kSwiglu},
                       Case{512, 600, false, cuda::GemvEpilogue::kSwiglu}, Case{512, (4 + 2 * 2) * 64, true, cuda::GemvEpilogue::kRopeKv},
                       Case{4096, (4 + 2 * 2) * 64, false, cuda::GemvEpilogue::kRopeKv},
                       Case{4096, (32 + 2 * 8) * 128, false, cuda::GemvEpilogue::kRopeKv, 32, 8, 128}}) {
            const int64_t heads = c.heads, kvh = c.kvh, hd = c.hd;
            SCOPED_TRACE("T " + std::to_string(T) + " K " + std::to_string(c.K) + " N " + std::to_string(c.N) + " epilogue " +
                         std::to_string((int)c.epi));
            auto x = random_bf16(T * c.K), w = random_bf16(c.N * c.K, 0.05f), b = random_bf16(c.N);
            std::unique_ptr<Device<bf16>> dx(upload(x)), dw(upload(w)), db(upload(b));
            const bf16* bias = c.bias ? db->p : nullptr;
            // Unfused: the linear (this GEMV's route), then the next op.
            std::unique_ptr<Device<bf16>> z(poisoned(T * c.N)), zc(poisoned(T * c.N));
            ASSERT_TRUE(cuda::gemv_applies({T, c.K, c.N}, dx->p, dw->p));
            cuda::linear(h, {{T, c.K, c.N}, dx->p, dw->p, bias, z->p}, on(nullptr));
            cuda::linear(h, {{T, c.K, c.N}, dx->p, dw->p, bias, zc->p, nullptr, cuda::LinearRoute::kGemm}, on(nullptr));
            std::vector<float> ref(T * c.N);
            cpu::linear({T, c.K, c.N}, x.data(), w.data(), c.bias ? b.data() : nullptr, ref.data());
            expect_close(download(*z), ref, "tensor-core GEMV against the twin");
            expect_close(download(*z), download(*zc), "tensor-core GEMV against cuBLAS");
            if (T > cuda::kGemvMaxTokens && c.epi == cuda::GemvEpilogue::kNone) {  // + the residual, rounded once
                auto add = random_bf16(T * c.N);
                std::unique_ptr<Device<bf16>> dadd(upload(add)), za(poisoned(T * c.N));
                ASSERT_TRUE(cuda::linear_add({{T, c.K, c.N}, dx->p, dw->p, bias, za->p}, dadd->p, on(nullptr)));
                std::vector<float> ref_add(ref);
                for (size_t i = 0; i < ref_add.size(); ++i) ref_add[i] += add[i];
                expect_close(download(*za), ref_add, "batch GEMM + residual against the twin");
            }
            // Fused.
            ASSERT_TRUE(cuda::gemv_fused_applies(c.K, nullptr, dw->p, T));
            const int64_t out_n = c.epi == cuda::GemvEpilogue::kSwiglu ? c.N / 2 : c.epi == cuda::GemvEpilogue::kRopeKv ? heads * hd : c.N;
            std::unique_ptr<Device<bf16>> y(poisoned(T * out_n)), y_ref(poisoned(T * out_n));
            if (c.epi != cuda::GemvEpilogue::kRopeKv) {
                cuda::gemv_fused({c.K, c.N, dx->p, dw->p, bias, y->p, nullptr, c.epi, nullptr, T}, on(nullptr));
                if (c.epi == cuda::GemvEpilogue::kSwiglu) cuda::silu_mul_fused(T, c.N / 2, z->p, y_ref->p, on(nullptr));
                else CUDA_CHECK(cudaMemcpy(y_ref->p, z->p, T * c.N * 2, cudaMemcpyDeviceToDevice));
                EXPECT_EQ(download(*y), download(*y_ref));
                continue;
            }
            // Token t at slot 63 - t, position 3 + t: RoPE, the caches, then attention over them.
            cpu::RopeParams p{heads, kvh, hd, 10000.0};
            std::vector<int32_t> slot_of(T), pos_of(T);
            for (int64_t t = 0; t < T; ++t) slot_of[t] = (int32_t)(slots - 1 - t), pos_of[t] = (int32_t)(3 + t);
            std::unique_ptr<Device<float>> inv(upload_raw(cpu::rope_inv_freq(p)));
            std::unique_ptr<Device<int32_t>> slot(upload_raw(slot_of)), pos(upload_raw(pos_of));
            auto cache_init = random_bf16(slots * max_seq * kvh * hd);  // earlier positions: whatever is there
            std::unique_ptr<Device<bf16>> kc(upload(cache_init)), vc(upload(cache_init)), kc_ref(upload(cache_init)), vc_ref(upload(cache_init)),
                kr(poisoned(T * kvh * hd)), o(poisoned(T * heads * hd)), o_ref(poisoned(T * heads * hd));
            cuda::rope({p, T, pos->p, inv->p, z->p, z->p + heads * hd, y_ref->p, kr->p, c.N}, on(nullptr));
            cpu::AttentionShape s{T, heads, kvh, hd, max_seq, 0};
            cuda::attention({s, slot->p, pos->p, y_ref->p, kr->p, z->p + (heads + kvh) * hd, kc_ref->p, vc_ref->p, o_ref->p, 0, c.N}, on(nullptr));
            cuda::GemvRopeKv rk;
            rk.heads = heads, rk.kv_heads = kvh, rk.head_dim = hd, rk.max_seq = max_seq;
            rk.slot = slot->p, rk.pos = pos->p, rk.inv_freq = inv->p, rk.k_cache = kc->p, rk.v_cache = vc->p;
            cuda::gemv_fused({c.K, c.N, dx->p, dw->p, bias, y->p, nullptr, c.epi, &rk, T}, on(nullptr));
            cuda::attention({s, slot->p, pos->p, y->p, nullptr, nullptr, kc->p, vc->p, o->p}, on(nullptr));
            EXPECT_EQ(download(*y), download(*y_ref)) << "q";
            EXPECT_EQ(download(*kc), download(*kc_ref)) << "k cache";
            EXPECT_EQ(download(*vc), download(*vc_ref)) << "v cache";
            EXPECT_EQ(download(*o), download(*o_ref)) << "attention";
        }
    }
    // The norm before it at more than one token, more than 64 tokens, K not a multiple of 8, a
    // misaligned weight: not fusable; 8 tokens or fewer take no residual (linear_add).
    std::unique_ptr<Device<bf16>> d(poisoned(65 * 9000));
    cuda::GemvNorm nm;
    nm.x = nm.weight = d->p;
    EXPECT_TRUE(cuda::gemv_fused_applies(4096, nullptr, d->p, 8));
    EXPECT_FALSE(cuda::gemv_fused_applies(4096, &nm, d->p, 2));
    EXPECT_TRUE(cuda::gemv_fused_applies(4096, &nm, d->p, 1));
    EXPECT_TRUE(cuda::gemv_fused_applies(4096, nullptr, d->p, 9));
    EXPECT_TRUE(cuda::gemv_fused_applies(4096, nullptr, d->p, 64));
    EXPECT_FALSE(cuda::gemv_fused_applies(4096, nullptr, d->p, 65));
    EXPECT_FALSE(cuda::gemv_fused_applies(4096, &nm, d->p, 9));
    EXPECT_FALSE(cuda::linear_add({{8, 4096, 8}, d->p, d->p, nullptr, d->p}, d->p, on(nullptr)));
    tuning.batch_gemm = false;  // cuBLAS past 8 tokens: no batch GEMM, so no residual epilogue of its own
    EXPECT_FALSE(cuda::linear_takes_gemv({9, 4096, 8}, d->p, d->p, tuning));
    EXPECT_FALSE(cuda::linear_add({{9, 4096, 8}, d->p, d->p, nullptr, d->p}, d->p, on(nullptr)));
    EXPECT_TRUE(cuda::linear_takes_gemv({8, 4096, 8}, d->p, d->p, tuning));
    EXPECT_FALSE(cuda::gemv_fused_applies(4100, nullptr, d->p, 2));
    EXPECT_FALSE(cuda::gemv_fused_applies(4096, nullptr, d->p + 4, 2));
    cublasDestroy(h);
}

// The all-reduce fused into the GEMVs (cuda::ExchangeIn), two and four ranks emulated on one GPU
// (each rank's exchange buffer is device memory either way; the two-GPU path is GpuRun's tp=2
// decode test): each rank's gemv_push, then each rank's norm GEMV summing the exchange, must
// equal bit for bit the unfused path: linear(), the sum in rank order rounded once (as the
// one-shot all-reduce), then the fused norm GEMV on that sum. Every form of the pushing GEMV: a
// warp a row (the default), 2 and 4 warps a row (backend.tuning.gemv_splitk, which linear() follows too);
// K 512 to 7168, N = 1000 to 12288 (the consumer needs N % 8 == 0). Two forwards each, the
// epoch advanced between them, so both buffers and the epoch are used. Then a sum whose second
// rank never pushes gives up after the timeout, naming rank 1.
TEST(CudaKernels, FusedAllReduceInTheGemvsEqualsTheUnfusedPath) {
    REQUIRE_GPU();
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    const int64_t units = 8192;
    const float eps = 1e-5f;
    struct Case {
        int64_t K, N;
        bool bias;
        cuda::GemvEpilogue next;
    };
    const Case cases[] = {{512, 1000, true, cuda::GemvEpilogue::kNone}, {7168, 1000, true, cuda::GemvEpilogue::kNone}, {2048, 4096, false, cuda::GemvEpilogue::kSwiglu},
                          {7168, 4096, false, cuda::GemvEpilogue::kNone}, {512, 12288, false, cuda::GemvEpilogue::kNone}};  // (the widest sum: 72 KiB of shared memory)
    for (const int world : {2, 4}) {
        EmulatedExchange ex(world, units);
        std::vector<cuda::OneShotPeers>& peers = ex.peers;
        int* error = ex.error;
        for (const char* splitk : {"1", "2", "4"}) {
            if (world == 4 && std::string(splitk) != "1") continue;  // the pushing forms are world 2's
            use_gemv_splitk(std::atoi(splitk));
            for (int forward = 0; forward < 2; ++forward) {
                uint32_t seq = 0;
                for (const Case& c : cases) {
                    SCOPED_TRACE("world " + std::to_string(world) + ", warps a row " + splitk + ", forward " + std::to_string(forward) + " K " + std::to_string(c.K) + " N " + std::to_string(c.N));
                    const int64_t next_n = 600;  // the next GEMV's outputs (SwiGLU: half of them)
                    auto res = random_bf16(c.N), nw = random_bf16(c.N), w2 = random_bf16(next_n * c.N, 0.05f), b = random_bf16(c.N);
                    std::unique_ptr<Device<bf16>> dres(upload(res)), dnw(upload(nw)), dw2(upload(w2)), db(upload(b));
                    std::vector<std::unique_ptr<Device<bf16>>> dx(world), dw(world);
                    std::vector<std::vector<float>> y(world);
                    for (int d = 0; d < world; ++d) {
                        dx[d].reset(upload(random_bf16(c.K)));
                        dw[d].reset(upload(random_bf16(c.N * c.K, 0.05f)));
                        ASSERT_TRUE(cuda::gemv_push_applies(c.K, c.N, dx[d]->p, dw[d]->p, peers[d]));
                        std::unique_ptr<Device<bf16>> yd(poisoned(c.N));
                        cuda::linear(h, {{1, c.K, c.N}, dx[d]->p, dw[d]->p, c.bias ? db->p : nullptr, yd->p}, on(nullptr));
                        y[d] = download(*yd);
                    }
                    std::vector<float> reduced(c.N);
                    for (int64_t i = 0; i < c.N; ++i) {
                        float sum = 0;
                        for (int d = 0; d < world; ++d) sum += y[d][i];
                        reduced[i] = bf16_to_f32(f32_to_bf16(sum));
                    }
                    std::unique_ptr<Device<bf16>> dred(upload(reduced));
                    const int64_t out_n = c.next == cuda::GemvEpilogue::kSwiglu ? next_n / 2 : next_n;
                    // The unfused reference: the fused norm GEMV on the reduced sum.
                    cuda::GemvNorm nm;
                    nm.x = dred->p, nm.residual = dres->p, nm.weight = dnw->p, nm.eps = eps;
                    std::unique_ptr<Device<bf16>> ref(poisoned(out_n)), res_ref(poisoned(c.N));
                    nm.residual_out = res_ref->p;
                    cuda::gemv_fused({c.N, next_n, nullptr, dw2->p, nullptr, ref->p, &nm, c.next, nullptr}, on(nullptr));
                    // Fused: every rank pushes, then every rank sums.
                    for (int d = 0; d < world; ++d)
                        cuda::gemv_push({c.K, c.N, dx[d]->p, dw[d]->p, c.bias ? db->p : nullptr, seq}, peers[d], on(nullptr));
                    for (int d = 0; d < world; ++d) {
                        cuda::GemvNorm fused = nm;
                        fused.x = nullptr;
                        fused.sum = cuda::exchange_in(peers[d], seq);
                        std::unique_ptr<Device<bf16>> out(poisoned(out_n)), res_out(poisoned(c.N));
                        fused.residual_out = res_out->p;
                        ASSERT_TRUE(cuda::gemv_fused_applies(c.N, &fused, dw2->p));
                        cuda::gemv_fused({c.N, next_n, nullptr, dw2->p, nullptr, out->p, &fused, c.next, nullptr}, on(nullptr));
                        EXPECT_EQ(download(*out), download(*ref)) << "rank " << d;
                        EXPECT_EQ(download(*res_out), download(*res_ref)) << "rank " << d << ": residual";
                        EXPECT_EQ(error[d], 0);
                    }
                    ++seq;
                }
                for (int d = 0; d < world; ++d) cuda::exchange_advance(peers[d], seq, on(nullptr));
            }
        }
        use_gemv_splitk(0);
        if (world != 2) continue;
        // Wider than the buffers, or odd: not pushed.
        std::unique_ptr<Device<bf16>> big(poisoned(2 * units * 512 + 8));
        EXPECT_FALSE(cuda::gemv_push_applies(512, 2 * units + 2, big->p, big->p, peers[0]));
        EXPECT_FALSE(cuda::gemv_push_applies(512, 1001, big->p, big->p, peers[0]));
        // Rank 1 never pushes: rank 0's sum waits 50 ms, then names rank 1 (its own part is there).
        peers[0].timeout_ns = 50'000'000;
        std::unique_ptr<Device<bf16>> x(upload(random_bf16(512))), w(upload(random_bf16(512 * 512, 0.05f))), out(poisoned(512));
        cuda::gemv_push({512, 512, x->p, w->p, nullptr, 0}, peers[0], on(nullptr));
        cuda::GemvNorm nm;
        nm.weight = x->p, nm.eps = eps, nm.sum = cuda::exchange_in(peers[0], 0);
        cuda::gemv_fused({512, 512, nullptr, w->p, nullptr, out->p, &nm, cuda::GemvEpilogue::kNone, nullptr}, on(nullptr));
        CUDA_CHECK(cudaDeviceSynchronize());
        EXPECT_EQ(error[0], 2) << "rank 1 + 1";
    }
    cublasDestroy(h);
}

// The decode step's order on one rank, no host sync between: a summing GEMV A (norm, SwiGLU)
// writes the new residual, the pushing GEMV of the next exchange follows, then the summing GEMV
// B reads A's residual. B starts copying that residual before its wait for the push (see
// ExchangeIn): the residual must be A's, two kernels back, never what the buffer held before
// (poison). Rank 1 of two is emulated: its parts are pushed first. Two forwards, the epoch
// advanced between them; the result equals the unfused path's bit for bit.
TEST(CudaKernels, SummingGemvReadsTheResidualWrittenTwoKernelsBack) {
    REQUIRE_GPU();
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    const int64_t H = 2048, I = 2048, units = 4096;  // hidden, SwiGLU width
    const float eps = 1e-5f;
    EmulatedExchange ex(2, units);
    std::vector<cuda::OneShotPeers>& peers = ex.peers;
    const int* error = ex.error;
    // Exchange 0: each rank's o-like part [H]; exchange 1: each rank's down-like part [H] from
    // the SwiGLU output. Rank 0's down input is A's output, so its push follows A.
    std::unique_ptr<Device<bf16>> w_o[2], x_o[2], w_down[2], x_down1;
    for (int d = 0; d < 2; ++d) w_o[d].reset(upload(random_bf16(H * 256, 0.05f))), x_o[d].reset(upload(random_bf16(256)));
    for (int d = 0; d < 2; ++d) w_down[d].reset(upload(random_bf16(H * I, 0.05f)));
    x_down1.reset(upload(random_bf16(I)));
    std::unique_ptr<Device<bf16>> w_gu(upload(random_bf16(2 * I * H, 0.05f))), w_next(upload(random_bf16(512 * H, 0.05f)));
    std::unique_ptr<Device<bf16>> nw1(upload(random_bf16(H))), nw2(upload(random_bf16(H))), res0(upload(random_bf16(H)));
    auto part = [&](const Device<bf16>& x, const Device<bf16>& w, int64_t K) {
        std::unique_ptr<Device<bf16>> y(poisoned(H));
        cuda::linear(h, {{1, K, H}, x.p, w.p, nullptr, y->p}, on(nullptr));
        return download(*y);
    };
    auto reduced = [&](const std::vector<float>& a, const std::vector<float>& b) {
        std::vector<float> r(H);
        for (int64_t i = 0; i < H; ++i) r[i] = bf16_to_f32(f32_to_bf16(a[i] + b[i]));
        return std::unique_ptr<Device<bf16>>(upload(r));
    };
    for (int forward = 0; forward < 2; ++forward) {
        SCOPED_TRACE("forward " + std::to_string(forward));
        // The unfused path: A on the reduced exchange 0, then B on the reduced exchange 1.
        auto sum0 = reduced(part(*x_o[0], *w_o[0], 256), part(*x_o[1], *w_o[1], 256));
        cuda::GemvNorm na;
        na.x = sum0->p, na.residual = res0->p, na.weight = nw1->p, na.eps = eps;
        std::unique_ptr<Device<bf16>> act_ref(poisoned(I)), res1_ref(poisoned(H)), out_ref(poisoned(512));
        na.residual_out = res1_ref->p;
        cuda::gemv_fused({H, 2 * I, nullptr, w_gu->p, nullptr, act_ref->p, &na, cuda::GemvEpilogue::kSwiglu, nullptr}, on(nullptr));
        auto sum1 = reduced(part(*act_ref, *w_down[0], I), part(*x_down1, *w_down[1], I));
        cuda::GemvNorm nb;
        nb.x = sum1->p, nb.residual = res1_ref->p, nb.weight = nw2->p, nb.eps = eps;
        std::unique_ptr<Device<bf16>> res2_ref(poisoned(H));
        nb.residual_out = res2_ref->p;
        cuda::gemv_fused({H, 512, nullptr, w_next->p, nullptr, out_ref->p, &nb, cuda::GemvEpilogue::kNone, nullptr}, on(nullptr));
        // Fused: rank 1's parts first, then rank 0's chain with no sync: push 0, A, push 1, B.
        std::unique_ptr<Device<bf16>> act(poisoned(I)), res1(poisoned(H)), res2(poisoned(H)), out(poisoned(512));
        cuda::gemv_push({256, H, x_o[1]->p, w_o[1]->p, nullptr, 0}, peers[1], on(nullptr));
        cuda::gemv_push({I, H, x_down1->p, w_down[1]->p, nullptr, 1}, peers[1], on(nullptr));
        CUDA_CHECK(cudaDeviceSynchronize());
        cuda::gemv_push({256, H, x_o[0]->p, w_o[0]->p, nullptr, 0}, peers[0], on(nullptr));
        cuda::GemvNorm fa = na;
        fa.x = nullptr, fa.sum = cuda::exchange_in(peers[0], 0), fa.residual_out = res1->p;
        cuda::gemv_fused({H, 2 * I, nullptr, w_gu->p, nullptr, act->p, &fa, cuda::GemvEpilogue::kSwiglu, nullptr}, on(nullptr));
        cuda::gemv_push({I, H, act->p, w_down[0]->p, nullptr, 1}, peers[0], on(nullptr));
        cuda::GemvNorm fb = nb;
        fb.x = nullptr, fb.sum = cuda::exchange_in(peers[0], 1), fb.residual = res1->p, fb.residual_out = res2->p;
        cuda::gemv_fused({H, 512, nullptr, w_next->p, nullptr, out->p, &fb, cuda::GemvEpilogue::kNone, nullptr}, on(nullptr));
        EXPECT_EQ(download(*res1), download(*res1_ref));
        EXPECT_EQ(download(*res2), download(*res2_ref));
        EXPECT_EQ(download(*out), download(*out_ref));
        EXPECT_EQ(error[0], 0);
        for (int d = 0; d < 2; ++d) cuda::exchange_advance(peers[d], 2, on(nullptr));
        CUDA_CHECK(cudaDeviceSynchronize());
        x_o[0].reset(upload(random_bf16(256))), x_o[1].reset(upload(random_bf16(256)));  // the next forward's parts
    }
    cublasDestroy(h);
}

TEST(CudaKernels, EmbeddingOfALocalVocabSlice) {
    REQUIRE_GPU();
    cpu::EmbeddingShape s{9, 50, 64, 25};
    auto table = random_bf16(s.rows * s.width);
    std::vector<int32_t> ids = {0, 24, 25, 30, 74, 75, 99, 40, 26};
    std::unique_ptr<Device<bf16>> dt(upload(table)), dy(poisoned(s.tokens * s.width));
    std::unique_ptr<Device<int32_t>> di(upload_raw(ids));
    cuda::embedding(s, di->p, dt->p, dy->p, on(nullptr));
    std::vector<float> ref(s.tokens * s.width);
    cpu::embedding(s, ids.data(), table.data(), ref.data());
    EXPECT_EQ(download(*dy), ref);  // a copy: exact
}

TEST(CudaKernels, RmsNormAndFusedResidualAdd) {
    REQUIRE_GPU();
    const int64_t T = 5, W = 4096;
    auto x = random_bf16(T * W), res = random_bf16(T * W, 3.0f), w = random_bf16(W);
    std::unique_ptr<Device<bf16>> dx(upload(x)), dw(upload(w)), dy(poisoned(T * W)), dres(upload(res)), dy2(poisoned(T * W));
    cuda::rmsnorm({T, W, 1e-5f, dx->p, dw->p, dy->p}, on(nullptr));
    std::vector<float> ref(T * W);
    cpu::rmsnorm(T, W, 1e-5f, x.data(), w.data(), ref.data());
    expect_close(download(*dy), ref, "rmsnorm");
    cuda::add_rmsnorm({T, W, 1e-6f, dx->p, dw->p, dy2->p}, dres->p, dres->p, on(nullptr));
    std::vector<float> res_ref = res, ref2(T * W);
    cpu::add_rmsnorm(T, W, 1e-6f, x.data(), res_ref.data(), w.data(), ref2.data());
    expect_close(download(*dres), res_ref, "add_rmsnorm residual");
    expect_close(download(*dy2), ref2, "add_rmsnorm output");
}

TEST(CudaKernels, RopeDefaultAndLlama3) {
    REQUIRE_GPU();
    for (bool llama3 : {false, true}) {
        cpu::RopeParams p{4, 2, 128, 500000.0};
        p.llama3 = llama3;
        p.factor = 8;
        p.freq_dtype = llama3 ? cpu::RopeFreqDtype::kBF16 : cpu::RopeFreqDtype::kF32;
        const int64_t T = 6;
        std::vector<int32_t> pos = {0, 1, 2, 100, 4000, 8191};
        auto q = random_bf16(T * p.heads * p.head_dim), k = random_bf16(T * p.kv_heads * p.head_dim);
        std::vector<float> inv = cpu::rope_inv_freq(p);
        std::unique_ptr<Device<bf16>> dq(upload(q)), dk(upload(k));
        std::unique_ptr<Device<int32_t>> dp(upload_raw(pos));
        std::unique_ptr<Device<float>> di(upload_raw(inv));
        // Also from column slices of one fused [q | k | pad] buffer, as the executor's split views.
        const int64_t qw = p.heads * p.head_dim, kw = p.kv_heads * p.head_dim, stride = qw + kw + 8;
        std::vector<float> fused(T * stride, 0.0f);
        for (int64_t t = 0; t < T; ++t) {
            std::copy(q.begin() + t * qw, q.begin() + (t + 1) * qw, fused.begin() + t * stride);
            std::copy(k.begin() + t * kw, k.begin() + (t + 1) * kw, fused.begin() + t * stride + qw);
        }
        std::unique_ptr<Device<bf16>> dfused(upload(fused)), dq2(poisoned(T * qw)), dk2(poisoned(T * kw));
        // And with a stride of 4 elements more than a multiple of 8: the one-element-a-thread kernel.
        const int64_t odd = qw + kw + 4;
        std::vector<float> fused_odd(T * odd, 0.0f);
        for (int64_t t = 0; t < T; ++t) std::copy(fused.begin() + t * stride, fused.begin() + t * stride + qw + kw, fused_odd.begin() + t * odd);
        std::unique_ptr<Device<bf16>> dodd(upload(fused_odd)), dq3(poisoned(T * qw)), dk3(poisoned(T * kw));
        cuda::rope({p, T, dp->p, di->p, dq->p, dk->p, dq->p, dk->p}, on(nullptr));
        cuda::rope({p, T, dp->p, di->p, dfused->p, dfused->p + qw, dq2->p, dk2->p, stride}, on(nullptr));
        cuda::rope({p, T, dp->p, di->p, dodd->p, dodd->p + qw, dq3->p, dk3->p, odd}, on(nullptr));
        cpu::rope(p, T, pos.data(), q.data(), k.data());
        expect_close(download(*dq), q, "rope q");
        expect_close(download(*dk), k, "rope k");
        EXPECT_EQ(download(*dq2), download(*dq)) << "strided rope q";
        EXPECT_EQ(download(*dk2), download(*dk)) << "strided rope k";
        EXPECT_EQ(download(*dq3), download(*dq)) << "rope q, one element a thread";
        EXPECT_EQ(download(*dk3), download(*dk)) << "rope k, one element a thread";
    }
}

// RoPE writing K and V straight into the KV cache (RopeKvCache, as the executor runs a fused
// QKV's rope where no decode GEMV takes it) against RoPE, then attention()'s own KV write: q and
// both caches bit for bit, from strided [q | k | v | pad] rows as the split's views, the tokens
// at scattered slots and positions; the rows of other positions untouched.
TEST(CudaKernels, RopeWritingTheKvCacheEqualsRopeThenTheKvWrite) {
    REQUIRE_GPU();
    struct Shape {
        int64_t heads, kv_heads, hd;
    };
    for (auto [heads, kv_heads, hd] : {Shape{8, 2, 64}, {8, 2, 128}, {32, 8, 128}}) {  // the last: a block's rows in 3 passes
        cpu::RopeParams p{heads, kv_heads, hd, 500000.0};
        const int64_t T = 11, slots = 4, max_seq = 40, qw = p.heads * hd, kw = p.kv_heads * hd, stride = qw + 2 * kw + 8;
        std::vector<int32_t> slot, pos;
        for (int64_t t = 0; t < T; ++t) slot.push_back((int32_t)(t % slots)), pos.push_back((int32_t)((t * 7 + 3) % max_seq));
        auto qkv = random_bf16(T * stride), cache0 = random_bf16(slots * max_seq * kw);
        std::unique_ptr<Device<bf16>> dqkv(upload(qkv));
        std::unique_ptr<Device<int32_t>> ds(upload_raw(slot)), dp(upload_raw(pos));
        std::unique_ptr<Device<float>> di(upload_raw(cpu::rope_inv_freq(p)));
        std::vector<std::vector<float>> got;  // q, k cache, v cache: the two-kernel way, then the fused one
        for (bool fused : {false, true}) {
            std::unique_ptr<Device<bf16>> dq(poisoned(T * qw)), dk(poisoned(T * kw)), kc(upload(cache0)), vc(upload(cache0));
            cuda::RopeArgs ra{p, T, dp->p, di->p, dqkv->p, dqkv->p + qw, dq->p, dk->p, stride};
            if (fused) {
                ra.cache = {kc->p, vc->p, dqkv->p + qw + kw, stride, ds->p, max_seq};
                ASSERT_TRUE(cuda::rope_kv_applies(ra));
            }
            cuda::rope(ra, on(nullptr));
            if (!fused) {  // attention()'s KV write (its output not compared here)
                std::unique_ptr<Device<bf16>> dout(poisoned(T * qw));
                cuda::attention({{T, p.heads, p.kv_heads, hd, max_seq, 0}, ds->p, dp->p, dq->p, dk->p, dqkv->p + qw + kw, kc->p, vc->p,
                                 dout->p, 0, stride},
                                on(nullptr));
            }
            got.push_back(download(*dq)), got.push_back(download(*kc)), got.push_back(download(*vc));
        }
        const std::string what = std::to_string(heads) + " heads, head_dim " + std::to_string(hd);
        EXPECT_EQ(got[0], got[3]) << "q, " << what;
        EXPECT_EQ(got[1], got[4]) << "k cache, " << what;
        EXPECT_EQ(got[2], got[5]) << "v cache, " << what;
        EXPECT_NE(got[4], cache0) << "the fused k cache was written, " << what;
        EXPECT_NE(got[5], cache0) << "the fused v cache was written, " << what;
    }
}

// Several tokens of one sequence in a launch (keys of the same forward), then a decode token each:
// the one-pass kernel (attention_one_pass) and the two-pass kernels.
TEST(CudaKernels, AttentionPrefillThenDecodeWithAndWithoutWindow) {
    REQUIRE_GPU();
    TuningGuard guard;
    for (int64_t window : {0, 4})
        for (bool stream : {true, false}) {
            tuning.attention_one_pass = stream;
            const int64_t heads = 8, kv_heads = 2, hd = 64, max_seq = 32, slots = 2, kvw = kv_heads * hd;
            // Prefill: slot 0 gets 9 tokens, slot 1 gets 5; then one decode token each.
            std::vector<int32_t> slot, pos;
            for (int i = 0; i < 9; ++i) slot.push_back(0), pos.push_back(i);
            for (int i = 0; i < 5; ++i) slot.push_back(1), pos.push_back(i);
            std::vector<float> k_cache(slots * max_seq * kvw, 0.0f), v_cache = k_cache;
            std::unique_ptr<Device<bf16>> dkc(upload(k_cache)), dvc(upload(v_cache));
            for (int step = 0; step < 2; ++step) {
                int64_t T = (int64_t)slot.size();
                auto q = random_bf16(T * heads * hd), k = random_bf16(T * kvw), v = random_bf16(T * kvw);
                std::unique_ptr<Device<bf16>> dq(upload(q)), dk(upload(k)), dv(upload(v)), dout(poisoned(T * heads * hd));
                std::unique_ptr<Device<int32_t>> ds(upload_raw(slot)), dp(upload_raw(pos));
                cpu::AttentionShape s{T, heads, kv_heads, hd, max_seq, window};
                cuda::attention({s, ds->p, dp->p, dq->p, dk->p, dv->p, dkc->p, dvc->p, dout->p}, on(nullptr));
                std::vector<float> ref(T * heads * hd);
                cpu::attention(s, slot.data(), pos.data(), q.data(), k.data(), v.data(), k_cache.data(), v_cache.data(), ref.data());
                expect_close(download(*dout), ref, std::string(window ? "attention (window 4)" : "attention") + (stream ? ", one pass" : ", two passes"));
                slot = {0, 1};
                pos = {9, 5};
            }
        }
}

// Decode tokens: with as many (token, KV head) pairs as SMs, one block for the G query heads of
// a KV head (GQA), bit for bit the per-head kernel (attention_gqa = false; as many (token, head)
// pairs, so no split either); fewer tokens take the per-head kernel, or the split kernel for few
// pairs (2 and 8 tokens); head_dim 256 has no GQA form (the per-head kernel throughout). Against
// the CPU twin, and as a decode batch (AttentionArgs::decode),
// where the cached rows but the token's own are loaded before the kernel waits, bit for bit the same: the token's own row, a stale random row in the cache until attention() writes
// it, must come in after the write. Position 0 leaves all but one block of a cluster without keys.
TEST(CudaKernels, DecodeAttentionForAKvHeadsQueryGroupMatchesThePerHeadKernelAndTwin) {
    REQUIRE_GPU();
    TuningGuard guard;
    tuning.attention_one_pass = false;  // the two-pass kernels (the one-pass kernel: the next test)
    int sms = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int64_t kv_heads = 2, max_seq = 300;
    for (int64_t hd : {64, 128, 256})
        for (int64_t G : {2, 4, 8})
            for (int64_t window : {0, 50})
                for (int64_t T : {(int64_t)sms / 2 + 8, (int64_t)2, (int64_t)8, (int64_t)sms / 3}) {
                    const int64_t heads = kv_heads * G, kvw = kv_heads * hd;
                    const std::string what = "hd " + std::to_string(hd) + " G " + std::to_string(G) + " window " + std::to_string(window) +
                                             ", " + std::to_string(T) + " tokens";
                    std::vector<int32_t> slot, pos;
                    for (int64_t t = 0; t < T; ++t) slot.push_back((int32_t)t), pos.push_back((int32_t)(t == 0 ? 0 : (t * 37 + 11) % max_seq));
                    const std::vector<float> k_cache0 = random_bf16(T * max_seq * kvw), v_cache0 = random_bf16(T * max_seq * kvw);
                    auto q = random_bf16(T * heads * hd), k = random_bf16(T * kvw), v = random_bf16(T * kvw);
                    std::unique_ptr<Device<bf16>> dq(upload(q)), dk(upload(k)), dv(upload(v));
                    std::unique_ptr<Device<int32_t>> ds(upload_raw(slot)), dp(upload_raw(pos));
                    std::vector<std::vector<float>> outs;
                    for (int run = 0; run < 3; ++run) {  // as chosen, attention_gqa = false, as chosen for a decode batch
                        std::unique_ptr<Device<bf16>> dkc(upload(k_cache0)), dvc(upload(v_cache0)), dout(poisoned(T * heads * hd));
                        cpu::AttentionShape s{T, heads, kv_heads, hd, max_seq, window};
                        tuning.attention_gqa = run != 1;
                        cuda::AttentionArgs aa{s, ds->p, dp->p, dq->p, dk->p, dv->p, dkc->p, dvc->p, dout->p};
                        aa.decode = run == 2;
                        cuda::attention(aa, on(nullptr));
                        outs.push_back(download(*dout));
                    }
                    tuning.attention_gqa = true;
                    std::vector<float> kc = k_cache0, vc = v_cache0, ref(T * heads * hd);
                    cpu::AttentionShape s{T, heads, kv_heads, hd, max_seq, window};
                    cpu::attention(s, slot.data(), pos.data(), q.data(), k.data(), v.data(), kc.data(), vc.data(), ref.data());
                    expect_close(outs[0], ref, "decode attention, " + what);
                    EXPECT_EQ(outs[0], outs[1]) << "GQA kernel against the per-head kernel, " << what;
                    EXPECT_EQ(outs[0], outs[2]) << "decode attention with the early loads, " << what;
                }
}

// The one-pass decode attention (attention_one_pass; decode_splits = 1 so that few tokens take it
// too): blocks of 1, 2 and 4 query heads (4 where the tokens still give every SM a block; G = 8
// as two blocks of 4), contexts of one chunk to 175 (past the ring of three a warp),
// positions on and either side of a chunk's edge, a window. Against the CPU twin; as a decode
// batch (the cached rows but each token's own copied before the wait, its own row after: a stale
// random row in the cache until attention() writes it) bit for bit the same. On tensor cores
// (attention_mma, head_dim 64 and 128) and on CUDA cores, within the same tolerance: the tensor
// cores' P rounded to bf16 for its product adds about 2^-9 relative a weight.
TEST(CudaKernels, DecodeAttentionInOnePassMatchesTwin) {
    REQUIRE_GPU();
    int sms = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    TuningGuard guard;
    tuning.decode_splits = 1;
    const int64_t kv_heads = 2, max_seq = 700;
    for (int64_t hd : {64, 128, 256})
        for (int64_t G : {1, 2, 4, 8})
            for (int64_t window : {0, 300})
                for (int64_t T : {(int64_t)2, (int64_t)40, (int64_t)sms / 2 + 8, (int64_t)sms + 8}) {
                    if (window && hd != 128) continue;
                    // sms + 8 tokens: more blocks than two an SM at every query-head group, so the
                    // four-warp form; fewer tokens the eight-warp one (four-warp too at 8 query
                    // heads a KV head and sms / 2 + 8 tokens)
                    if (T == sms + 8 && hd != 128) continue;
                    const int64_t heads = kv_heads * G, kvw = kv_heads * hd;
                    const std::string what = "hd " + std::to_string(hd) + " G " + std::to_string(G) + " window " + std::to_string(window) +
                                             ", " + std::to_string(T) + " tokens";
                    const int32_t edges[] = {0, 37, 7, 8, 15, 16, (int32_t)max_seq - 1, 63};
                    std::vector<int32_t> slot, pos;
                    for (int64_t t = 0; t < T; ++t)
                        slot.push_back((int32_t)t), pos.push_back(t < 8 ? edges[t] : (int32_t)((t * 97 + 11) % max_seq));
                    const std::vector<float> k_cache0 = random_bf16(T * max_seq * kvw), v_cache0 = random_bf16(T * max_seq * kvw);
                    auto q = random_bf16(T * heads * hd), k = random_bf16(T * kvw), v = random_bf16(T * kvw);
                    std::unique_ptr<Device<bf16>> dq(upload(q)), dk(upload(k)), dv(upload(v));
                    std::unique_ptr<Device<int32_t>> ds(upload_raw(slot)), dp(upload_raw(pos));
                    std::vector<float> kc = k_cache0, vc = v_cache0, ref(T * heads * hd);
                    const cpu::AttentionShape s{T, heads, kv_heads, hd, max_seq, window};
                    cpu::attention(s, slot.data(), pos.data(), q.data(), k.data(), v.data(), kc.data(), vc.data(), ref.data());
                    for (bool mma : {true, false}) {  // head_dim 256: CUDA cores either way
                        if (!mma && hd == 256) continue;
                        tuning.attention_mma = mma;
                        const std::string form = what + (mma && hd != 256 ? ", tensor cores" : ", CUDA cores");
                        std::vector<std::vector<float>> outs;
                        for (bool decode : {false, true}) {
                            std::unique_ptr<Device<bf16>> dkc(upload(k_cache0)), dvc(upload(v_cache0)), dout(poisoned(T * heads * hd));
                            cuda::AttentionArgs aa{s, ds->p, dp->p, dq->p, dk->p, dv->p, dkc->p, dvc->p, dout->p};
                            aa.decode = decode;
                            cuda::attention(aa, on(nullptr));
                            outs.push_back(download(*dout));
                        }
                        expect_close(outs[0], ref, "one-pass decode attention, " + form);
                        EXPECT_EQ(outs[0], outs[1]) << "one-pass decode attention with the early loads, " << form;
                    }
                }
}

// A decode step's RoPE done by the one-pass attention (AttentionRope, as the executor runs a
// rope the attention takes in) against RoPE writing the caches, then the attention: the output
// and both caches bit for bit, from strided [q | k | v | pad] rows as the QKV split's views.
// Blocks of 1, 2 and 4 query heads (the KV head's row written by each of its blocks), eight- and
// four-warp blocks, positions past the ring of three chunks a warp (the own row read back from the
// cache), a window; with and without the early loads; on tensor cores (attention_mma) and not.
// Where it cannot (head_dim 256, a step that is not a decode batch, the split kernel's few tokens)
// attention_rope_applies says no; the executor takes it only where attention_rope_pays (on tensor
// cores, or in four-warp blocks).
TEST(CudaKernels, DecodeAttentionTakingRopeEqualsRopeThenAttention) {
    REQUIRE_GPU();
    int sms = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    TuningGuard guard;
    const int64_t kv_heads = 2, max_seq = 700;
    for (int64_t hd : {64, 128})
        for (int64_t G : {1, 2, 4, 8})
            for (int64_t T : {(int64_t)2, (int64_t)40, (int64_t)sms + 8})
                for (int form = 0; form < 4; ++form) {  // with and without the early loads, on tensor cores and not
                    const bool early = form & 1, mma = form & 2;
                    tuning.decode_splits = 1;
                    tuning.attention_early = early;
                    tuning.attention_mma = mma;
                    const int64_t window = G == 4 && T == 40 ? 300 : 0;
                    const int64_t heads = kv_heads * G, qw = heads * hd, kvw = kv_heads * hd, stride = qw + 2 * kvw + 8;
                    const std::string what = "hd " + std::to_string(hd) + " G " + std::to_string(G) + ", " + std::to_string(T) + " tokens" +
                                             (early ? ", early loads" : "") + (window ? ", window" : "") + (mma ? ", tensor cores" : "");
                    cpu::RopeParams p{heads, kv_heads, hd, 500000.0};
                    const int32_t edges[] = {0, 7, 8, 191, 192, 193, (int32_t)max_seq - 1, 400};
                    std::vector<int32_t> slot, pos;
                    for (int64_t t = 0; t < T; ++t)
                        slot.push_back((int32_t)t), pos.push_back(t < 8 ? edges[t] : (int32_t)((t * 97 + 11) % max_seq));
                    const std::vector<float> qkv = random_bf16(T * stride), cache0 = random_bf16(T * max_seq * kvw);
                    std::unique_ptr<Device<bf16>> dqkv(upload(qkv));
                    std::unique_ptr<Device<int32_t>> ds(upload_raw(slot)), dp(upload_raw(pos));
                    std::unique_ptr<Device<float>> di(upload_raw(cpu::rope_inv_freq(p)));
                    const cpu::AttentionShape shape{T, heads, kv_heads, hd, max_seq, window};
                    std::vector<std::vector<float>> got;  // out, k cache, v cache: rope then attention, then the attention alone
                    for (bool taken : {false, true}) {
                        std::unique_ptr<Device<bf16>> kc(upload(cache0)), vc(upload(cache0)), dq(poisoned(T * qw)), dout(poisoned(T * qw));
                        cuda::AttentionArgs aa{shape, ds->p, dp->p, dq->p, nullptr, nullptr, kc->p, vc->p, dout->p};
                        aa.decode = true;
                        if (taken) {
                            aa.q = dqkv->p, aa.k = dqkv->p + qw, aa.v = dqkv->p + qw + kvw;
                            aa.k_stride = aa.v_stride = stride;
                            aa.rope = {di->p, stride};
                            ASSERT_TRUE(cuda::attention_rope_applies(aa, tuning)) << what;
                            EXPECT_EQ(cuda::attention_rope_pays(aa, tuning), T == sms + 8 || mma) << "four-warp blocks or tensor cores, " << what;
                        } else {
                            cuda::RopeArgs ra{p, T, dp->p, di->p, dqkv->p, dqkv->p + qw, dq->p, nullptr, stride};
                            ra.cache = {kc->p, vc->p, dqkv->p + qw + kvw, stride, ds->p, max_seq};
                            ASSERT_TRUE(cuda::rope_kv_applies(ra));
                            cuda::rope(ra, on(nullptr));
                        }
                        cuda::attention(aa, on(nullptr));
                        got.push_back(download(*dout)), got.push_back(download(*kc)), got.push_back(download(*vc));
                    }
                    EXPECT_EQ(got[0], got[3]) << "attention output, " << what;
                    EXPECT_EQ(got[1], got[4]) << "k cache, " << what;
                    EXPECT_EQ(got[2], got[5]) << "v cache, " << what;
                    EXPECT_NE(got[4], cache0) << "the k cache was written, " << what;
                    if (hd == 128 && G == 4 && T == 40 && !early) {  // where it cannot
                        cuda::AttentionArgs aa{shape, ds->p, dp->p, dqkv->p, dqkv->p + qw, dqkv->p + qw + kvw, nullptr, nullptr, nullptr};
                        aa.k_stride = aa.v_stride = stride;
                        aa.rope = {di->p, stride};
                        aa.decode = true;
                        EXPECT_TRUE(cuda::attention_rope_applies(aa, tuning));
                        aa.decode = false;
                        EXPECT_FALSE(cuda::attention_rope_applies(aa, tuning)) << "not a decode batch";
                        aa.decode = true;
                        tuning.decode_splits = 8;
                        aa.shape.tokens = 2;
                        EXPECT_FALSE(cuda::attention_rope_applies(aa, tuning)) << "two tokens take the split kernel";
                        aa.shape.tokens = T, aa.shape.head_dim = 256, aa.shape.heads = heads / 2, aa.shape.kv_heads = kv_heads / 2;
                        EXPECT_FALSE(cuda::attention_rope_applies(aa, tuning)) << "head_dim 256";
                    }
                }
}

// Decode tokens over long cached contexts: few (token, head) pairs take the split kernel (the
// keys over the blocks of a cluster, combined through distributed shared memory), many (40
// tokens) the one-pass kernel (attention_one_pass; the two-pass kernels' own test is above). Position 0 leaves all but one block of its cluster without keys;
// the window cuts the visible keys below what the splits cover. As a decode batch, the kernels
// take their early loads (the cached K and V rows but the token's own, read before the
// kernel waits): its own row, in the cache as a stale random row until attention() writes it,
// must come in after the write. Reference: the CPU twin, with the tolerance of the other
// attention tests (the split changes only the summation order).
TEST(CudaKernels, DecodeAttentionSplitAcrossAClusterMatchesTwin) {
    REQUIRE_GPU();
    for (int64_t hd : {64, 128, 256})
        for (int64_t window : {0, 300})
            for (int64_t T : {1, 3, 40}) {
                const int64_t heads = 8, kv_heads = 2, max_seq = 1100, kvw = kv_heads * hd;
                std::vector<int32_t> slot, pos;
                for (int64_t t = 0; t < T; ++t) {
                    slot.push_back((int32_t)t);
                    pos.push_back((int32_t)(T == 1 ? 777 : t == 0 ? 0 : t == 1 ? 37 : max_seq - 1 - 13 * (t - 2)));
                }
                auto k_cache = random_bf16(T * max_seq * kvw), v_cache = random_bf16(T * max_seq * kvw);
                auto q = random_bf16(T * heads * hd), k = random_bf16(T * kvw), v = random_bf16(T * kvw);
                std::unique_ptr<Device<bf16>> dkc(upload(k_cache)), dvc(upload(v_cache)), dq(upload(q)), dk(upload(k)), dv(upload(v)),
                    dout(poisoned(T * heads * hd));
                std::unique_ptr<Device<int32_t>> ds(upload_raw(slot)), dp(upload_raw(pos));
                cpu::AttentionShape s{T, heads, kv_heads, hd, max_seq, window};
                cuda::AttentionArgs aa{s, ds->p, dp->p, dq->p, dk->p, dv->p, dkc->p, dvc->p, dout->p};
                aa.decode = true;  // each token its own slot
                cuda::attention(aa, on(nullptr));
                std::vector<float> ref(T * heads * hd);
                cpu::attention(s, slot.data(), pos.data(), q.data(), k.data(), v.data(), k_cache.data(), v_cache.data(), ref.data());
                expect_close(download(*dout), ref, "decode attention, head_dim " + std::to_string(hd) + ", window " + std::to_string(window) +
                                                       ", " + std::to_string(T) + " tokens");
            }
}

// Long segments take the cuBLAS path (S = QK^T, masked softmax, PV) in blocks of query rows,
// short ones and decode tokens the kernel, in one batch: a 600-token prompt (two row blocks,
// the second reaching back past a window), a 3-token chunk, a 70-token prompt continuing a
// cached prefix of 5; then decode. K and V come from a strided fused buffer, as from the
// executor's split views. Head sizes 128 (vector kernel) and 80 (scalar kernel).
TEST(CudaKernels, AttentionGemmPathAndMixedSegments) {
    REQUIRE_GPU();
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    for (int64_t hd : {128, 64, 80})
        for (int64_t window : {0, 300}) {
            const int64_t heads = 4, kv_heads = 2, max_seq = 700, slots = 3, kvw = kv_heads * hd;
            std::vector<float> k_cache(slots * max_seq * kvw, 0.0f), v_cache = k_cache;
            std::unique_ptr<Device<bf16>> dkc(upload(k_cache)), dvc(upload(v_cache));
            auto step = [&](std::vector<int32_t> slot, std::vector<int32_t> pos, std::vector<cuda::AttentionSegment> segs, const char* what) {
                int64_t T = (int64_t)slot.size(), stride = 2 * kvw + 16;
                auto q = random_bf16(T * heads * hd), k = random_bf16(T * kvw), v = random_bf16(T * kvw);
                std::vector<float> kv(T * stride, 0.0f);
                for (int64_t t = 0; t < T; ++t) {
                    std::copy(k.begin() + t * kvw, k.begin() + (t + 1) * kvw, kv.begin() + t * stride);
                    std::copy(v.begin() + t * kvw, v.begin() + (t + 1) * kvw, kv.begin() + t * stride + kvw);
                }
                std::unique_ptr<Device<bf16>> dq(upload(q)), dkv(upload(kv)), dout(poisoned(T * heads * hd));
                std::unique_ptr<Device<int32_t>> ds(upload_raw(slot)), dp(upload_raw(pos));
                cpu::AttentionShape s{T, heads, kv_heads, hd, max_seq, window};
                cuda::attention({s, ds->p, dp->p, dq->p, dkv->p, dkv->p + kvw, dkc->p, dvc->p, dout->p, stride, stride, h, &segs}, on(nullptr));
                std::vector<float> ref(T * heads * hd);
                cpu::attention(s, slot.data(), pos.data(), q.data(), k.data(), v.data(), k_cache.data(), v_cache.data(), ref.data());
                expect_close(download(*dout), ref, what);
            };
            std::vector<int32_t> slot, pos;
            for (int i = 0; i < 5; ++i) slot.push_back(2), pos.push_back(i);  // slot 2's prefix, through the kernel
            step(slot, pos, {{0, 5, 2, 0}}, "attention, a short prefix");
            slot.clear(), pos.clear();
            for (int i = 0; i < 600; ++i) slot.push_back(0), pos.push_back(i);
            for (int i = 0; i < 3; ++i) slot.push_back(1), pos.push_back(i);
            for (int i = 0; i < 70; ++i) slot.push_back(2), pos.push_back(5 + i);
            // The 600-token segment takes the flash kernel's 128-row blocks (head_dim 64 and 128;
            // cuBLAS for 80), the 70-token one its 32-row blocks for short segments.
            step(slot, pos, {{0, 600, 0, 0}, {600, 3, 1, 0}, {603, 70, 2, 5}}, window ? "attention gemm (window)" : "attention gemm");
            step({0, 1, 2}, {600, 3, 75}, {{0, 1, 0, 600}, {1, 1, 1, 3}, {2, 1, 2, 75}}, "attention decode after gemm prefill");
        }
    cublasDestroy(h);
}

TEST(CudaKernels, SwiGluFusedAndSplitAndAdd) {
    REQUIRE_GPU();
    // 352: eight elements a thread in 16-byte loads; 350: one a thread (width not a multiple of 8).
    for (int64_t I : {352, 350}) {
        const int64_t T = 3;
        std::string w = " (width " + std::to_string(I) + ")";
        auto gu = random_bf16(T * 2 * I, 2.0f);
        std::unique_ptr<Device<bf16>> dgu(upload(gu)), dout(poisoned(T * I)), dout2(poisoned(T * I)), dsum(poisoned(T * I));
        cuda::silu_mul_fused(T, I, dgu->p, dout->p, on(nullptr));
        std::vector<float> ref(T * I);
        cpu::silu_mul_fused(T, I, gu.data(), ref.data());
        expect_close(download(*dout), ref, "silu_mul_fused" + w);
        auto g = random_bf16(T * I), u = random_bf16(T * I);
        std::unique_ptr<Device<bf16>> dg(upload(g)), du(upload(u));
        cuda::silu_mul(T, I, dg->p, du->p, dout2->p, on(nullptr));
        cpu::silu_mul(T, I, g.data(), u.data(), ref.data());
        expect_close(download(*dout2), ref, "silu_mul" + w);
        cuda::add(T * I, dg->p, du->p, dsum->p, on(nullptr));
        for (int64_t i = 0; i < T * I; ++i) ref[i] = g[i] + u[i];
        expect_close(download(*dsum), ref, "add" + w);
    }
}

TEST(CudaKernels, MoeRoutingAndExpertsMatchTheTwin) {
    REQUIRE_GPU();
    // Experts 2..3 of 4 held here (an EP group), each split in half (inter_local = I / 2).
    // Token counts: a few; enough for several passes of 8 tokens over one expert's rows; more
    // than the sparse kernels list at once (1024).
    for (int64_t tokens : {6, 21, 1100}) {
        cpu::MoeShape s{tokens, 64, 4, 2, 2, 2, 48};
        const std::string at = " at " + std::to_string(tokens) + " tokens";
        auto x = random_bf16(s.tokens * s.hidden), logits = random_bf16(s.tokens * s.experts, 2.0f);
        logits[0] = logits[1] = 8.0f;  // token 0 chooses experts 0 and 1, both held elsewhere
        auto w13 = random_bf16(s.local_experts * 2 * s.inter_local * s.hidden, 0.1f);
        auto w2 = random_bf16(s.local_experts * s.hidden * s.inter_local, 0.1f);
        std::vector<float> ref(s.tokens * s.hidden);
        cpu::moe(s, x.data(), logits.data(), w13.data(), w2.data(), ref.data());
        // The executor's dense MoE: routing weights, then every local expert weighted.
        cublasHandle_t h;
        CUBLAS_CHECK(cublasCreate(&h));
        std::unique_ptr<Device<bf16>> dx(upload(x)), dl(upload(logits)), d13(upload(w13)), d2(upload(w2));
        std::unique_ptr<Device<bf16>> dy(upload(std::vector<float>(s.tokens * s.hidden, 0.0f)));
        std::unique_ptr<Device<bf16>> dgu(poisoned(s.tokens * 2 * s.inter_local)), dact(poisoned(s.tokens * s.inter_local)),
            dpart(poisoned(s.tokens * s.hidden));
        Device<float> weights(s.tokens * s.local_experts);
        cuda::moe_routing(s, dl->p, weights.p, on(nullptr));
        for (int64_t e = 0; e < s.local_experts; ++e) {
            cuda::linear(h, {{s.tokens, s.hidden, 2 * s.inter_local}, dx->p, d13->p + e * 2 * s.inter_local * s.hidden, nullptr, dgu->p}, on(nullptr));
            cuda::silu_mul_fused(s.tokens, s.inter_local, dgu->p, dact->p, on(nullptr));
            cuda::linear(h, {{s.tokens, s.inter_local, s.hidden}, dact->p, d2->p + e * s.hidden * s.inter_local, nullptr, dpart->p}, on(nullptr));
            cuda::scale_add({s.tokens, s.hidden, weights.p + e, s.local_experts, dpart->p, dy->p}, on(nullptr));
        }
        std::vector<float> dense = download(*dy);
        expect_close(dense, ref, "moe, dense" + at);
        cublasDestroy(h);

        // Sparse, fused w13: against the twin, and against the dense form (the same rounding
        // steps, so only the GEMMs' order of accumulation differs). Every output is written
        // (y poisoned), tokens routed to no local expert included (zero).
        std::unique_ptr<Device<bf16>> sact(poisoned(s.local_experts * s.tokens * s.inter_local)),
            spart(poisoned(s.local_experts * s.tokens * s.hidden)), sy(poisoned(s.tokens * s.hidden));
        const cuda::MoeExperts fused{d13->p, d13->p + s.inter_local * s.hidden, 2 * s.inter_local * s.hidden, d2->p};
        ASSERT_TRUE(cuda::moe_sparse_supported(s, dx->p, fused));
        cuda::moe_sparse({s, weights.p, dx->p, fused, sy->p}, sact->p, spart->p, on(nullptr));
        std::vector<float> sparse = download(*sy);
        expect_close(sparse, ref, "moe, sparse" + at);
        expect_close(sparse, dense, "moe, sparse against dense" + at);
        int64_t unrouted = 0;
        std::vector<float> w(s.tokens * s.local_experts);
        CUDA_CHECK(cudaMemcpy(w.data(), weights.p, w.size() * 4, cudaMemcpyDeviceToHost));
        for (int64_t t = 0; t < s.tokens; ++t)
            if (w[t * 2] == 0.0f && w[t * 2 + 1] == 0.0f) {
                ++unrouted;
                for (int64_t i = 0; i < s.hidden; ++i) ASSERT_EQ(sparse[t * s.hidden + i], 0.0f) << "token " << t << " visits no local expert";
            }
        EXPECT_GT(unrouted, 0) << "token 0 chooses only experts held elsewhere" << at;

        // Sparse with gate and up as separate tensors (w1, w3 [local, inter, hidden]): the same bits.
        std::vector<float> w1, w3;
        for (int64_t e = 0; e < s.local_experts; ++e) {
            auto base = w13.begin() + e * 2 * s.inter_local * s.hidden;
            w1.insert(w1.end(), base, base + s.inter_local * s.hidden);
            w3.insert(w3.end(), base + s.inter_local * s.hidden, base + 2 * s.inter_local * s.hidden);
        }
        std::unique_ptr<Device<bf16>> d1(upload(w1)), d3(upload(w3)), sy2(poisoned(s.tokens * s.hidden));
        const cuda::MoeExperts separate{d1->p, d3->p, s.inter_local * s.hidden, d2->p};
        cuda::moe_sparse({s, weights.p, dx->p, separate, sy2->p}, sact->p, spart->p, on(nullptr));
        EXPECT_EQ(download(*sy2), sparse) << "separate gate and up" << at;

        // By expert (prefill's form): against the twin and the dense form, gate and up fused
        // (one GEMM an expert) and separate (two), every output written.
        cublasHandle_t h2;
        CUBLAS_CHECK(cublasCreate(&h2));
        std::unique_ptr<Device<bf16>> gy(poisoned(s.tokens * s.hidden)), gy2(poisoned(s.tokens * s.hidden));
        cuda::moe_grouped(h2, {s, weights.p, dx->p, fused, gy->p}, on(nullptr));
        std::vector<float> grouped = download(*gy);
        expect_close(grouped, ref, "moe, by expert" + at);
        expect_close(grouped, dense, "moe, by expert against dense" + at);
        cuda::moe_grouped(h2, {s, weights.p, dx->p, separate, gy2->p}, on(nullptr));
        expect_close(download(*gy2), ref, "moe, by expert, separate gate and up" + at);
        cublasDestroy(h2);
    }
}

// argmax_rows over `logits` [rows, width] as fp32 or rounded to bf16 (then with a scratch block
// of the caller's, as the executor's forward passes), checked row by row against the CPU twin
// cpu::argmax on the same values; the output is poisoned first so an unwritten row shows.
std::vector<int32_t> device_argmax(const std::vector<float>& logits, int64_t rows, int64_t width, bool in_bf16, Device<int32_t>& out) {
    CUDA_CHECK(cudaMemset(out.p, 0x55, rows * sizeof(int32_t)));
    std::vector<float> seen = logits;
    if (in_bf16) {
        for (float& x : seen) x = bf16_to_f32(f32_to_bf16(x));
        std::unique_ptr<Device<bf16>> d(upload(logits));
        Device<char> scratch(cuda::argmax_scratch_bytes(rows));
        cuda::argmax_rows(rows, width, d->p, out.p, on(nullptr), scratch.p);
        CUDA_CHECK(cudaDeviceSynchronize());
    } else {
        std::unique_ptr<Device<float>> d(upload_raw(logits));
        cuda::argmax_rows(rows, width, d->p, out.p, on(nullptr));
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    std::vector<int32_t> got(rows);
    CUDA_CHECK(cudaMemcpy(got.data(), out.p, rows * sizeof(int32_t), cudaMemcpyDeviceToHost));
    for (int64_t r = 0; r < rows; ++r)
        EXPECT_EQ(got[r], cpu::argmax(&seen[r * width], width)) << "row " << r << " width " << width << (in_bf16 ? " bf16" : " fp32");
    return got;
}

// Non-finite logits (a NaN weight upstream) must not come back as a token id: argmax_rows writes
// -1 for a row holding NaN, +Inf or -Inf, as its CPU twin cpu::argmax does (the reference, row by
// row). Poisons sit in the first chunk, in the last, at index 0 and at the last index, beside a
// larger finite logit elsewhere in the row.
TEST(CudaKernels, ArgmaxReportsNonFiniteRows) {
    REQUIRE_GPU();
    const int64_t rows = 8, V = 128256;
    std::normal_distribution<float> d;
    struct Poison {
        int64_t row;
        float value;
        int64_t at;  // from the row's end when negative
    };
    const std::vector<Poison> poisons = {{1, NAN, 5}, {2, INFINITY, -1}, {3, -INFINITY, 0}, {5, NAN, -1}, {6, INFINITY, 70000}};
    Device<int32_t> out(rows);
    for (int64_t width : {V, (int64_t)1000}) {  // the chunked kernel, and one block per row
        std::vector<float> logits(rows * width);
        for (float& x : logits) x = d(rng);
        for (int64_t r = 0; r < rows; ++r) logits[r * width + (r * 7919) % width] = 50.0f;  // a clear winner in every row
        for (const Poison& p : poisons) {
            const int64_t at = (p.at < 0 ? width + p.at : p.at) % width;
            logits[p.row * width + at] = p.value;
        }
        for (bool in_bf16 : {false, true}) {  // fp32 logits, and the bf16 ones the forward ends in
            const std::vector<int32_t> got = device_argmax(logits, rows, width, in_bf16, out);
            for (int64_t r = 0; r < rows; ++r) {
                const bool poisoned_row = std::any_of(poisons.begin(), poisons.end(), [&](const Poison& p) { return p.row == r; });
                const std::string at = "row " + std::to_string(r) + " width " + std::to_string(width) + (in_bf16 ? " bf16" : " fp32");
                EXPECT_EQ(got[r], poisoned_row ? -1 : (int32_t)((r * 7919) % width)) << at;
            }
        }
    }
}

TEST(CudaKernels, ArgmaxGatherAndConversions) {
    REQUIRE_GPU();
    const int64_t rows = 4, V = 128256;
    std::vector<float> logits(rows * V);
    std::normal_distribution<float> d;
    for (float& x : logits) x = d(rng);
    logits[1 * V + 77] = 100.0f;
    logits[2 * V + 5] = logits[2 * V + 9] = 50.0f;  // a tie: the first index wins
    logits[3 * V + 120000] = logits[3 * V + 4000] = 60.0f;  // a tie across the kernel's chunks
    Device<int32_t> out(rows);
    for (int64_t width : {V, (int64_t)1000, (int64_t)1001}) {  // the chunked kernel, a short row, one read 4 at a time nowhere
        std::vector<float> narrow;
        for (int64_t r = 0; r < rows; ++r) narrow.insert(narrow.end(), logits.begin() + r * V, logits.begin() + r * V + width);
        for (bool in_bf16 : {false, true}) {
            const std::vector<int32_t> got = device_argmax(narrow, rows, width, in_bf16, out);
            EXPECT_EQ(got[2], 5) << "width " << width;
            if (width == V) EXPECT_EQ(got[3], 4000) << (in_bf16 ? "bf16" : "fp32");
        }
    }

    auto x = random_bf16(5 * 16);
    std::vector<int64_t> pick = {4, 0, 2};
    std::unique_ptr<Device<bf16>> dx(upload(x)), dout(poisoned(3 * 16));
    std::unique_ptr<Device<int64_t>> dp(upload_raw(pick));
    cuda::gather_rows(3, 16, dp->p, dx->p, dout->p, on(nullptr));
    std::vector<float> g = download(*dout);
    for (int r = 0; r < 3; ++r)
        for (int i = 0; i < 16; ++i) EXPECT_EQ(g[r * 16 + i], x[pick[r] * 16 + i]);
    Device<float> f(x.size());
    cuda::bf16_to_f32((int64_t)x.size(), dx->p, f.p, on(nullptr));
    std::vector<float> back(x.size());
    CUDA_CHECK(cudaMemcpy(back.data(), f.p, back.size() * 4, cudaMemcpyDeviceToHost));
    EXPECT_EQ(back, x);
}

// The one-shot all-reduce between two GPUs of this process (peer pointers stand in for the
// worker's IPC mappings): every rank gets bf16(float(a0) + float(a1)) bit for bit, for sizes
// from one vector to the buffer's capacity, in place and out of place, over calls that
// alternate the two buffers; a rank whose peer never comes gives up after its timeout and
// names the peer.
TEST(CudaKernels, OneShotAllReduceBetweenTwoGpus) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) GTEST_SKIP() << "needs 2 GPUs, " << count << " visible";
    int can01 = 0, can10 = 0;
    CUDA_CHECK(cudaDeviceCanAccessPeer(&can01, 0, 1));
    CUDA_CHECK(cudaDeviceCanAccessPeer(&can10, 1, 0));
    if (!can01 || !can10) GTEST_SKIP() << "GPUs 0 and 1 have no peer access";
    const size_t capacity = 4096 * 64;
    const size_t flag_bytes = 4 * cuda::kOneShotBlocks * cuda::kOneShotMaxRanks;
    cuda::OneShotPeers peers[2];
    cudaStream_t streams[2];
    int* error = nullptr;
    CUDA_CHECK(cudaHostAlloc(&error, 2 * sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
    error[0] = error[1] = 0;
    char* bases[2];
    for (int d = 0; d < 2; ++d) {
        CUDA_CHECK(cudaSetDevice(d));
        cudaError_t e = cudaDeviceEnablePeerAccess(1 - d, 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
        else CUDA_CHECK(e);
        CUDA_CHECK(cudaStreamCreate(&streams[d]));
        CUDA_CHECK(cudaMalloc(&bases[d], 1024 + 2 * 2 * capacity * 2));
        CUDA_CHECK(cudaMemset(bases[d], 0, 1024 + 2 * 2 * capacity * 2));
    }
    ASSERT_LE(flag_bytes, 1024u);
    for (int d = 0; d < 2; ++d) {
        CUDA_CHECK(cudaSetDevice(d));
        peers[d].rank = d;
        peers[d].world = 2;
        peers[d].capacity = capacity;
        for (int r = 0; r < 2; ++r) {
            peers[d].flags[r] = reinterpret_cast<uint32_t*>(bases[r]);
            peers[d].data[r] = reinterpret_cast<bf16*>(bases[r] + 1024);
        }
        CUDA_CHECK(cudaMalloc(&peers[d].counters, 4 * (cuda::kOneShotBlocks + 1)));
        CUDA_CHECK(cudaMemset(peers[d].counters, 0, 4 * (cuda::kOneShotBlocks + 1)));
        CUDA_CHECK(cudaHostGetDevicePointer(&peers[d].error, error + d, 0));
        peers[d].timeout_ns = 20'000'000'000ull;
    }
    for (size_t n : {8ul, 4096ul, 4096ul * 3 + 8, capacity, 4096ul}) {
        for (int call = 0; call < 3; ++call) {
            bool in_place = call == 1;
            std::vector<float> a[2] = {random_bf16(n), random_bf16(n, 3.0f)};
            Device<bf16>*in[2], *out[2];
            for (int d = 0; d < 2; ++d) {
                CUDA_CHECK(cudaSetDevice(d));
                in[d] = upload(a[d]);
                out[d] = in_place ? in[d] : poisoned(n);
            }
            for (int d = 0; d < 2; ++d) {
                CUDA_CHECK(cudaSetDevice(d));
                cuda::oneshot_all_reduce(in[d]->p, out[d]->p, n, peers[d], on(streams[d]));
            }
            for (int d = 0; d < 2; ++d) {
                CUDA_CHECK(cudaSetDevice(d));
                CUDA_CHECK(cudaStreamSynchronize(streams[d]));
                std::vector<uint16_t> got(n);
                CUDA_CHECK(cudaMemcpy(got.data(), out[d]->p, n * 2, cudaMemcpyDeviceToHost));
                size_t wrong = 0;
                for (size_t i = 0; i < n; ++i) wrong += got[i] != f32_to_bf16(a[0][i] + a[1][i]);
                EXPECT_EQ(wrong, 0u) << "device " << d << ", n " << n << ", call " << call;
                EXPECT_EQ(error[d], 0);
                if (!in_place) delete out[d];
                delete in[d];
            }
        }
    }
    // Device 1 never comes: device 0 waits 50 ms, then names rank 1 through the error flag.
    CUDA_CHECK(cudaSetDevice(0));
    peers[0].timeout_ns = 50'000'000;
    Device<bf16> x(4096);
    CUDA_CHECK(cudaMemset(x.p, 0, 4096 * 2));
    cuda::oneshot_all_reduce(x.p, x.p, 4096, peers[0], on(streams[0]));
    CUDA_CHECK(cudaStreamSynchronize(streams[0]));
    EXPECT_EQ(error[0], 2) << "rank 1 + 1";
    for (int d = 0; d < 2; ++d) {
        CUDA_CHECK(cudaSetDevice(d));
        cudaFree(bases[d]);
        cudaFree(peers[d].counters);
        cudaStreamDestroy(streams[d]);
    }
    cudaFreeHost(error);
    CUDA_CHECK(cudaSetDevice(0));
}
