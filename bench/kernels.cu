// tpx-kbench: each kernel of a Llama-3-8B-shaped decode step (and the prefill attention) timed
// alone on the GPU machine, so that a change to one kernel can be predicted and checked apart
// from the whole step (docs/PERF.md). Each decode-sized op is captured `kReps` times into a
// CUDA graph and the graph replayed, as the executor replays a decode step: the figure is the
// time per op inside a graph, launch gaps included. Weights are distinct per replay slot where
// the op streams weights, so that L2 does not serve them.
//   tpx-kbench [--quick]
//   tpx-kbench --gemm    the prefill GEMMs: cublasGemmEx against every cuBLASLt heuristic's algorithm
//   tpx-kbench --layer TP one decoder layer with one rank's shapes at tensor parallelism TP
//   tpx-kbench --flash   prefill attention alone, 128 to 8192 tokens: the default, flash_tile "1x64", flash_short_max 0
//   tpx-kbench --decode-attention  decode attention at 1, 8 and 64 tokens, contexts 128 to 4096: one pass against two
//   tpx-kbench --gemv-grid  the decode GEMV at 1 and 8 tokens, K = 4096, N from half a wave of 32-row tiles to seven
//   tpx-kbench --moe     a Mixtral-shaped MoE layer at 1 to 64 tokens, dense against sparse
//   tpx-kbench --linear K N T ROUTE [EPI]  one product of T tokens on ROUTE ("batch" or "cublas"), for ncu;
//                        EPI "swiglu" or "rope": with the decode step's epilogue (fused, or cuBLAS then its kernel)
//   tpx-kbench --quant   the quantized GEMVs (FP8, GPTQ int4) on the 8B's linears, and their dequantization;
//                        then the FP8 layer's four GEMVs back to back (and, in a probe build, their phases)
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "common/cuda_check.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/quant_gemv.h"
#include "kernels/cuda/quant_prefill.h"

using namespace tpx;
using bf16 = __nv_bfloat16;

namespace {

constexpr int kReps = 20;

// bytes of device memory at p filled with the host pattern (period bytes) over and over.
void fill_repeating(void* p, size_t bytes, const void* pattern, size_t period) {
    for (size_t at = 0; at < bytes; at += period)
        CUDA_CHECK(cudaMemcpy(static_cast<char*>(p) + at, pattern, std::min(bytes - at, period), cudaMemcpyHostToDevice));
}

template <typename T>
T* device_alloc(size_t n, bool random = true) {
    T* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)));
    if (random) {
        std::vector<uint16_t> h(std::min<size_t>(n * sizeof(T) / 2, 1 << 20));
        uint32_t s = 12345;
        for (auto& x : h) s = s * 1664525u + 1013904223u, x = (uint16_t)(0x3c00 + ((s >> 16) & 0x3ff) - 0x200);  // bf16 about +-0.01..1
        fill_repeating(p, n * sizeof(T), h.data(), h.size() * 2);
    } else {
        CUDA_CHECK(cudaMemset(p, 0, n * sizeof(T)));
    }
    return p;
}

// n random e4m3 bytes of magnitude below 2 (bit 6 clear: no NaN, whose exponent is all ones), so
// that a chain of FP8 GEMVs fed each other's outputs stays finite and small, as a model's does.
uint8_t* device_fp8(size_t n) {
    uint8_t* p = device_alloc<uint8_t>(n, false);
    std::vector<uint8_t> h(std::min<size_t>(n, 1 << 20));
    uint32_t s = 777;
    for (auto& b : h) s = s * 1664525u + 1013904223u, b = (uint8_t)((s >> 24) & 0xbf);
    fill_repeating(p, n, h.data(), h.size());
    return p;
}

int32_t* device_int(int32_t v) {
    int32_t* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, sizeof(int32_t)));
    CUDA_CHECK(cudaMemcpy(p, &v, sizeof(int32_t), cudaMemcpyHostToDevice));
    return p;
}

// Median over `runs` of the microseconds `launch` takes on the stream (CUDA events), divided by `per`.
// The kernel settings of the launches timed here (defaults but where a sweep changes one).
KernelConfig tuning;
cuda::Launch on(cudaStream_t stream) { return cuda::Launch(stream, tuning); }

// The plain GEMV's warps per row for the launches that follow (0: chosen by K, the default).
void use_gemv_splitk(int ks) { tuning.gemv_splitk = ks; }

double median_us(cudaStream_t st, int runs, int per, const std::function<void()>& launch) {
    cudaEvent_t a, b;
    CUDA_CHECK(cudaEventCreate(&a));
    CUDA_CHECK(cudaEventCreate(&b));
    std::vector<double> us;
    for (int r = 0; r < runs; ++r) {
        CUDA_CHECK(cudaEventRecord(a, st));
        launch();
        CUDA_CHECK(cudaEventRecord(b, st));
        CUDA_CHECK(cudaEventSynchronize(b));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        us.push_back(1e3 * ms / per);
    }
    cudaEventDestroy(a), cudaEventDestroy(b);
    std::sort(us.begin(), us.end());
    return us[us.size() / 2];
}

// op(0) .. op(kReps - 1) captured into one graph, replayed once to warm up.
class RepGraph {
public:
    RepGraph(cudaStream_t st, const std::function<void(int)>& op) : st_(st) {
        CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < kReps; ++i) op(i);
        CUDA_CHECK(cudaStreamEndCapture(st, &graph_));
        CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
        replay();
        CUDA_CHECK(cudaStreamSynchronize(st));
    }
    ~RepGraph() { cudaGraphExecDestroy(exec_), cudaGraphDestroy(graph_); }
    RepGraph(const RepGraph&) = delete;
    RepGraph& operator=(const RepGraph&) = delete;
    void replay() { CUDA_CHECK(cudaGraphLaunch(exec_, st_)); }

private:
    cudaStream_t st_;
    cudaGraph_t graph_ = nullptr;
    cudaGraphExec_t exec_ = nullptr;
};

// Microseconds per call of op(i) (i = 0 .. kReps - 1), captured into one graph: median of 7 replays.
double time_graph(cudaStream_t st, const std::function<void(int)>& op) {
    RepGraph graph(st, op);
    return median_us(st, 7, kReps, [&] { graph.replay(); });
}

// Microseconds of one call (not captured): median of 5 after a warm-up.
double time_direct(cudaStream_t st, const std::function<void()>& op) {
    op();
    CUDA_CHECK(cudaStreamSynchronize(st));
    return median_us(st, 5, 1, op);
}

void row(const std::string& op, const std::string& shape, double us, const std::string& rate) {
    std::printf("%-34s %-28s %10.2f us  %s\n", op.c_str(), shape.c_str(), us, rate.c_str());
}

std::string rate(double bytes, double us, double flops = 0) {
    char s[96];
    if (flops > 0) std::snprintf(s, sizeof(s), "%.0f TFLOP/s", flops / us * 1e-6);
    else std::snprintf(s, sizeof(s), "%.0f GB/s", bytes / us * 1e-3);
    return s;
}

#ifdef TPX_PROBE
// Probe builds (-DTPX_PROBE): kReps calls of op(i) in one graph, replayed once to warm and once
// stamped; each kernel launch of calls 8 and 9 (its blocks' ProbeRec, grouped by kernel and K,
// split where their waits end more than 10 us apart) printed as when its blocks started, got
// past their wait, past the sum, past their prologue (or dot products) and ended, in us from
// call 8's first wait's end: min / median / max over the blocks. (The FP8 ring GEMV's "sum" is
// past staging x, its "prologue/dot" every warp past its steps: ops.h.)
void probe_layer(cudaStream_t st, const char* name, const std::function<void(int)>& op) {
    constexpr unsigned kMax = 1u << 20;
    cuda::ProbeSink sink;
    CUDA_CHECK(cudaMalloc(&sink.rec, kMax * sizeof(cuda::ProbeRec)));
    CUDA_CHECK(cudaMalloc(&sink.n, sizeof(unsigned)));
    sink.cap = kMax;
    RepGraph graph(st, op);
    cuda::probe_set(sink);
    CUDA_CHECK(cudaMemset(sink.n, 0, sizeof(unsigned)));
    graph.replay();
    CUDA_CHECK(cudaStreamSynchronize(st));
    cuda::probe_set(cuda::ProbeSink{});
    unsigned n = 0;
    CUDA_CHECK(cudaMemcpy(&n, sink.n, sizeof n, cudaMemcpyDeviceToHost));
    TPX_CHECK(n <= kMax, "probe: " + std::to_string(n) + " records for room for " + std::to_string(kMax));
    std::vector<cuda::ProbeRec> rec(n);
    CUDA_CHECK(cudaMemcpy(rec.data(), sink.rec, n * sizeof(cuda::ProbeRec), cudaMemcpyDeviceToHost));
    cudaFree(sink.rec), cudaFree(sink.n);
    std::sort(rec.begin(), rec.end(), [](const cuda::ProbeRec& a, const cuda::ProbeRec& b) {
        return std::tie(a.tag, a.k, a.t[1]) < std::tie(b.tag, b.k, b.t[1]);
    });
    struct Launch {
        unsigned tag, k;
        std::vector<const cuda::ProbeRec*> r;
        unsigned long long first_wait() const { return r.front()->t[1]; }
    };
    std::vector<Launch> launches;
    for (const auto& x : rec) {
        if (launches.empty() || launches.back().tag != x.tag || launches.back().k != x.k ||
            x.t[1] > launches.back().r.back()->t[1] + 10000)
            launches.push_back({x.tag, x.k, {}});
        launches.back().r.push_back(&x);
    }
    std::sort(launches.begin(), launches.end(), [](const Launch& a, const Launch& b) { return a.first_wait() < b.first_wait(); });
    const size_t per_call = launches.size() / kReps;
    if (per_call * kReps != launches.size() || per_call == 0) {  // blocks of one launch more than 10 us apart
        std::printf("probe %s: %zu launches for %d calls, not grouped\n", name, launches.size(), kReps);
        return;
    }
    std::printf("probe %s: %zu kernels a call; us from call 8's first wait; each stamp min / median / max over the blocks\n", name, per_call);
    std::printf("%-14s %6s %5s | %-20s | %-20s | %-20s | %-20s | %-20s\n", "kernel", "K", "blks", "start", "past wait", "past sum",
                "past prologue/dot", "end");
    const unsigned long long zero = launches[8 * per_call].first_wait();
    auto stat = [&](const Launch& l, int j) {
        std::vector<double> v;
        for (auto* r : l.r)
            if (r->t[j]) v.push_back(((double)r->t[j] - (double)zero) * 1e-3);
        char s[64];
        if (v.empty()) return std::string("-");
        std::sort(v.begin(), v.end());
        std::snprintf(s, sizeof s, "%6.2f %6.2f %6.2f", v.front(), v[v.size() / 2], v.back());
        return std::string(s);
    };
    for (size_t i = 8 * per_call; i < 10 * per_call; ++i) {
        const Launch& l = launches[i];
        const char* kind = l.tag >= 400 ? "fp8 ring" : l.tag >= 200 ? "attention" : l.tag >= 100 ? (l.tag & 1 ? "gemv push" : "gemv split") : "gemv";
        char nm[32];
        std::snprintf(nm, sizeof nm, "%s/%u", kind, l.tag);
        std::printf("%-14s %6u %5zu | %-20s | %-20s | %-20s | %-20s | %-20s\n", nm, l.k, l.r.size(), stat(l, 0).c_str(), stat(l, 1).c_str(),
                    stat(l, 2).c_str(), stat(l, 3).c_str(), stat(l, 4).c_str());
    }
}
#endif

// The 8B's four linears of a decoder layer, in the order the decode step runs them.
struct LinearShape {
    const char* name;
    int64_t K, N;
};
constexpr LinearShape k8bLinears[] = {{"qkv", 4096, 6144}, {"o", 4096, 4096}, {"gate_up", 4096, 28672}, {"down", 14336, 4096}};

// FP8 weights of K x N in 128 x 128 scale blocks, whole rows (HF's fine-grained FP8).
cpu::Fp8Layout fp8_blocks(int64_t K, int64_t N) { return {N, K, 128, 0, 128, K / 128}; }

// --quant, then: the FP8 decoder layer's four GEMVs at one token as the decode step runs them (qkv
// with the norm, RoPE and cache write; o; gate_up with the norm of o's output plus the residual,
// and SwiGLU; down), back to back in one graph (attention left out), and in probe builds where
// each kernel's time goes inside that sequence.
void quant_layer(cudaStream_t st) {
    int64_t bytes = 0;
    for (const LinearShape& l : k8bLinears) bytes += l.K * l.N + (l.N / 128) * (l.K / 128) * 4;
    // Weights distinct per replay slot as in every row here (one copy alone is past L2's 50 MB).
    const int copies = (int)std::max<int64_t>(1, std::min<int64_t>(kReps, (4ll << 30) / bytes));
    std::vector<void*> owned;
    std::vector<std::vector<cuda::QuantWeightView>> at(copies);
    for (int c = 0; c < copies; ++c)
        for (const LinearShape& l : k8bLinears) {
            cuda::QuantWeightView v;
            v.format = cuda::QuantWeightView::Format::kFp8;
            v.fp8.l = fp8_blocks(l.K, l.N);
            uint8_t* w = device_fp8(l.K * l.N);
            float* sc = device_alloc<float>((l.N / 128) * (l.K / 128));
            v.fp8.w = w, v.fp8.scale = sc, owned.push_back(w), owned.push_back(sc);
            at[c].push_back(v);
        }
    const int64_t max_seq = 4096;
    int32_t *slot = device_int(0), *pos = device_int(127);
    float* inv = device_alloc<float>(64, false);
    bf16 *kc = device_alloc<bf16>(max_seq * 8 * 128), *vc = device_alloc<bf16>(max_seq * 8 * 128);
    bf16 *norm_w = device_alloc<bf16>(4096), *q = device_alloc<bf16>(4096, false), *o = device_alloc<bf16>(4096, false);
    bf16 *act = device_alloc<bf16>(14336, false), *y = device_alloc<bf16>(4096, false), *res = device_alloc<bf16>(2 * 4096);
    auto layer = [&](int i) {
        const std::vector<cuda::QuantWeightView>& w = at[i % copies];
        cuda::QuantGemvArgs a;
        a.w = w[0], a.tokens = 1, a.y = q, a.has_norm = true, a.norm = {y, res, res + 4096, norm_w, 1e-5f};
        a.epi = cuda::GemvEpilogue::kRopeKv, a.rope = cuda::GemvRopeKv{32, 8, 128, max_seq, slot, pos, inv, kc, vc};
        cuda::quant_gemv(a, on(st));
        cuda::QuantGemvArgs b;
        b.w = w[1], b.tokens = 1, b.x = q, b.y = o;
        cuda::quant_gemv(b, on(st));
        cuda::QuantGemvArgs c;
        c.w = w[2], c.tokens = 1, c.y = act, c.has_norm = true, c.norm = {o, res + 4096, res, norm_w, 1e-5f};
        c.epi = cuda::GemvEpilogue::kSwiglu;
        cuda::quant_gemv(c, on(st));
        cuda::QuantGemvArgs d;
        d.w = w[3], d.tokens = 1, d.x = act, d.y = y;
        cuda::quant_gemv(d, on(st));
    };
    tuning.quant_mma = true;  // the tensor-core GEMVs, as the step runs them (quant_sweep may leave either)
    const double us = time_graph(st, layer);
    row("quant fp8 layer (4 GEMVs)", "T=1", us, rate((double)bytes, us));  // 218 MB a copy: L2 holds none
#ifdef TPX_PROBE
    probe_layer(st, "fp8 layer (4 GEMVs)", layer);
#endif
    for (void* p : owned) CUDA_CHECK(cudaFree(p));
    for (void* p : {(void*)slot, (void*)pos, (void*)inv, (void*)kc, (void*)vc, (void*)norm_w, (void*)q, (void*)o, (void*)act, (void*)y, (void*)res})
        CUDA_CHECK(cudaFree(p));
}

// The prefill GEMMs (2048 tokens, the 8B's shapes) as the executor calls them (cublasGemmEx,
// Y^T[N, T] = W^T . X^T), against each algorithm cuBLASLt's heuristic offers for the same
// product, 32 MiB workspace.
void gemm_sweep(cublasHandle_t h, cudaStream_t st, void* ws) {
    cublasLtHandle_t lt;
    CUBLAS_CHECK(cublasLtCreate(&lt));
    const int64_t T = 2048;
    for (const auto& shape : std::vector<std::tuple<const char*, int64_t, int64_t>>{
             {"qkv", 4096, 6144}, {"o", 4096, 4096}, {"gate_up", 4096, 28672}, {"down", 14336, 4096}}) {
        const char* name = std::get<0>(shape);
        const int64_t K = std::get<1>(shape), N = std::get<2>(shape);
        bf16* w = device_alloc<bf16>(K * N);
        bf16* x = device_alloc<bf16>(T * K);
        bf16* y = device_alloc<bf16>(T * N, false);
        const double flops = 2.0 * T * K * N;
        const std::string dims = "T=2048 K=" + std::to_string(K) + " N=" + std::to_string(N);
        double us = time_direct(st, [&] { cuda::linear(h, {{T, K, N}, x, w, nullptr, y}, on(st)); });
        row(std::string("gemm ") + name + " cublasGemmEx", dims, us, rate(0, us, flops));
        cublasLtMatmulDesc_t op;
        CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
        cublasLtMatrixLayout_t la, lb, lc;
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, T, K));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, N, T, N));
        cublasLtMatmulPreference_t pref;
        CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        size_t wsb = 32u << 20;
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
        cublasLtMatmulHeuristicResult_t res[16];
        int found = 0;
        CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 16, res, &found));
        const float alpha = 1.0f, beta = 0.0f;
        for (int i = 0; i < found; ++i) {
            double t = time_direct(st, [&] {
                CUBLAS_CHECK(cublasLtMatmul(lt, op, &alpha, w, la, x, lb, &beta, y, lc, y, lc, &res[i].algo, ws, wsb, st));
            });
            row(std::string("gemm ") + name + " lt #" + std::to_string(i), dims, t, rate(0, t, flops));
        }
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(op);
        cudaFree(w), cudaFree(x), cudaFree(y);
    }
    cublasLtDestroy(lt);
}

// One decoder layer at batch 1 (ctx 128) with the shapes of one rank at tensor parallelism tp
// (heads, KV heads and the MLP's width divided by tp), fused as the executor runs it: qkv with
// the norm before and RoPE + cache write after, attention, o, gate_up with the norm and SwiGLU,
// down (the all-reduces are not here), then each of those kernels alone.
void layer_sweep(cublasHandle_t h, cudaStream_t st, int tp) {
    const int64_t H = 4096, I = 14336 / tp, heads = 32 / tp, kvh = std::max<int64_t>(1, 8 / tp), hd = 128, kvw = kvh * hd,
                  qw = heads * hd, qkv_n = (heads + 2 * kvh) * hd, max_seq = 4096;
    const int64_t sizes[4] = {qkv_n * H, H * qw, 2 * I * H, H * I};
    const int64_t layer = sizes[0] + sizes[1] + sizes[2] + sizes[3];
    const int copies = (int)std::max<int64_t>(1, std::min<int64_t>(kReps, (4ll << 30) / (layer * 2)));
    bf16* w = device_alloc<bf16>((size_t)copies * layer);
    bf16* norm_w = device_alloc<bf16>(H);
    bf16* kc = device_alloc<bf16>(max_seq * kvw);
    bf16* vc = device_alloc<bf16>(max_seq * kvw);
    bf16* act = device_alloc<bf16>(8 * 14336);
    bf16 *res = act, *delta = act + H, *res2 = act + 2 * H, *q = act + 3 * H, *att = q + qkv_n, *sl = att + qw;
    int32_t *slot = device_int(0), *pos = device_int(127);  // one token of slot 0 at position 127 (ctx 128)
    float* inv = device_alloc<float>(hd / 2, false);
    cpu::AttentionShape as{1, heads, kvh, hd, max_seq, 0};
    auto weight = [&](int i, int k) {  // GEMV k (0 qkv, 1 o, 2 gate_up, 3 down) of rep i
        bf16* base = w + (size_t)(i % copies) * layer;
        for (int j = 0; j < k; ++j) base += sizes[j];
        return base;
    };
    auto fused_layer = [&](int i) {
        cuda::GemvNorm nm{delta, res, res2, norm_w, 1e-5f};
        cuda::GemvRopeKv rk{heads, kvh, hd, max_seq, slot, pos, inv, kc, vc};
        cuda::gemv_fused({H, qkv_n, nullptr, weight(i, 0), nullptr, q, &nm, cuda::GemvEpilogue::kRopeKv, &rk}, on(st));
        cuda::attention({as, slot, pos, q, nullptr, nullptr, kc, vc, att}, on(st));
        cuda::linear(h, {{1, qw, H}, att, weight(i, 1), nullptr, delta}, on(st));
        cuda::GemvNorm nm2{delta, res2, res, norm_w, 1e-5f};
        cuda::gemv_fused({H, 2 * I, nullptr, weight(i, 2), nullptr, sl, &nm2, cuda::GemvEpilogue::kSwiglu, nullptr}, on(st));
        cuda::linear(h, {{1, I, H}, sl, weight(i, 3), nullptr, delta}, on(st));
    };
    const std::string shape = "tp=" + std::to_string(tp) + " T=1 ctx=128";
    const double bytes = 2.0 * layer;
    const double base = time_graph(st, fused_layer);
    row("layer fused", shape, base, rate(bytes, base));
#ifdef TPX_PROBE
    if (tp == 1) probe_layer(st, "layer fused", fused_layer);
#endif
    double layer_us = base;  // the layer as the step runs it (with the all-reduces at tp > 1)
    // Each kernel of it alone.
    double us = time_graph(st, [&](int i) {
        cuda::GemvNorm nm{delta, res, res2, norm_w, 1e-5f};
        cuda::GemvRopeKv rk{heads, kvh, hd, max_seq, slot, pos, inv, kc, vc};
        cuda::gemv_fused({H, qkv_n, nullptr, weight(i, 0), nullptr, q, &nm, cuda::GemvEpilogue::kRopeKv, &rk}, on(st));
    });
    row("  qkv + norm + rope + kv", shape, us, rate(2.0 * sizes[0], us));
    us = time_graph(st, [&](int) { cuda::attention({as, slot, pos, q, nullptr, nullptr, kc, vc, att}, on(st)); });
    row("  attention", shape, us, "");
    us = time_graph(st, [&](int i) { cuda::linear(h, {{1, qw, H}, att, weight(i, 1), nullptr, delta}, on(st)); });
    row("  o", shape, us, rate(2.0 * sizes[1], us));
    us = time_graph(st, [&](int i) {
        cuda::GemvNorm nm{delta, res2, res, norm_w, 1e-5f};
        cuda::gemv_fused({H, 2 * I, nullptr, weight(i, 2), nullptr, sl, &nm, cuda::GemvEpilogue::kSwiglu, nullptr}, on(st));
    });
    row("  gate_up + norm + swiglu", shape, us, rate(2.0 * sizes[2], us));
    us = time_graph(st, [&](int i) { cuda::linear(h, {{1, I, H}, sl, weight(i, 3), nullptr, delta}, on(st)); });
    row("  down", shape, us, rate(2.0 * sizes[3], us));
    if (tp > 1) {
        // The all-reduce fused into the GEMVs (cuda::ExchangeIn), as rank 0 of tp with every
        // rank's buffers on this GPU: the other ranks' parts are pushed once, before, so that
        // the sums never wait (the cross-GPU latency is not here), and rank 0 pushes its own
        // each time. Each sum still reads all tp parts, as on tp GPUs.
        const int64_t units = 8192;
        TPX_CHECK(tp <= cuda::kOneShotMaxRanks, "tpx-kbench --layer: at most " + std::to_string(cuda::kOneShotMaxRanks) + " ranks");
        std::vector<cuda::OneShotPeers> p(tp);
        std::vector<uint2*> ll(tp);
        for (auto& b : ll) b = device_alloc<uint2>(2 * tp * units, false);
        uint32_t* counters = device_alloc<uint32_t>(cuda::kOneShotBlocks + 2, false);
        int* error = nullptr;
        CUDA_CHECK(cudaHostAlloc(&error, sizeof(int), cudaHostAllocMapped));
        *error = 0;
        for (int r = 0; r < tp; ++r) {
            p[r].rank = r, p[r].world = tp, p[r].ll_units = units;
            for (int q = 0; q < tp; ++q) p[r].ll[q] = ll[q];
            p[r].counters = counters;
            CUDA_CHECK(cudaHostGetDevicePointer(&p[r].error, error, 0));
            p[r].timeout_ns = 1'000'000'000ull;
        }
        CUDA_CHECK(cudaMemset(counters, 0, (cuda::kOneShotBlocks + 2) * sizeof(uint32_t)));
        for (int r = 0; r < tp; ++r) {
            cuda::gemv_push({qw, H, att, weight(0, 1), nullptr, 0}, p[r], on(st));
            cuda::gemv_push({I, H, sl, weight(0, 3), nullptr, 1}, p[r], on(st));
        }
        CUDA_CHECK(cudaStreamSynchronize(st));
        auto qkv_sum = [&](int i) {
            cuda::GemvNorm nm{nullptr, res, res2, norm_w, 1e-5f, cuda::exchange_in(p[0], 1)};
            cuda::GemvRopeKv rk{heads, kvh, hd, max_seq, slot, pos, inv, kc, vc};
            cuda::gemv_fused({H, qkv_n, nullptr, weight(i, 0), nullptr, q, &nm, cuda::GemvEpilogue::kRopeKv, &rk}, on(st));
        };
        auto gate_up_sum = [&](int i) {
            cuda::GemvNorm nm{nullptr, res2, res, norm_w, 1e-5f, cuda::exchange_in(p[0], 0)};
            cuda::gemv_fused({H, 2 * I, nullptr, weight(i, 2), nullptr, sl, &nm, cuda::GemvEpilogue::kSwiglu, nullptr}, on(st));
        };
        auto summing_layer = [&](int i) {
            qkv_sum(i);
            cuda::attention({as, slot, pos, q, nullptr, nullptr, kc, vc, att}, on(st));
            cuda::gemv_push({qw, H, att, weight(i, 1), nullptr, 0}, p[0], on(st));
            gate_up_sum(i);
            cuda::gemv_push({I, H, sl, weight(i, 3), nullptr, 1}, p[0], on(st));
        };
        us = time_graph(st, summing_layer);
        row("layer fused, all-reduces in the GEMVs", shape + " (ranks 1.." + std::to_string(tp - 1) + " emulated)", us, rate(bytes, us));
        layer_us = us;
#ifdef TPX_PROBE
        probe_layer(st, "layer, all-reduces in the GEMVs", summing_layer);
#endif
        us = time_graph(st, qkv_sum);
        row("  qkv + sum + norm + rope + kv", shape, us, rate(2.0 * sizes[0], us));
        us = time_graph(st, [&](int i) { cuda::gemv_push({qw, H, att, weight(i, 1), nullptr, 0}, p[0], on(st)); });
        row("  o + push", shape, us, rate(2.0 * sizes[1], us));
        us = time_graph(st, gate_up_sum);
        row("  gate_up + sum + norm + swiglu", shape, us, rate(2.0 * sizes[2], us));
        us = time_graph(st, [&](int i) { cuda::gemv_push({I, H, sl, weight(i, 3), nullptr, 1}, p[0], on(st)); });
        row("  down + push", shape, us, rate(2.0 * sizes[3], us));
        // The sums' own cost with the other ranks' lines just written, as on tp GPUs, where they
        // arrive just before the sum (above, they were pushed once, long before, and may have
        // left L2): the ranks' pushes then the summing GEMV, against the same pushes then the
        // GEMV with x in memory.
        auto pushes = [&](uint32_t seq) {
            for (int r = 1; r < tp; ++r) {
                if (seq == 0) cuda::gemv_push({qw, H, att, weight(0, 1), nullptr, 0}, p[r], on(st));
                else cuda::gemv_push({I, H, sl, weight(0, 3), nullptr, 1}, p[r], on(st));
            }
        };
        auto fresh = [&](const char* name, uint32_t seq, const std::function<void(int)>& sum, const std::function<void(int)>& plain) {
            const double with_sum = time_graph(st, [&](int i) { pushes(seq), sum(i); });
            const double without = time_graph(st, [&](int i) { pushes(seq), plain(i); });
            char s[96];
            std::snprintf(s, sizeof(s), "the sum: %+.2f us", with_sum - without);
            row(std::string("  ") + name + ", lines fresh", shape, with_sum, s);
        };
        fresh("qkv + sum", 1, qkv_sum, [&](int i) {
            cuda::GemvNorm nm{delta, res, res2, norm_w, 1e-5f};
            cuda::GemvRopeKv rk{heads, kvh, hd, max_seq, slot, pos, inv, kc, vc};
            cuda::gemv_fused({H, qkv_n, nullptr, weight(i, 0), nullptr, q, &nm, cuda::GemvEpilogue::kRopeKv, &rk}, on(st));
        });
        fresh("gate_up + sum", 0, gate_up_sum, [&](int i) {
            cuda::GemvNorm nm{delta, res2, res, norm_w, 1e-5f};
            cuda::gemv_fused({H, 2 * I, nullptr, weight(i, 2), nullptr, sl, &nm, cuda::GemvEpilogue::kSwiglu, nullptr}, on(st));
        });
        CUDA_CHECK(cudaStreamSynchronize(st));
        if (*error) std::printf("exchange: a sum gave up waiting (rank %d)\n", *error - 1);
        for (uint2* b : ll) cudaFree(b);
        cudaFree(counters), cudaFreeHost(error);
    }
    // The LM head's GEMV at this tp (vocab 128256 split over the ranks), and the step that 32
    // such layers and it predict. Not in the estimate: the embedding, the last all-reduce and
    // final norm, the logits' all-gather (NCCL, tp > 1), the argmax and the host's turn.
    {
        const int64_t V = (128256 + tp - 1) / tp, head = V * H;
        const int hc = (int)std::max<int64_t>(1, std::min<int64_t>(kReps, (4ll << 30) / (head * 2)));
        bf16* wh = device_alloc<bf16>((size_t)hc * head);
        bf16* logits = device_alloc<bf16>(V, false);
        const double head_us =
            time_graph(st, [&](int i) { cuda::linear(h, {{1, H, V}, res, wh + (size_t)(i % hc) * head, nullptr, logits}, on(st)); });
        row("  lm_head", "tp=" + std::to_string(tp) + " N=" + std::to_string(V), head_us, rate(2.0 * head, head_us));
        const double step_us = 32 * layer_us + head_us;
        const double roof_us = (32 * bytes + 2.0 * head) / 4.24e6;  // at the copy rate measured on an H200 (docs/PERF.md)
        std::printf("step estimate, 32 layers + lm_head: %.3f ms (weights alone at 4.24 TB/s: %.3f ms)\n", step_us * 1e-3,
                    roof_us * 1e-3);
        cudaFree(wh), cudaFree(logits);
    }
    cudaFree(w), cudaFree(norm_w), cudaFree(kc), cudaFree(vc), cudaFree(act), cudaFree(slot), cudaFree(pos), cudaFree(inv);
}

// One P-token prompt at positions 0 .. P - 1 of slot 0: Q [P, q_width] and K|V [P, 2 kv_width]
// (random), the output, and the slot and position arrays, on the device.
struct PrefillInputs {
    bf16 *q = nullptr, *kv = nullptr, *out = nullptr;
    int32_t *slots = nullptr, *positions = nullptr;
    PrefillInputs(int64_t P, int64_t q_width, int64_t kv_width) {
        q = device_alloc<bf16>(P * q_width);
        kv = device_alloc<bf16>(P * 2 * kv_width);
        out = device_alloc<bf16>(P * q_width, false);
        CUDA_CHECK(cudaMalloc(&slots, P * sizeof(int32_t)));
        CUDA_CHECK(cudaMalloc(&positions, P * sizeof(int32_t)));
        std::vector<int32_t> hs(P, 0), hp(P);
        for (int64_t t = 0; t < P; ++t) hp[t] = (int32_t)t;
        CUDA_CHECK(cudaMemcpy(slots, hs.data(), P * 4, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(positions, hp.data(), P * 4, cudaMemcpyHostToDevice));
    }
    ~PrefillInputs() { cudaFree(q), cudaFree(kv), cudaFree(out), cudaFree(slots), cudaFree(positions); }
    PrefillInputs(const PrefillInputs&) = delete;
    PrefillInputs& operator=(const PrefillInputs&) = delete;
};

// Prefill attention alone (the flash kernel, KV-cache write included) for one prompt of P
// tokens, the 8B's heads, as the executor calls it: causal TFLOP/s.
void flash_sweep(cublasHandle_t h, cudaStream_t st) {
    const int64_t heads = 32, kvh = 8, hd = 128, kvw = kvh * hd, max_seq = 8192;
    bf16* kc = device_alloc<bf16>(max_seq * kvw);
    bf16* vc = device_alloc<bf16>(max_seq * kvw);
    const KernelConfig defaults = tuning;
    KernelConfig one_tile = defaults, no_short = defaults;
    one_tile.flash_tile = "1x64";
    no_short.flash_short_max = 0;
    for (const auto& [name, config] : {std::pair<const char*, KernelConfig>{"default", defaults}, {"1x64", one_tile}, {"short<=0", no_short}}) {
        tuning = config;
        for (int64_t P : {128, 256, 512, 2048, 8192}) {
            PrefillInputs in(P, heads * hd, kvw);
            cpu::AttentionShape s{P, heads, kvh, hd, max_seq, 0};
            std::vector<cuda::AttentionSegment> segs{{0, P, 0, 0}};
            const double causal_flops = 4.0 * heads * hd * P * (P + 1) / 2;
            double us = time_direct(st, [&] {
                cuda::attention({s, in.slots, in.positions, in.q, in.kv, in.kv + kvw, kc, vc, in.out, 2 * kvw, 2 * kvw, h, &segs}, on(st));
            });
            row(std::string("attention prefill flash ") + name, "T=" + std::to_string(P) + " one layer", us, rate(0, us, causal_flops) + " (causal FLOPs)");
        }
    }
    tuning = defaults;
    cudaFree(kc), cudaFree(vc);
}

// Decode attention alone, Llama-3-8B's heads (32 query, 8 KV, head_dim 128), as a decode batch
// (each token its own slot, at position ctx - 1): 1, 8 and 64 tokens over contexts of 128 to
// 4096, the one-pass kernel (attention_one_pass) on tensor cores (attention_mma) and on CUDA
// cores against the two-pass kernels, all without the split kernel (decode_splits = 1), and at
// one token the split kernel as the step chooses it.
// Bytes: the K and V rows the tokens see, over the time.
void decode_attention_sweep(cudaStream_t st) {
    const int64_t heads = 32, kvh = 8, hd = 128, kvw = kvh * hd, max_seq = 4096, max_tokens = 64;
    bf16* kc = device_alloc<bf16>(max_tokens * max_seq * kvw);
    bf16* vc = device_alloc<bf16>(max_tokens * max_seq * kvw);
    bf16* q = device_alloc<bf16>(max_tokens * heads * hd);
    bf16* out = device_alloc<bf16>(max_tokens * heads * hd, false);
    int32_t *slots = nullptr, *positions = nullptr;
    CUDA_CHECK(cudaMalloc(&slots, max_tokens * sizeof(int32_t)));
    CUDA_CHECK(cudaMalloc(&positions, max_tokens * sizeof(int32_t)));
    const KernelConfig defaults = tuning;
    for (int64_t T : {1, 8, 64})
        for (int64_t ctx : {128, 228, 1024, 4096}) {
            std::vector<int32_t> slot(T), pos(T, (int32_t)(ctx - 1));
            for (int64_t t = 0; t < T; ++t) slot[t] = (int32_t)t;
            CUDA_CHECK(cudaMemcpy(slots, slot.data(), T * sizeof(int32_t), cudaMemcpyHostToDevice));
            CUDA_CHECK(cudaMemcpy(positions, pos.data(), T * sizeof(int32_t), cudaMemcpyHostToDevice));
            cpu::AttentionShape s{T, heads, kvh, hd, max_seq, 0};
            const double bytes = 2.0 * T * ctx * kvw * 2;
            enum class Form { kOnePass, kOnePassCudaCores, kTwoPasses, kSplit };  // the last: as the step chooses (the split kernel at few tokens)
            for (Form form : {Form::kOnePass, Form::kOnePassCudaCores, Form::kTwoPasses, Form::kSplit}) {
                if (form == Form::kSplit && T > 1) continue;
                tuning = defaults;
                tuning.attention_one_pass = form == Form::kOnePass || form == Form::kOnePassCudaCores;
                tuning.attention_mma = form == Form::kOnePass;
                if (form != Form::kSplit) tuning.decode_splits = 1;
                const double us = time_graph(st, [&](int) {
                    cuda::AttentionArgs a{s, slots, positions, q, nullptr, nullptr, kc, vc, out};
                    a.decode = true;
                    cuda::attention(a, on(st));
                });
                const char* name = form == Form::kOnePass           ? "attention one pass, tensor cores"
                                   : form == Form::kOnePassCudaCores ? "attention one pass, CUDA cores"
                                   : form == Form::kTwoPasses        ? "attention two passes"
                                                                     : "attention split (as chosen)";
                row(name, "T=" + std::to_string(T) + " ctx=" + std::to_string(ctx), us, rate(bytes, us));
            }
        }
    tuning = defaults;
    for (void* p : {(void*)kc, (void*)vc, (void*)q, (void*)out, (void*)slots, (void*)positions}) CUDA_CHECK(cudaFree(p));
}

// One Mixtral-8x7B-shaped MoE layer (hidden 4096, 8 experts of 14336, top 2, bf16) at 1 to 64
// tokens: the executor's dense form (every expert by cuBLAS over every token) against the
// sparse kernels (moe.cu), each with its routing, inside a CUDA graph. Bytes: the experts the
// form reads (sparse: those some token chose) over the time.
void moe_sweep(cublasHandle_t h, cudaStream_t st) {
    const int64_t hidden = 4096, inter = 14336, experts = 8, top_k = 2, max_tokens = 64;
    const double expert_bytes = 3.0 * hidden * inter * 2;
    bf16* w13 = device_alloc<bf16>(experts * 2 * inter * hidden);
    bf16* w2 = device_alloc<bf16>(experts * hidden * inter);
    bf16* x = device_alloc<bf16>(max_tokens * hidden);
    bf16* y = device_alloc<bf16>(max_tokens * hidden, false);
    bf16* gu = device_alloc<bf16>(max_tokens * 2 * inter, false);
    bf16* act = device_alloc<bf16>(experts * max_tokens * inter, false);
    bf16* part = device_alloc<bf16>(experts * max_tokens * hidden, false);
    float* weights = device_alloc<float>(max_tokens * experts, false);
    const cuda::MoeExperts mixtral{w13, w13 + inter * hidden, 2 * inter * hidden, w2};
    // The executor's dense form: routing, then every expert over every token, weighted.
    auto dense_moe = [&](const cpu::MoeShape& s, const bf16* logits, float* wt, const bf16* xt, bf16* gut, bf16* actt, bf16* partt, bf16* yt) {
        cuda::moe_routing(s, logits, wt, on(st));
        CUDA_CHECK(cudaMemsetAsync(yt, 0, s.tokens * hidden * 2, st));
        for (int64_t e = 0; e < experts; ++e) {
            cuda::linear(h, {{s.tokens, hidden, 2 * inter}, xt, w13 + e * 2 * inter * hidden, nullptr, gut}, on(st));
            cuda::silu_mul_fused(s.tokens, inter, gut, actt, on(st));
            cuda::linear(h, {{s.tokens, inter, hidden}, actt, w2 + e * hidden * inter, nullptr, partt}, on(st));
            cuda::scale_add({s.tokens, hidden, wt + e, experts, partt, yt}, on(st));
        }
    };
    // Router logits: each token prefers two experts drawn at random, so that a batch's tokens
    // spread over the experts as trained routers' do.
    std::vector<uint16_t> lh(max_tokens * experts);
    uint32_t r = 99;
    for (int64_t t = 0; t < max_tokens; ++t) {
        for (int64_t e = 0; e < experts; ++e) lh[t * experts + e] = 0x3f80;  // 1.0
        for (int k = 0; k < 2; ++k) r = r * 1664525u + 1013904223u, lh[t * experts + (r >> 16) % experts] = 0x4040;  // 3.0
    }
    bf16* logits = device_alloc<bf16>(max_tokens * experts, false);
    CUDA_CHECK(cudaMemcpy(logits, lh.data(), lh.size() * 2, cudaMemcpyHostToDevice));
    for (int64_t T : {1, 2, 4, 8, 16, 32, 64}) {
        cpu::MoeShape s{T, hidden, experts, top_k, 0, experts, inter};
        cuda::moe_routing(s, logits, weights, on(st));
        std::vector<float> w(T * experts);
        CUDA_CHECK(cudaMemcpyAsync(w.data(), weights, w.size() * 4, cudaMemcpyDeviceToHost, st));
        CUDA_CHECK(cudaStreamSynchronize(st));
        int chosen = 0;
        for (int64_t e = 0; e < experts; ++e) {
            bool any = false;
            for (int64_t t = 0; t < T; ++t) any = any || w[t * experts + e] != 0.0f;
            chosen += any;
        }
        double dense = time_graph(st, [&](int) { dense_moe(s, logits, weights, x, gu, act, part, y); });
        double sparse = time_graph(st, [&](int) {
            cuda::moe_routing(s, logits, weights, on(st));
            cuda::moe_sparse({s, weights, x, mixtral, y}, act, part, on(st));
        });
        double grouped = time_direct(st, [&] {
            cuda::moe_routing(s, logits, weights, on(st));
            cuda::moe_grouped(h, {s, weights, x, mixtral, y}, on(st));
        });
        const std::string shape = "T=" + std::to_string(T) + ", " + std::to_string(chosen) + " of 8 experts chosen";
        row("moe layer dense (cuBLAS)", shape, dense, rate(experts * expert_bytes, dense));
        row("moe layer sparse (moe.cu)", shape, sparse, rate(chosen * expert_bytes, sparse));
        row("moe layer by expert (not in a graph)", shape, grouped, rate(chosen * expert_bytes, grouped));
    }
    // Prompt-sized: dense against by expert, each called directly (prefill runs no graph).
    for (int64_t T : {512, 2048}) {
        cpu::MoeShape s{T, hidden, experts, top_k, 0, experts, inter};
        bf16* xt = device_alloc<bf16>(T * hidden);
        bf16* yt = device_alloc<bf16>(T * hidden, false);
        bf16* gut = device_alloc<bf16>(T * 2 * inter, false);
        bf16* actt = device_alloc<bf16>(T * inter, false);
        bf16* partt = device_alloc<bf16>(T * hidden, false);
        float* wt = device_alloc<float>(T * experts, false);
        bf16* lt = device_alloc<bf16>(T * experts, false);
        std::vector<uint16_t> l(T * experts);
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t e = 0; e < experts; ++e) l[t * experts + e] = 0x3f80;
            for (int k = 0; k < 2; ++k) r = r * 1664525u + 1013904223u, l[t * experts + (r >> 16) % experts] = 0x4040;
        }
        CUDA_CHECK(cudaMemcpy(lt, l.data(), l.size() * 2, cudaMemcpyHostToDevice));
        const double flops_top_k = 2.0 * T * top_k * 3.0 * hidden * inter;
        double dense = time_direct(st, [&] { dense_moe(s, lt, wt, xt, gut, actt, partt, yt); });
        double grouped = time_direct(st, [&] {
            cuda::moe_routing(s, lt, wt, on(st));
            cuda::moe_grouped(h, {s, wt, xt, mixtral, yt}, on(st));
        });
        const std::string shape = "T=" + std::to_string(T) + " (top-2 FLOPs)";
        row("moe layer dense (cuBLAS)", shape, dense, rate(0, dense, flops_top_k));
        row("moe layer by expert (not in a graph)", shape, grouped, rate(0, grouped, flops_top_k));
        for (void* p : {(void*)xt, (void*)yt, (void*)gut, (void*)actt, (void*)partt, (void*)wt, (void*)lt}) cudaFree(p);
    }
    for (void* p : {(void*)w13, (void*)w2, (void*)x, (void*)y, (void*)gu, (void*)act, (void*)part, (void*)weights, (void*)logits}) cudaFree(p);
}

// A file read into pinned memory with pread, `bytes` from `at`.
void pread_into(int fd, char* buf, size_t at, size_t bytes) {
    for (size_t got = 0; got < bytes;) {
        const ssize_t n = pread(fd, buf + got, bytes - got, (off_t)(at + got));
        if (n <= 0) std::perror("pread"), std::exit(1);
        got += (size_t)n;
    }
}

// `threads` threads, each with two pinned buffers of `piece` bytes (from `pool`, 2 x piece x
// threads bytes; allocated here when null) and a stream, fill their buffers in turn with
// fill(buffer, offset, bytes) for pieces t, t + threads, ... of [begin, end) and, with `copy`,
// copy them up (into a ring of `ring` device bytes at d); returns the seconds, and each thread's
// seconds inside fill() in fill_s.
double bounce(size_t begin, size_t end, char* d, size_t ring, size_t piece, int threads, char* pool, bool copy,
              const std::function<void(char*, size_t, size_t)>& fill, std::vector<double>& fill_s) {
    char* pinned = pool;
    if (!pool) CUDA_CHECK(cudaHostAlloc(&pinned, 2 * piece * threads, cudaHostAllocDefault));
    fill_s.assign(threads, 0);
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
            cudaStream_t s;
            cudaEvent_t done[2];
            CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
            for (auto& e : done) {
                CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
                CUDA_CHECK(cudaEventRecord(e, s));
            }
            int k = 0;
            for (size_t at = begin + t * piece; at < end; at += threads * piece, k ^= 1) {
                const size_t n = std::min(piece, end - at);
                char* buf = pinned + (2 * t + k) * piece;
                CUDA_CHECK(cudaEventSynchronize(done[k]));  // its previous copy up has finished
                auto f0 = std::chrono::steady_clock::now();
                fill(buf, at, n);
                fill_s[t] += std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
                if (copy) CUDA_CHECK(cudaMemcpyAsync(d + at % ring, buf, n, cudaMemcpyHostToDevice, s));
                CUDA_CHECK(cudaEventRecord(done[k], s));
            }
            CUDA_CHECK(cudaStreamSynchronize(s));
            for (auto& e : done) cudaEventDestroy(e);
            cudaStreamDestroy(s);
        });
    for (auto& th : workers) th.join();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!pool) cudaFreeHost(pinned);
    return sec;
}

// The link's own rate (copies from pinned memory, 1 and 2 streams), and the file's pages copied
// by threads into pinned buffers that are then copied up (a bounce: CPU copies beside the DMA),
// with 4 to 16 threads, each with two 16 MiB buffers of its own and a stream.
void bounce_from_file(const char* map, size_t total, char* d, size_t ring) {
    constexpr size_t kPiece = 16ul << 20;
    for (int streams : {1, 2}) {
        char* pinned = nullptr;
        CUDA_CHECK(cudaHostAlloc(&pinned, 2 * kPiece * streams, cudaHostAllocDefault));
        std::memset(pinned, 1, 2 * kPiece * streams);
        std::vector<cudaStream_t> ss(streams);
        for (auto& s : ss) CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        auto t0 = std::chrono::steady_clock::now();
        size_t i = 0;
        for (size_t at = 0; at < total; at += kPiece, ++i)
            CUDA_CHECK(cudaMemcpyAsync(d + at % ring, pinned + (i % (2 * streams)) * kPiece, kPiece, cudaMemcpyHostToDevice, ss[i % streams]));
        for (auto& s : ss) {
            CUDA_CHECK(cudaStreamSynchronize(s));
            cudaStreamDestroy(s);
        }
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("pinned cudaMemcpyAsync, %d stream(s), 16 MiB pieces: %.1f GB/s\n", streams, total / 1e9 / sec);
        cudaFreeHost(pinned);
    }
    std::vector<double> fill_s;
    for (int threads : {4, 8, 16}) {
        const double sec = bounce(0, total, d, ring, kPiece, threads, nullptr, true,
                                  [&](char* buf, size_t at, size_t n) { std::memcpy(buf, map + at, n); }, fill_s);
        std::printf("mmap memcpy into pinned + copy, %2d threads, 16 MiB pieces: %.1f GB/s\n", threads, total / 1e9 / sec);
    }
}

// The file read with pread (no mapping: the kernel copies from the page cache) into pinned
// buffers that are then copied up, 4 to 16 threads, each with two buffers of its own and a stream.
void pread_from_file(int fd, size_t total, char* d, size_t ring) {
    std::vector<double> read_s;
    for (size_t piece : {8ul << 20, 32ul << 20})
        for (int threads : {4, 8, 16}) {
            const double sec = bounce(0, total, d, ring, piece, threads, nullptr, true,
                                      [&](char* buf, size_t at, size_t n) { pread_into(fd, buf, at, n); }, read_s);
            double rs = 0;
            for (double r : read_s) rs += r;
            std::printf("pread into pinned + copy, %2d threads, %2zu MiB pieces: %.1f GB/s (pread %.2f thread-s, %.1f GB/s a thread)\n", threads,
                        piece >> 20, total / 1e9 / sec, rs, total / 1e9 / rs);
        }
}

// A file in the page cache straight to the device, no CPU copy: the file mmap'd read-only,
// each piece registered (cudaHostRegisterReadOnly), copied and unregistered, on 1 to 8 threads
// with a stream each; against cudaMemcpy from the unregistered mapping (the driver stages it).
void h2d_from_file(const char* path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) std::perror(path), std::exit(1);
    struct stat stt;
    fstat(fd, &stt);
    const size_t total = std::min<size_t>((size_t)stt.st_size & ~((64ul << 20) - 1), 8ul << 30);
    char* map = (char*)mmap(nullptr, total, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) std::perror("mmap"), std::exit(1);
    volatile char sink = 0;
    for (size_t at = 0; at < total; at += 4096) sink += map[at];  // in the page cache and mapped
    const size_t ring = 1ul << 30;
    char* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, ring));
    for (size_t piece : {8ul << 20, 64ul << 20}) {
        for (int threads : {1, 4, 8}) {
            double reg_s = 0;
            auto t0 = std::chrono::steady_clock::now();
            std::vector<std::thread> pool;
            std::vector<double> reg(threads, 0);
            for (int t = 0; t < threads; ++t)
                pool.emplace_back([&, t] {
                    cudaStream_t s;
                    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
                    for (size_t at = t * piece; at < total; at += threads * piece) {
                        auto r0 = std::chrono::steady_clock::now();
                        CUDA_CHECK(cudaHostRegister(map + at, piece, cudaHostRegisterReadOnly));
                        reg[t] += std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count();
                        CUDA_CHECK(cudaMemcpyAsync(d + at % ring, map + at, piece, cudaMemcpyHostToDevice, s));
                        CUDA_CHECK(cudaStreamSynchronize(s));
                        CUDA_CHECK(cudaHostUnregister(map + at));
                    }
                    cudaStreamDestroy(s);
                });
            for (auto& th : pool) th.join();
            double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            for (double r : reg) reg_s += r;
            std::printf("mmap+register+copy  %2d threads, %3zu MiB pieces: %.2f GB in %.3f s = %.1f GB/s (registering %.3f thread-s)\n", threads,
                        piece >> 20, total / 1e9, sec, total / 1e9 / sec, reg_s);
        }
    }
    auto t0 = std::chrono::steady_clock::now();
    for (size_t at = 0; at < total; at += 64ul << 20) CUDA_CHECK(cudaMemcpy(d + at % ring, map + at, 64ul << 20, cudaMemcpyHostToDevice));
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("mmap pageable cudaMemcpy, 64 MiB pieces: %.1f GB/s\n", total / 1e9 / sec);
    bounce_from_file(map, total, d, ring);
    pread_from_file(fd, total, d, ring);
    cudaFree(d);
    munmap(map, total);
    close(fd);
}


// --h2d-mix FILE: where the page cache -> device ceiling lies, on the whole file in a fresh
// mapping (nothing pre-touched, as the loader meets it): pread alone (no copy up: the CPU side's
// own rate), pread into pinned buffers with 16 to 32 threads, the same into buffers on
// transparent huge pages, and pread beside the file's own registered pages (one part of the
// file through each at once: the registered part costs the host one read of each byte, the
// pread part three).
void h2d_mix(const char* path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) std::perror(path), std::exit(1);
    struct stat stt;
    if (fstat(fd, &stt) != 0) std::perror(path), std::exit(1);
    const size_t total = (size_t)stt.st_size & ~((64ul << 20) - 1);
    if (total == 0) std::fprintf(stderr, "%s: under 64 MiB, too small to time\n", path), std::exit(1);
    const size_t ring = 1ul << 30;
    char* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, ring));
    std::printf("h2d-mix: %.2f GB, %u hardware threads\n", total / 1e9, std::thread::hardware_concurrency());
    // Threads over pieces of [begin, end), each with two buffers of `pool`.
    std::vector<double> fill_s;
    auto pread_part = [&](size_t begin, size_t end, size_t piece, int threads, char* pool, bool copy) {
        bounce(begin, end, d, ring, piece, threads, pool, copy, [&](char* buf, size_t at, size_t n) { pread_into(fd, buf, at, n); }, fill_s);
    };
    auto reg_part = [&](const char* map, size_t begin, size_t end, size_t piece, int threads) {
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; ++t)
            ts.emplace_back([&, t] {
                cudaStream_t s;
                CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
                for (size_t at = begin + t * piece; at < end; at += threads * piece) {
                    const size_t n = std::min(piece, end - at);
                    CUDA_CHECK(cudaHostRegister(const_cast<char*>(map) + at, n, cudaHostRegisterReadOnly));
                    CUDA_CHECK(cudaMemcpyAsync(d + at % ring, map + at, n, cudaMemcpyHostToDevice, s));
                    CUDA_CHECK(cudaStreamSynchronize(s));
                    CUDA_CHECK(cudaHostUnregister(const_cast<char*>(map) + at));
                }
                CUDA_CHECK(cudaStreamDestroy(s));
            });
        for (auto& t : ts) t.join();
    };
    const int kMaxThreads = 32;
    const size_t kMaxPiece = 32ul << 20;
    char* pinned = nullptr;
    CUDA_CHECK(cudaHostAlloc(&pinned, 2 * kMaxPiece * kMaxThreads, cudaHostAllocDefault));
    char* huge = nullptr;
    const size_t huge_bytes = 2 * kMaxPiece * kMaxThreads;
    if (posix_memalign((void**)&huge, 2ul << 20, huge_bytes) != 0) std::perror("posix_memalign"), std::exit(1);
    madvise(huge, huge_bytes, MADV_HUGEPAGE);
    std::memset(huge, 0, huge_bytes);
    CUDA_CHECK(cudaHostRegister(huge, huge_bytes, cudaHostRegisterDefault));
    auto timed = [&](const char* what, const std::function<void()>& f) {
        auto t0 = std::chrono::steady_clock::now();
        f();
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("%-72s %.3f s = %.1f GB/s\n", what, sec, total / 1e9 / sec);
    };
    char label[160];
    for (int threads : {16, 32}) {
        std::snprintf(label, sizeof label, "pread only (no copy up), %d threads, 8 MiB", threads);
        timed(label, [&] { pread_part(0, total, 8ul << 20, threads, pinned, false); });
    }
    for (size_t piece : {512ul << 10, 1ul << 20, 2ul << 20, 8ul << 20, 32ul << 20})
        for (int threads : {8, 16, 24, 32}) {
            std::snprintf(label, sizeof label, "pread into pinned + copy, %d threads, %zu KiB", threads, piece >> 10);
            timed(label, [&] { pread_part(0, total, piece, threads, pinned, true); });
        }
    for (int threads : {16, 32}) {
        std::snprintf(label, sizeof label, "pread into huge-page pinned + copy, %d threads, 8 MiB", threads);
        timed(label, [&] { pread_part(0, total, 8ul << 20, threads, huge, true); });
    }
    for (int reg_threads : {2, 4, 8}) {
        char* map = (char*)mmap(nullptr, total, PROT_READ, MAP_SHARED, fd, 0);  // fresh: no page mapped yet
        if (map == MAP_FAILED) std::perror("mmap"), std::exit(1);
        std::snprintf(label, sizeof label, "registered pages alone, %d threads, 64 MiB (fresh mapping)", reg_threads);
        timed(label, [&] { reg_part(map, 0, total, 64ul << 20, reg_threads); });
        munmap(map, total);
    }
    for (double reg_share : {0.2, 0.3, 0.4})
        for (int reg_threads : {2, 4, 8}) {
            char* map = (char*)mmap(nullptr, total, PROT_READ, MAP_SHARED, fd, 0);
            if (map == MAP_FAILED) std::perror("mmap"), std::exit(1);
            const size_t split = (size_t)(total * (1 - reg_share)) & ~((64ul << 20) - 1);
            std::snprintf(label, sizeof label, "pread 16 threads on %.0f%% + registered %d threads on %.0f%%", 100 * (1 - reg_share), reg_threads,
                          100 * reg_share);
            timed(label, [&] {
                std::thread reg([&] { reg_part(map, split, total, 64ul << 20, reg_threads); });
                pread_part(0, split, 8ul << 20, 16, pinned, true);
                reg.join();
            });
            munmap(map, total);
        }
    CUDA_CHECK(cudaHostUnregister(huge));
    std::free(huge);
    CUDA_CHECK(cudaFreeHost(pinned));
    CUDA_CHECK(cudaFree(d));
    close(fd);
}

}  // namespace

// --quant: the quantized GEMVs (kernels/cuda/quant_gemv.h) on the 8B's linears, FP8 with 128x128
// blocks and GPTQ int4 with groups of 128 (symmetric, in order), at 1 and 8 tokens, on tensor
// cores and by FMAs (quant_mma true and false), and the
// dequantization to bf16 that prefill takes; rates over the bytes each reads (weights and scales).
void quant_sweep(cudaStream_t st) {
    const int64_t max_seq = 4096;  // qkv's RoPE + cache write: one token of slot 0 at position 127, 8 KV heads of 128
    int32_t *slot = device_int(0), *pos = device_int(127);
    float* inv = device_alloc<float>(64, false);
    bf16 *kc = device_alloc<bf16>(max_seq * 8 * 128), *vc = device_alloc<bf16>(max_seq * 8 * 128);
    for (const LinearShape& sh : k8bLinears) {
        const std::string dims = " K=" + std::to_string(sh.K) + " N=" + std::to_string(sh.N);
        bf16* x = device_alloc<bf16>(8 * sh.K);
        bf16* y = device_alloc<bf16>(8 * sh.N, false);
        bf16* dense = device_alloc<bf16>(sh.K * sh.N, false);
        for (bool fp8 : {true, false}) {
            cuda::QuantWeightView v;
            int64_t wbytes, sbytes;
            std::vector<void*> owned;
            if (fp8) {
                v.format = cuda::QuantWeightView::Format::kFp8;
                v.fp8.l = fp8_blocks(sh.K, sh.N);
                wbytes = sh.K * sh.N, sbytes = (sh.N / 128) * (sh.K / 128) * 4;
            } else {
                v.format = cuda::QuantWeightView::Format::kGptq;
                v.gptq.l.N = sh.N, v.gptq.l.K = sh.K, v.gptq.l.Kp = sh.K, v.gptq.l.G = sh.K / 128, v.gptq.l.seg_end[0] = sh.N;
                v.gptq.l.group_steps = true;  // groups of 128 in order
                wbytes = cpu::gptq_words(v.gptq.l) * 4, sbytes = sh.N * (sh.K / 128) * 2;
                std::vector<int32_t> groups(sh.K / 32);
                for (size_t c = 0; c < groups.size(); ++c) groups[c] = (int32_t)(c / 4);
                int32_t* cg = device_alloc<int32_t>(groups.size(), false);
                CUDA_CHECK(cudaMemcpy(cg, groups.data(), groups.size() * 4, cudaMemcpyHostToDevice));
                v.gptq.chunk_group = cg, owned.push_back(cg);
            }
            const int copies = (int)std::max<int64_t>(1, std::min<int64_t>(kReps, (4ll << 30) / (wbytes + sbytes)));
            char* w = device_alloc<char>((size_t)copies * wbytes);
            char* sc = device_alloc<char>((size_t)copies * sbytes);
            owned.push_back(w), owned.push_back(sc);
            auto at = [&](int i) {
                cuda::QuantWeightView c = v;
                if (fp8) c.fp8.w = (const uint8_t*)(w + (size_t)(i % copies) * wbytes), c.fp8.scale = (const float*)(sc + (size_t)(i % copies) * sbytes);
                else c.gptq.qw = (const uint32_t*)(w + (size_t)(i % copies) * wbytes), c.gptq.scales = (const uint16_t*)(sc + (size_t)(i % copies) * sbytes);
                return c;
            };
            const std::string name = std::string(fp8 ? "quant fp8 " : "quant gptq ") + sh.name;
            // The forms (quant_ring, quant_mma): ring (FP8 only), tensor cores fed from registers, FMAs.
            const char* forms[3] = {" ring", " mma", " fma"};
            auto set_form = [&](int f) { tuning.quant_mma = f < 2, tuning.quant_ring = f == 0; };
            const int first_form = fp8 ? 0 : 1;
            for (int f = first_form; f < 3; ++f)
                for (int64_t T : {1, 8}) {
                    set_form(f);
                    double us = time_graph(st, [&](int i) {
                        cuda::QuantGemvArgs a;
                        a.w = at(i), a.tokens = T, a.x = x, a.y = y;
                        cuda::quant_gemv(a, on(st));
                    });
                    row(name + forms[f], "T=" + std::to_string(T) + dims, us, rate((double)(wbytes + sbytes), us) + (copies < kReps ? " (L2 may help)" : ""));
                }
            // The tensor-core GEMV at one token (FP8: its ring form) on one copy of the weights, read
            // again each launch: against the rows above, which stream 20 copies from HBM, what the
            // kernel takes when its bytes can come from L2 (as far as its evict-first loads, or the
            // ring's streaming window, leave them there: the hit rate is not measured).
            set_form(0);
            const double one_copy = time_graph(st, [&](int) {
                cuda::QuantGemvArgs a;
                a.w = at(0), a.tokens = 1, a.x = x, a.y = y;
                cuda::quant_gemv(a, on(st));
            });
            row(name + " mma one copy", "T=1" + dims, one_copy, rate((double)(wbytes + sbytes), one_copy));
            // With the norm prologue (and gate_up's SwiGLU, qkv's RoPE + cache write) at one token, as
            // the decode step runs them.
            if (std::strcmp(sh.name, "down") != 0) {
                const bool gate_up = std::strcmp(sh.name, "gate_up") == 0, qkv = std::strcmp(sh.name, "qkv") == 0;
                for (int f = first_form; f < 3; ++f) {
                    set_form(f);
                    double us = time_graph(st, [&](int i) {
                        cuda::QuantGemvArgs a;
                        a.w = at(i), a.tokens = 1, a.y = y;
                        a.has_norm = true;
                        a.norm.x = x, a.norm.residual = x + sh.K, a.norm.residual_out = x + 2 * sh.K, a.norm.weight = x + 3 * sh.K, a.norm.eps = 1e-5f;
                        if (gate_up) a.epi = cuda::GemvEpilogue::kSwiglu;
                        if (qkv) a.epi = cuda::GemvEpilogue::kRopeKv, a.rope = cuda::GemvRopeKv{32, 8, 128, max_seq, slot, pos, inv, kc, vc};
                        cuda::quant_gemv(a, on(st));
                    });
                    row(name + " norm" + (gate_up ? "+swiglu" : qkv ? "+rope" : "") + forms[f], "T=1" + dims, us, rate((double)(wbytes + sbytes), us));
                }
            }
            set_form(0);
            double us = time_graph(st, [&](int i) { cuda::quant_dequantize(at(i), dense, on(st)); });
            row(name + " to bf16", dims, us, rate((double)(wbytes + sbytes + sh.K * sh.N * 2), us));
            for (void* p : owned) CUDA_CHECK(cudaFree(p));
        }
        CUDA_CHECK(cudaFree(x));
        CUDA_CHECK(cudaFree(y));
        CUDA_CHECK(cudaFree(dense));
    }
    for (void* p : {(void*)slot, (void*)pos, (void*)inv, (void*)kc, (void*)vc}) CUDA_CHECK(cudaFree(p));
}

// The decode GEMV's rate against how the batch GEMV's tiles (32 rows) fill the SMs: K = 4096 and
// N from half a wave of tiles to seven, at 8 tokens (and 1, whose GEMV has no such tiles: the same
// shapes for comparison); W streamed from HBM.
void gemv_grid_sweep(cublasHandle_t h, cudaStream_t st) {
    int dev = 0, count = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev));
    const int64_t K = 4096, sms = count;
    for (int64_t tiles : {sms / 2, sms - 4, sms, sms + 32, 3 * sms / 2, 2 * sms - 8, 2 * sms, 3 * sms, 7 * sms - 28, 7 * sms}) {
        const int64_t N = 32 * tiles, wbytes = K * N * 2;
        const int copies = (int)std::max<int64_t>(1, std::min<int64_t>(kReps, (4ll << 30) / wbytes));
        bf16* w = device_alloc<bf16>((size_t)copies * K * N);
        bf16* x = device_alloc<bf16>(8 * K);
        bf16* y = device_alloc<bf16>(8 * N, false);
        for (int64_t T : {1, 8}) {
            const double us = time_graph(st, [&](int i) {
                cuda::linear(h, {{T, K, N}, x, w + (size_t)(i % copies) * K * N, nullptr, y, nullptr, cuda::LinearRoute::kAuto}, on(st));
            });
            row("gemv grid, " + std::to_string(tiles) + " tiles", "T=" + std::to_string(T) + " K=4096 N=" + std::to_string(N), us,
                rate((double)wbytes, us));
        }
        for (void* p : {(void*)w, (void*)x, (void*)y}) CUDA_CHECK(cudaFree(p));
    }
}

// --linear K N T ROUTE [EPI]: one product x W^T of T tokens (bf16, W [N, K]) for Nsight Compute: 10
// direct launches of ROUTE ("batch": the decode route tpx takes, the batch GEMM past 8 tokens with
// batch_gemm on; "cublas": cublasGemmEx with its own algorithm, not the tuner's pick) first, each W
// a distinct copy, so that `ncu --launch-skip 3 --launch-count 1` profiles one of them; then both
// routes timed inside graphs as the default sweep's linear rows are. EPI, as the
// decode step runs the product: "swiglu" (N = 2 x the MLP's width; the route's fused SwiGLU, or
// cuBLAS then silu_mul_fused), "rope" (N = (heads + 2 kv_heads) x 128 with 8 KV heads; the fused
// RoPE + cache write, or cuBLAS then rope() into the cache), at positions 128 + t of slot t.
void linear_one(cublasHandle_t h, cudaStream_t st, int64_t K, int64_t N, int64_t T, bool batch, cuda::GemvEpilogue epi) {
    TPX_CHECK(K > 0 && N > 0 && T > 0 && T <= 64, "tpx-kbench --linear " + std::to_string(K) + " " + std::to_string(N) + " " +
                                                      std::to_string(T) + ": K, N > 0 and 1 <= T <= 64");
    constexpr int64_t kHd = 128, kKv = 8, kMaxSeq = 512;
    const int64_t heads = N / kHd - 2 * kKv;
    TPX_CHECK(epi != cuda::GemvEpilogue::kSwiglu || N % 2 == 0, "tpx-kbench --linear: swiglu needs an even N, not " + std::to_string(N));
    TPX_CHECK(epi != cuda::GemvEpilogue::kRopeKv || (N % kHd == 0 && heads > 0 && heads % kKv == 0),
              "tpx-kbench --linear: rope needs N = (heads + 16) x 128 with heads a multiple of 8, not " + std::to_string(N));
    const bool rope = epi == cuda::GemvEpilogue::kRopeKv;
    const int64_t wbytes = K * N * 2;
    const int copies = (int)std::max<int64_t>(1, std::min<int64_t>(kReps, (4ll << 30) / wbytes));
    bf16* w = device_alloc<bf16>((size_t)copies * K * N);
    bf16* x = device_alloc<bf16>(T * K);
    bf16* y = device_alloc<bf16>(T * N, false);
    bf16* out = device_alloc<bf16>(T * N, false);  // the epilogue's output: SwiGLU's, or RoPE's q
    bf16* kc = device_alloc<bf16>(rope ? T * kMaxSeq * kKv * kHd : 0, false);  // the caches: slot t for token t
    bf16* vc = device_alloc<bf16>(rope ? T * kMaxSeq * kKv * kHd : 0, false);
    std::vector<int32_t> slots(T), positions(T);
    for (int64_t t = 0; t < T; ++t) slots[t] = (int32_t)t, positions[t] = (int32_t)(128 + t);
    int32_t* slot = device_alloc<int32_t>(T, false);
    int32_t* pos = device_alloc<int32_t>(T, false);
    CUDA_CHECK(cudaMemcpy(slot, slots.data(), T * sizeof(int32_t), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(pos, positions.data(), T * sizeof(int32_t), cudaMemcpyHostToDevice));
    const cpu::RopeParams rp{heads, kKv, kHd, 500000.0};
    const std::vector<float> inv_host = cpu::rope_inv_freq(rp);
    float* inv = device_alloc<float>(inv_host.size(), false);
    CUDA_CHECK(cudaMemcpy(inv, inv_host.data(), inv_host.size() * sizeof(float), cudaMemcpyHostToDevice));
    const cuda::GemvRopeKv rk{heads, kKv, kHd, kMaxSeq, slot, pos, inv, kc, vc};
    tuning.batch_gemm = true;
    auto op = [&](int i, bool b) {
        const bf16* wi = w + (size_t)(i % copies) * K * N;
        if (epi == cuda::GemvEpilogue::kNone) {
            cuda::linear(h, {{T, K, N}, x, wi, nullptr, y, nullptr, b ? cuda::LinearRoute::kAuto : cuda::LinearRoute::kGemm}, on(st));
        } else if (b) {
            cuda::GemvFusedArgs f{K, N, x, wi, nullptr, out, nullptr, epi, &rk, T};
            cuda::gemv_fused(f, on(st));
        } else {
            cuda::linear(h, {{T, K, N}, x, wi, nullptr, y, nullptr, cuda::LinearRoute::kGemm}, on(st));
            if (epi == cuda::GemvEpilogue::kSwiglu) {
                cuda::silu_mul_fused(T, N / 2, y, out, on(st));
            } else {
                cuda::RopeArgs r;
                r.p = rp, r.tokens = T, r.positions = pos, r.inv_freq = inv;
                r.q_in = y, r.k_in = y + heads * kHd, r.q = out, r.in_stride = N;
                r.cache = {kc, vc, y + (heads + kKv) * kHd, N, slot, kMaxSeq};
                cuda::rope(r, on(st));
            }
        }
    };
    for (int i = 0; i < 10; ++i) op(i, batch);
    CUDA_CHECK(cudaStreamSynchronize(st));
    const char* epi_name = epi == cuda::GemvEpilogue::kSwiglu ? " + swiglu" : epi == cuda::GemvEpilogue::kRopeKv ? " + rope" : "";
    const std::string shape = "T=" + std::to_string(T) + " K=" + std::to_string(K) + " N=" + std::to_string(N);
    for (bool b : {true, false}) {
        const double us = time_graph(st, [&](int i) { op(i, b); });
        row(std::string("linear ") + (b ? "tpx route" : "cublas") + epi_name, shape, us, rate((double)wbytes, us));
    }
    for (void* p : std::initializer_list<void*>{w, x, y, out, kc, vc, slot, pos, inv}) cudaFree(p);
}

// The small ops of a decode step (--small-ops, and the whole run's end).
void small_ops(cudaStream_t st) {
    bf16* a = device_alloc<bf16>(64 * 128256);
    bf16* b = device_alloc<bf16>(64 * 28672);
    bf16* c = device_alloc<bf16>(64 * 28672, false);
    bf16* d = device_alloc<bf16>(64 * 28672, false);
    float* f = device_alloc<float>(64 * 128256, false);
    int32_t* ids = device_alloc<int32_t>(64, false);
    float* inv = device_alloc<float>(64, false);
    void* scratch = device_alloc<char>(cuda::argmax_scratch_bytes(64), false);
    for (int64_t T : {1, 64}) {
        std::string t = "T=" + std::to_string(T);
        row("add_rmsnorm", t + " W=4096", time_graph(st, [&](int) { cuda::add_rmsnorm({T, 4096, 1e-5f, a, b, d}, b, c, on(st)); }), "");
        row("silu_mul_fused", t + " I=14336", time_graph(st, [&](int) { cuda::silu_mul_fused(T, 14336, a, c, on(st)); }), "");
        cpu::RopeParams p{32, 8, 128, 500000.0};
        row("rope (strided in)", t, time_graph(st, [&](int) { cuda::rope({p, T, ids, inv, a, a + 4096, c, d, 6144}, on(st)); }), "");
        row("bf16_to_f32 logits", t + " V=128256", time_graph(st, [&](int) { cuda::bf16_to_f32(T * 128256, a, f, on(st)); }), "");
        row("argmax_rows", t + " V=128256", time_graph(st, [&](int) { cuda::argmax_rows(T, 128256, f, ids, on(st)); }), "");
        row("argmax_rows (bf16, the forward's end)", t + " V=128256",
            time_graph(st, [&](int) { cuda::argmax_rows(T, 128256, a, ids, on(st), scratch); }), "");
    }
    row("empty graph node (memset 4 B)", "", time_graph(st, [&](int) { CUDA_CHECK(cudaMemsetAsync(ids, 0, 4, st)); }), "");
}

int main(int argc, char** argv) {
    bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreate(&st));
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    void* ws = nullptr;
    CUDA_CHECK(cudaMalloc(&ws, 32u << 20));
    CUBLAS_CHECK(cublasSetWorkspace(h, ws, 32u << 20));
    CUBLAS_CHECK(cublasSetStream(h, st));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("tpx-kbench on %s; per op inside a CUDA graph of %d, median of 7 replays\n", prop.name, kReps);
    if (argc > 2 && std::strcmp(argv[1], "--h2d-mix") == 0) {
        h2d_mix(argv[2]);
        return 0;
    }
    if (argc > 2 && std::strcmp(argv[1], "--h2d-file") == 0) {
        h2d_from_file(argv[2]);
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--linear") == 0) {
        const bool batch = argc > 5 && std::strcmp(argv[5], "batch") == 0;
        const std::string epi = argc > 6 ? argv[6] : "none";
        TPX_CHECK((argc == 6 || argc == 7) && (batch || std::strcmp(argv[5], "cublas") == 0) &&
                      (epi == "none" || epi == "swiglu" || epi == "rope"),
                  "usage: tpx-kbench --linear K N T batch|cublas [none|swiglu|rope]");
        const cuda::GemvEpilogue e = epi == "swiglu" ? cuda::GemvEpilogue::kSwiglu : epi == "rope" ? cuda::GemvEpilogue::kRopeKv : cuda::GemvEpilogue::kNone;
        linear_one(h, st, std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), batch, e);
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--moe") == 0) {
        moe_sweep(h, st);
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--gemv-grid") == 0) {
        gemv_grid_sweep(h, st);
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--decode-attention") == 0) {
        decode_attention_sweep(st);
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--flash") == 0) {
        flash_sweep(h, st);
        return 0;
    }
    if (argc > 2 && std::strcmp(argv[1], "--layer") == 0) {
        layer_sweep(h, st, std::atoi(argv[2]));
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--quant") == 0) {
        quant_sweep(st);
        quant_layer(st);
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--small-ops") == 0) {
        small_ops(st);
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--gemm") == 0) {
        gemm_sweep(h, st, ws);
        return 0;
    }

    // Host to device: 1 GiB from pinned memory (cudaHostAlloc, default and write-combined) in
    // copies of 2 MiB to 1 GiB, one stream; the loader's ceiling besides the file reads.
    {
        const size_t total = 1u << 30;
        bf16* d = device_alloc<bf16>(total / 2, false);
        for (unsigned flags : {cudaHostAllocDefault, cudaHostAllocWriteCombined}) {
            void* hbuf = nullptr;
            CUDA_CHECK(cudaHostAlloc(&hbuf, total, flags));
            std::memset(hbuf, 1, total);
            for (size_t piece : {2ul << 20, 8ul << 20, 64ul << 20, 1ul << 30}) {
                double us = time_direct(st, [&] {
                    for (size_t at = 0; at < total; at += piece)
                        CUDA_CHECK(cudaMemcpyAsync((char*)d + at, (char*)hbuf + at, piece, cudaMemcpyHostToDevice, st));
                });
                row(std::string("H2D pinned") + (flags ? " write-combined" : ""), std::to_string(piece >> 20) + " MiB copies", us,
                    rate((double)total, us));
            }
            CUDA_CHECK(cudaFreeHost(hbuf));
        }
        CUDA_CHECK(cudaFree(d));
        if (argc > 1 && std::strcmp(argv[1], "--h2d") == 0) return 0;
    }

    // Linear layers of one Llama-3-8B layer and the lm_head; W streamed from HBM (distinct per rep
    // up to 4 GB in all).
    struct Shape { const char* name; int64_t K, N; };
    const Shape shapes[] = {{"qkv", 4096, 6144}, {"o", 4096, 4096}, {"gate_up", 4096, 28672}, {"down", 14336, 4096}, {"lm_head", 4096, 128256}};
    for (const Shape& sh : shapes) {
        int64_t wbytes = sh.K * sh.N * 2;
        int copies = (int)std::max<int64_t>(1, std::min<int64_t>(kReps, (4ll << 30) / wbytes));
        bf16* w = device_alloc<bf16>((size_t)copies * sh.K * sh.N);
        bf16* x = device_alloc<bf16>(64 * sh.K);
        bf16* y = device_alloc<bf16>(64 * sh.N, false);
        tuning.batch_gemm = true;  // (off by default: slower than cuBLAS so far) the route past 8 tokens
        for (int64_t T : {1, 2, 4, 8, 16, 32, 64}) {
            for (bool gemv : {true, false}) {
                if (gemv && T > cuda::kBatchGemmMaxTokens) continue;
                double us = time_graph(st, [&](int i) {
                    cuda::linear(h, {{T, sh.K, sh.N}, x, w + (size_t)(i % copies) * sh.K * sh.N, nullptr, y, nullptr, gemv ? cuda::LinearRoute::kAuto : cuda::LinearRoute::kGemm}, on(st));
                });
                row(std::string("linear ") + sh.name + (!gemv ? " cublas" : T == 1 ? " gemv" : T <= cuda::kGemvMaxTokens ? " gemv mma" : " batch gemm"), "T=" + std::to_string(T) + " K=" + std::to_string(sh.K) + " N=" + std::to_string(sh.N), us,
                    rate((double)wbytes, us) + (copies < kReps ? " (L2 may help)" : ""));
            }
        }
        {  // with the norm before it (the final add_rmsnorm before lm_head, the one before qkv and gate_up)
            bf16* r = device_alloc<bf16>(3 * sh.K);
            cuda::GemvNorm probe{x, r, r + sh.K, r + 2 * sh.K, 1e-5f};
            if (cuda::gemv_fused_applies(sh.K, &probe, w)) {
            double us = time_graph(st, [&](int i) {
                cuda::GemvNorm nm{x, r, r + sh.K, r + 2 * sh.K, 1e-5f};
                cuda::gemv_fused({sh.K, sh.N, nullptr, w + (size_t)(i % copies) * sh.K * sh.N, nullptr, y, &nm, cuda::GemvEpilogue::kNone, nullptr}, on(st));
            });
            row(std::string("linear ") + sh.name + " gemv + norm", "T=1", us, rate((double)wbytes, us));
            }
            cudaFree(r);
        }
        cudaFree(w), cudaFree(x), cudaFree(y);
        if (quick) break;
    }

    // One whole Llama-3-8B decoder layer at batch 1 (ctx 128), as the executor runs it: unfused
    // (add_rmsnorm, qkv, rope, kv write + attention, o, add_rmsnorm, gate_up, silu_mul, down: 10
    // kernels) and fused (qkv with the norm before and RoPE + cache write after, attention, o,
    // gate_up with the norm before and SwiGLU after, down: 5 kernels). Weights distinct per rep
    // where 4 GB allows.
    {
        const int64_t H = 4096, I = 14336, heads = 32, kvh = 8, hd = 128, kvw = kvh * hd, qkv_n = (heads + 2 * kvh) * hd, max_seq = 4096;
        const int64_t layer = (qkv_n * H + H * heads * hd + 2 * I * H + H * I);
        int copies = (int)std::max<int64_t>(1, std::min<int64_t>(kReps, (4ll << 30) / (layer * 2)));
        bf16* w = device_alloc<bf16>((size_t)copies * layer);
        bf16* norm_w = device_alloc<bf16>(H);
        bf16* kc = device_alloc<bf16>(max_seq * kvw);
        bf16* vc = device_alloc<bf16>(max_seq * kvw);
        bf16* act = device_alloc<bf16>(8 * I);  // residual, delta, normed, qkv, q, attn, gu, silu
        bf16 *res = act, *delta = act + H, *normed = act + 2 * H, *res2 = act + 3 * H, *qkv = act + 4 * H, *q = qkv + qkv_n, *att = q + H + kvw,
             *gu = att + H, *sl = gu + 2 * I;
        int32_t *slot = device_int(0), *pos = device_int(127);  // one token of slot 0 at position 127 (ctx 128)
        float* inv = device_alloc<float>(hd / 2, false);
        cpu::RopeParams rp{heads, kvh, hd, 500000.0};
        cpu::AttentionShape as{1, heads, kvh, hd, max_seq, 0};
        auto weights = [&](int i) {
            bf16* base = w + (size_t)(i % copies) * layer;
            return std::array<bf16*, 4>{base, base + qkv_n * H, base + qkv_n * H + H * H, base + qkv_n * H + H * H + 2 * I * H};
        };
        double unfused = time_graph(st, [&](int i) {
            auto wt = weights(i);
            cuda::add_rmsnorm({1, H, 1e-5f, delta, norm_w, normed}, res, res2, on(st));
            cuda::linear(h, {{1, H, qkv_n}, normed, wt[0], nullptr, qkv}, on(st));
            cuda::rope({rp, 1, pos, inv, qkv, qkv + heads * hd, q, q + heads * hd, qkv_n}, on(st));
            cuda::attention({as, slot, pos, q, q + heads * hd, qkv + (heads + kvh) * hd, kc, vc, att, 0, qkv_n}, on(st));
            cuda::linear(h, {{1, H, H}, att, wt[1], nullptr, delta}, on(st));
            cuda::add_rmsnorm({1, H, 1e-5f, delta, norm_w, normed}, res2, res, on(st));
            cuda::linear(h, {{1, H, 2 * I}, normed, wt[2], nullptr, gu}, on(st));
            cuda::silu_mul_fused(1, I, gu, sl, on(st));
            cuda::linear(h, {{1, I, H}, sl, wt[3], nullptr, delta}, on(st));
        });
        double fused = time_graph(st, [&](int i) {
            auto wt = weights(i);
            cuda::GemvNorm nm{delta, res, res2, norm_w, 1e-5f};
            cuda::GemvRopeKv rk{heads, kvh, hd, max_seq, slot, pos, inv, kc, vc};
            cuda::gemv_fused({H, qkv_n, nullptr, wt[0], nullptr, q, &nm, cuda::GemvEpilogue::kRopeKv, &rk}, on(st));
            cuda::attention({as, slot, pos, q, nullptr, nullptr, kc, vc, att}, on(st));
            cuda::linear(h, {{1, H, H}, att, wt[1], nullptr, delta}, on(st));
            cuda::GemvNorm nm2{delta, res2, res, norm_w, 1e-5f};
            cuda::gemv_fused({H, 2 * I, nullptr, wt[2], nullptr, sl, &nm2, cuda::GemvEpilogue::kSwiglu, nullptr}, on(st));
            cuda::linear(h, {{1, I, H}, sl, wt[3], nullptr, delta}, on(st));
        });
        const double bytes = 2.0 * layer;
        row("decoder layer unfused (10 kernels)", "T=1 ctx=128" + std::string(copies < kReps ? " (L2 may help)" : ""), unfused, rate(bytes, unfused));
        row("decoder layer fused (5 kernels)", "T=1 ctx=128", fused, rate(bytes, fused));
        for (const char* ks : {"1", "2", "4"}) {  // warps per row of the plain GEMV
            use_gemv_splitk(std::atoi(ks));
            double us = time_graph(st, [&](int i) { cuda::linear(h, {{1, H, H}, att, weights(i)[1], nullptr, delta}, on(st)); });
            row(std::string("o gemv, warps per row ") + ks, "T=1", us, rate(2.0 * H * H, us));
            us = time_graph(st, [&](int i) { cuda::linear(h, {{1, I, H}, sl, weights(i)[3], nullptr, delta}, on(st)); });
            row(std::string("down gemv, warps per row ") + ks, "T=1", us, rate(2.0 * H * I, us));
            us = time_graph(st, [&](int i) { cuda::linear(h, {{1, H, 2 * I}, normed, weights(i)[2], nullptr, gu}, on(st)); });
            row(std::string("gate_up gemv, warps per row ") + ks, "T=1", us, rate(4.0 * I * H, us));
        }
        use_gemv_splitk(0);
        double us = time_graph(st, [&](int i) {
            cuda::GemvRopeKv rk{heads, kvh, hd, max_seq, slot, pos, inv, kc, vc};
            cuda::gemv_fused({H, qkv_n, normed, weights(i)[0], nullptr, q, nullptr, cuda::GemvEpilogue::kRopeKv, &rk}, on(st));
        });
        row("qkv gemv + rope + kv write", "no norm", us, rate(2.0 * qkv_n * H, us));
        us = time_graph(st, [&](int i) {
            cuda::gemv_fused({H, 2 * I, normed, weights(i)[2], nullptr, sl, nullptr, cuda::GemvEpilogue::kSwiglu, nullptr}, on(st));
        });
        row("gate_up gemv + swiglu", "no norm", us, rate(4.0 * I * H, us));
        us = time_graph(st, [&](int i) { cuda::linear(h, {{1, H, qkv_n}, normed, weights(i)[0], nullptr, qkv}, on(st)); });
        row("qkv gemv (same weights)", "", us, rate(2.0 * qkv_n * H, us));
        us = time_graph(st, [&](int i) { cuda::linear(h, {{1, H, 2 * I}, normed, weights(i)[2], nullptr, gu}, on(st)); });
        row("gate_up gemv (same weights)", "", us, rate(4.0 * I * H, us));
        cudaFree(w), cudaFree(norm_w), cudaFree(kc), cudaFree(vc), cudaFree(act), cudaFree(slot), cudaFree(pos), cudaFree(inv);
    }

    // Decode attention over a cache of `ctx` positions.
    {
        const int64_t heads = 32, kvh = 8, hd = 128, max_seq = 4096, slots = 8, kvw = kvh * hd;
        bf16* kc = device_alloc<bf16>(slots * max_seq * kvw);
        bf16* vc = device_alloc<bf16>(slots * max_seq * kvw);
        bf16* q = device_alloc<bf16>(8 * heads * hd);
        bf16* kv = device_alloc<bf16>(8 * 2 * kvw);
        bf16* o = device_alloc<bf16>(8 * heads * hd, false);
        int32_t *slot = nullptr, *pos = nullptr;
        CUDA_CHECK(cudaMalloc(&slot, 8 * sizeof(int32_t)));
        CUDA_CHECK(cudaMalloc(&pos, 8 * sizeof(int32_t)));
        for (int64_t T : {1, 8})
            for (int64_t ctx : {128, 512, 2048}) {
                std::vector<int32_t> hs(T), hp(T, (int32_t)ctx - 1);
                for (int64_t t = 0; t < T; ++t) hs[t] = (int32_t)t;
                CUDA_CHECK(cudaMemcpy(slot, hs.data(), T * 4, cudaMemcpyHostToDevice));
                CUDA_CHECK(cudaMemcpy(pos, hp.data(), T * 4, cudaMemcpyHostToDevice));
                cpu::AttentionShape s{T, heads, kvh, hd, max_seq, 0};
                double us = time_graph(st, [&](int) { cuda::attention({s, slot, pos, q, kv, kv + kvw, kc, vc, o, 2 * kvw, 2 * kvw}, on(st)); });
                row("attention decode (+kv write)", "T=" + std::to_string(T) + " ctx=" + std::to_string(ctx), us,
                    rate((double)T * ctx * kvw * 2 * 2, us));
            }
        // Prefill: one 2048-token prompt, GEMM path against the kernel.
        const int64_t P = 2048;
        PrefillInputs in(P, heads * hd, kvw);
        bf16 *qp = in.q, *kvp = in.kv, *op = in.out;
        int32_t *ps = in.slots, *pp = in.positions;
        cpu::AttentionShape s{P, heads, kvh, hd, max_seq, 0};
        std::vector<cuda::AttentionSegment> segs{{0, P, 0, 0}};
        double causal_flops = 4.0 * heads * hd * P * (P + 1) / 2;
        for (bool gemm : {true, false}) {
            double us = time_direct(st, [&] { cuda::attention({s, ps, pp, qp, kvp, kvp + kvw, kc, vc, op, 2 * kvw, 2 * kvw, h, gemm ? &segs : nullptr}, on(st)); });
            row(gemm ? "attention prefill flash" : "attention prefill kernel", "T=2048 one layer", us, rate(0, us, causal_flops) + " (causal FLOPs)");
        }
        for (int64_t K : {4096}) {
            for (auto shape : {std::pair<const char*, int64_t>{"qkv", 6144}, {"gate_up", 28672}}) {
                const char* name = shape.first;
                const int64_t N = shape.second;
                bf16* w = device_alloc<bf16>(K * N);
                bf16* y = device_alloc<bf16>(P * N, false);
                double us = time_direct(st, [&] { cuda::linear(h, {{P, K, N}, qp, w, nullptr, y}, on(st)); });
                row(std::string("linear prefill ") + name, "T=2048 K=4096 N=" + std::to_string(N), us, rate(0, us, 2.0 * P * K * N));
                cudaFree(w), cudaFree(y);
            }
        }
        {  // the small ops of a 2048-token prefill layer
            bf16* gu = device_alloc<bf16>(P * 28672);
            bf16* act = device_alloc<bf16>(P * 14336, false);
            double us = time_direct(st, [&] { cuda::silu_mul_fused(P, 14336, gu, act, on(st)); });
            row("silu_mul prefill", "T=2048 I=14336", us, rate(P * (28672 + 14336) * 2.0, us, 0));
            bf16* x = device_alloc<bf16>(P * 4096);
            bf16* res = device_alloc<bf16>(P * 4096);
            bf16* nw = device_alloc<bf16>(4096);
            us = time_direct(st, [&] { cuda::add_rmsnorm({P, 4096, 1e-5f, x, nw, act + P * 4096}, res, act, on(st)); });
            row("add_rmsnorm prefill", "T=2048 H=4096", us, rate(P * 4096 * 8.0, us, 0));
            cudaFree(gu), cudaFree(act), cudaFree(x), cudaFree(res), cudaFree(nw);
        }
        bf16* wd = device_alloc<bf16>(14336 * 4096);
        bf16* xd = device_alloc<bf16>(P * 14336);
        double us = time_direct(st, [&] { cuda::linear(h, {{P, 14336, 4096}, xd, wd, nullptr, op}, on(st)); });
        row("linear prefill down", "T=2048 K=14336 N=4096", us, rate(0, us, 2.0 * P * 14336 * 4096));
        cudaFree(wd), cudaFree(xd);
    }

    small_ops(st);
    std::printf("kbench done\n");
    return 0;
}
