// The GEMMs' algorithm chosen by timing (see GemmTuner in ops.h; docs/PERF.md has what it gains
// over cublasGemmEx).
#include <cublasLt.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <tuple>

#include "common/cuda_check.h"
#include "kernels/cuda/ops.h"

namespace tpx::cuda {

// The operands of one product: bf16 x and W, or (fp8) e4m3 x and W with their scales per
// 128 columns (cpu::linear_w8a8's xs [ceil(K / 128), T] and row_scale [ceil(K / 128), N]).
struct GemmOperands {
    const void* x = nullptr;
    const void* w = nullptr;
    bf16* y = nullptr;
    const bf16* add = nullptr;
    const float* x_scale = nullptr;  // fp8 only
    const float* w_scale = nullptr;
    bool w_blocks = false;           // w_scale per 128 x 128 block (BLK128x128_32F), else per 128 columns
    bool fp8() const { return x_scale != nullptr; }
};

namespace {

constexpr size_t kTunerWorkspaceBytes = 32u << 20;
constexpr int kTimedRuns = 3;

// The largest power of two (at most 256) that divides every address: the alignment cuBLASLt's
// heuristic is told to assume (its default, 256, would admit algorithms that fault on views).
uint32_t common_alignment(std::initializer_list<const void*> ptrs) {
    uint32_t a = 256;
    for (const void* p : ptrs)
        while (a > 1 && reinterpret_cast<uintptr_t>(p) % a != 0) a /= 2;
    return a;
}

// Decode batches (up to kBatchGemmMaxTokens rows) are each a bucket of their own: the algorithm
// timed at one row count is not the best at another (docs/PERF.md, 2026-12-06), and a server
// meets every size. Longer products by powers of two.
int64_t bucket_of(int64_t tokens) {
    if (tokens <= kBatchGemmMaxTokens) return tokens;
    int64_t b = 1;
    while (b < tokens) b *= 2;
    return b;
}

// The descriptors of one product, Y^T[N, T] = W[N, K] . X^T[K, T] in cuBLAS's column-major terms
// (W[N, K] row-major is W^T column-major, so op(A) = T), as in linear(). FP8: both operands
// e4m3 with one fp32 scale per 128 elements along K (VEC128_32F, Hopper's block-scaled FP8
// GEMM: scales applied to each 128-deep partial sum in fp32), output bf16.
struct Descriptors {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    Descriptors(int64_t T, int64_t K, int64_t N, const GemmOperands& o) {
        CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
        const cudaDataType_t in = o.fp8() ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
        if (o.fp8()) {
            const cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
            const cublasLtMatmulMatrixScale_t w_mode = o.w_blocks ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F : mode;
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &w_mode, sizeof(w_mode)));
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)));
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &o.w_scale, sizeof(o.w_scale)));
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &o.x_scale, sizeof(o.x_scale)));
        }
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a, in, K, N, K));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b, in, K, T, K));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c, CUDA_R_16BF, N, T, N));
    }
    ~Descriptors() {
        cublasLtMatrixLayoutDestroy(a), cublasLtMatrixLayoutDestroy(b), cublasLtMatrixLayoutDestroy(c);
        cublasLtMatmulDescDestroy(op);
    }
    Descriptors(const Descriptors&) = delete;
    Descriptors& operator=(const Descriptors&) = delete;
};

}  // namespace

struct GemmTuner::Impl {
    struct Entry {
        bool usable = false;
        cublasLtMatmulAlgo_t algo{};
        int candidates = 0;
        double best_us = 0, first_us = 0;  // the kept algorithm's time and heuristic #0's
        double gemm_ex_us = 0;             // cublasGemmEx's, where timed
        bool gemm_ex_fastest = false;      // the caller runs it
        int64_t tuned_at = 0;              // the row count it was timed with
    };
    using Key = std::tuple<int64_t, int64_t, int64_t, uint32_t, bool, int>;  // rows' bucket, K, N, alignment, an added C, fp8 (2: W by blocks)
    cublasLtHandle_t lt = nullptr;
    cublasHandle_t cublas = nullptr;  // whose cublasGemmEx is timed too, where given
    void* workspace = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    std::map<Key, Entry> entries;

    // D = W^T-product (+ C): beta 1 with C = add, else beta 0 (C not read).
    cublasStatus_t run(const Descriptors& d, const cublasLtMatmulAlgo_t& algo, const GemmOperands& o, cudaStream_t stream) {
        const float alpha = 1.0f, beta = o.add ? 1.0f : 0.0f;
        return cublasLtMatmul(lt, d.op, &alpha, o.w, d.a, o.x, d.b, &beta, o.add ? o.add : o.y, d.c, o.y, d.c, &algo, workspace,
                              kTunerWorkspaceBytes, stream);
    }

    Entry tune(const cpu::LinearShape& s, uint32_t align, const GemmOperands& o, cudaStream_t stream) {
        Entry e;
        e.tuned_at = s.tokens;
        Descriptors d(s.tokens, s.in, s.out, o);
        cublasLtMatmulPreference_t pref;
        CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        const size_t ws = kTunerWorkspaceBytes;
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
        for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
            CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align)));
        cublasLtMatmulHeuristicResult_t res[kGemmTuneCandidates];
        int found = 0;
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, d.op, d.a, d.b, d.c, d.c, pref, kGemmTuneCandidates, res, &found);
        cublasLtMatmulPreferenceDestroy(pref);
        if (st != CUBLAS_STATUS_SUCCESS) found = 0;
        // The best of kTimedRuns after a warm-up, us; a negative time where it fails to run.
        auto best_of = [&](auto&& product) {
            if (!product()) return -1.0;
            double best = 1e30;
            for (int r = 0; r < kTimedRuns; ++r) {
                CUDA_CHECK(cudaEventRecord(start, stream));
                product();
                CUDA_CHECK(cudaEventRecord(stop, stream));
                CUDA_CHECK(cudaEventSynchronize(stop));
                float ms = 0;
                CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
                best = std::min(best, 1e3 * ms);
            }
            return best;
        };
        for (int i = 0; i < found; ++i) {
            if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > ws) continue;
            const double us = best_of([&] { return run(d, res[i].algo, o, stream) == CUBLAS_STATUS_SUCCESS; });
            if (us < 0) continue;
            ++e.candidates;
            if (i == 0) e.first_us = us;
            if (!e.usable || us < e.best_us) e.usable = true, e.best_us = us, e.algo = res[i].algo;
        }
        if (cublas && !o.add && !o.fp8()) {
            e.gemm_ex_us = best_of([&] {
                gemm_ex(cublas, s, static_cast<const bf16*>(o.x), static_cast<const bf16*>(o.w), o.y, stream);
                return true;
            });
            e.gemm_ex_fastest = !e.usable || e.gemm_ex_us <= e.best_us;
        }
        return e;
    }
};

GemmTuner::GemmTuner(cublasHandle_t cublas) : impl_(new Impl) {
    impl_->cublas = cublas;
    CUBLAS_CHECK(cublasLtCreate(&impl_->lt));
    CUDA_CHECK(cudaMalloc(&impl_->workspace, kTunerWorkspaceBytes));
    CUDA_CHECK(cudaEventCreate(&impl_->start));
    CUDA_CHECK(cudaEventCreate(&impl_->stop));
}

GemmTuner::~GemmTuner() {
    cudaEventDestroy(impl_->start), cudaEventDestroy(impl_->stop);
    cudaFree(impl_->workspace);
    cublasLtDestroy(impl_->lt);
    delete impl_;
}

bool GemmTuner::matmul(const cpu::LinearShape& s, const bf16* x, const bf16* w, bf16* y, cudaStream_t stream, const bf16* add) {
    if (s.tokens < kGemmTuneMinTokens || (add && add == y)) return false;
    GemmOperands o;
    o.x = x, o.w = w, o.y = y, o.add = add;
    return product(s, o, stream);
}

bool GemmTuner::matmul_fp8(const cpu::LinearShape& s, const Fp8Operands& f, bf16* y, cudaStream_t stream) {
    GemmOperands o;
    if (f.add && f.add == y) return false;
    o.x = f.xq, o.w = f.w, o.y = y, o.x_scale = f.x_scale, o.w_scale = f.w_scale, o.w_blocks = f.w_blocks, o.add = f.add;
    return product(s, o, stream);
}

bool GemmTuner::product(const cpu::LinearShape& s, const GemmOperands& o, cudaStream_t stream) {
    const uint32_t align = o.add ? common_alignment({o.x, o.w, o.y, o.add}) : common_alignment({o.x, o.w, o.y});
    const Impl::Key key{bucket_of(s.tokens), s.in, s.out, align, o.add != nullptr, o.fp8() ? 1 + o.w_blocks : 0};
    auto it = impl_->entries.find(key);
    if (it == impl_->entries.end()) {
        cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
        CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
        if (capturing != cudaStreamCaptureStatusNone) return false;
        it = impl_->entries.emplace(key, impl_->tune(s, align, o, stream)).first;
    }
    const Impl::Entry& e = it->second;
    if (!e.usable || e.gemm_ex_fastest) return false;
    Descriptors d(s.tokens, s.in, s.out, o);
    if (s.tokens != e.tuned_at) {  // another row count of the bucket: the algorithm must take it
        cublasLtMatmulHeuristicResult_t check{};
        if (cublasLtMatmulAlgoCheck(impl_->lt, d.op, d.a, d.b, d.c, d.c, &e.algo, &check) != CUBLAS_STATUS_SUCCESS ||
            check.workspaceSize > kTunerWorkspaceBytes)
            return false;
    }
    CUBLAS_CHECK(impl_->run(d, e.algo, o, stream));
    return true;
}

std::string GemmTuner::summary() const {
    std::string out;
    for (const auto& [key, e] : impl_->entries) {
        char line[300], ex[64] = "";
        if (e.gemm_ex_us > 0) std::snprintf(ex, sizeof ex, ", cublasGemmEx %.1f us", e.gemm_ex_us);
        const char* kept = e.gemm_ex_fastest ? "cublasGemmEx's own kept; best" : e.usable ? "fastest" : "none usable";
        std::snprintf(line, sizeof line, "gemm%s %lld rows (bucket %lld) K=%lld N=%lld%s: %s of %d algorithms, %.1f us (heuristic's first %.1f us%s)\n",
                      std::get<5>(key) == 2 ? " fp8 (W by blocks)" : std::get<5>(key) ? " fp8" : "", (long long)e.tuned_at, (long long)std::get<0>(key), (long long)std::get<1>(key),
                      (long long)std::get<2>(key), std::get<4>(key) ? " + add" : "", kept, e.candidates, e.best_us, e.first_us, ex);
        out += line;
    }
    return out;
}

}  // namespace tpx::cuda
