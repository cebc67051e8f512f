// The CUDA kernels' launchers: bf16 activations and weights, fp32 accumulation. Each launcher
// checks its preconditions, computes its grid, launches on the given stream and checks the
// launch; the parameter structs are the CPU twins' (kernels/cpu/ops.h), which are the
// reference in tests. Pointers are device pointers.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "common/kernel_config.h"
#include "kernels/cpu/draw.h"
#include "kernels/cpu/ops.h"

namespace tpx::cuda {

// Where a launcher enqueues its kernels, and the job's kernel settings ([backend.tuning],
// common/kernel_config.h) that choose among them. Every launcher takes one: no launch reads a
// process-wide setting. The config outlives every launch made with it (its owner, the executor
// or a test, holds it).
struct Launch {
    cudaStream_t stream;
    const KernelConfig* config;  // never nullptr
    Launch(cudaStream_t s, const KernelConfig& c) : stream(s), config(&c) {}
};

#ifdef TPX_PROBE
// Probe builds only (-DTPX_PROBE, tpx-kbench --layer): the decode GEMVs and attention write, per
// block, global-timer stamps of their phases (thread 0's: t[0] entry, t[1] past the wait, t[2]
// past the exchange's sum, t[3] past the norm prologue or the dot products, t[4] the end; 0
// where the kernel has no such phase; the FP8 ring GEMV: t[2] past staging x, t[3] every warp
// past its steps) into `rec`, a record a block.
struct ProbeRec {
    unsigned long long t[5];
    unsigned tag, block, smid, k;
};
struct ProbeSink {
    ProbeRec* rec = nullptr;
    unsigned* n = nullptr;  // records claimed (those past cap are not written)
    unsigned cap = 0;
};
void probe_set(const ProbeSink& sink);
#endif

using bf16 = __nv_bfloat16;

// y[T, N] = x[T, K] W[N, K]^T (+ bias[N]), bf16 in, fp32 sums, bf16 out: a GEMV kernel where
// gemv_applies() (up to kBatchGemmMaxTokens rows, K % 8 == 0, 16-byte aligned x and W), the
// route is kAuto and the config allows: the batch-1 GEMV at one row, gemv_mma.cu's tensor-core
// GEMV at 2 to kGemvMaxTokens (gemv_mma), batch_gemm.cu's batch GEMM past them (batch_gemm);
// cuBLAS otherwise: the tuner's algorithm where a tuner is given and takes the product,
// cublasGemmEx else. The GEMVs load their first weights before they wait for the kernel before
// (gemv_early): a weight that kernel writes needs gemv_early off in the Launch's config.
bool gemv_applies(const cpu::LinearShape& s, const bf16* x, const bf16* w);
// Whether linear() runs a GEMV kernel for these operands under `config` (else cuBLAS).
bool linear_takes_gemv(const cpu::LinearShape& s, const bf16* x, const bf16* w, const KernelConfig& config);
class GemmTuner;
enum class LinearRoute { kAuto, kGemm };  // kGemm: cuBLAS even where the GEMV applies (tests compare them)
struct LinearArgs {
    cpu::LinearShape shape;
    const bf16* x = nullptr;
    const bf16* w = nullptr;
    const bf16* bias = nullptr;  // optional
    bf16* y = nullptr;
    GemmTuner* tuner = nullptr;  // optional: the GEMMs' (9 rows or more) algorithm chosen by timing
    LinearRoute route = LinearRoute::kAuto;
};
void linear(cublasHandle_t cublas, const LinearArgs& a, Launch at);
// y = x W^T (+ bias) + add, add [T, N] (the residual of o_proj and down_proj, as the tuner's
// epilogue adds it: one rounding) on the batch GEMM, where linear() would run it for these
// operands (linear_takes_gemv, more than kGemvMaxTokens rows); false (nothing run) elsewhere.
bool linear_add(const LinearArgs& a, const bf16* add, Launch at);
// y = x W^T by one cublasGemmEx with cuBLAS's own algorithm, on `stream` (linear()'s route where
// the tuner declines).
void gemm_ex(cublasHandle_t cublas, const cpu::LinearShape& s, const bf16* x, const bf16* w, bf16* y, cudaStream_t stream);

// Most tokens the GEMV of a few tokens takes: one by the batch-1 GEMV, 2 to kGemvMaxTokens on
// tensor cores (gemv_mma.cu).
constexpr int64_t kGemvMaxTokens = kGemvFusedMaxTokens;
// Most tokens gemv_fused and linear()'s GEMV route take: past kGemvMaxTokens the batch GEMM (batch_gemm.cu).
constexpr int64_t kBatchGemmMaxTokens = kBatchGemmFusedMaxTokens;

// The GEMMs' algorithm, chosen by timing (gemm_tuner.cu), as TensorRT-LLM's autotuner and
// PyTorch's TunableOp do: the first product of at least kGemmTuneMinTokens rows (every product
// the decode GEMVs leave to cuBLAS) of a (rows: each count up to kBatchGemmMaxTokens, longer ones
// rounded up to a power of two; K, N, pointer alignment, with or without an added matrix) bucket
// times every algorithm cuBLASLt's heuristic
// offers for it (at most kGemmTuneCandidates) on the caller's own operands, and, given a cuBLAS
// handle at construction and no added matrix, cublasGemmEx's own choice; keeps the fastest and
// runs it; later products of the bucket run the kept one. matmul() declines (false: the caller
// runs cublasGemmEx) below kGemmTuneMinTokens, where cublasGemmEx was the fastest, while the
// stream is being captured and the bucket is not tuned yet (timing needs synchronisation),
// and where no algorithm takes the shape. One thread, one device (the one current at
// construction); the workspace is its own, so products on two streams at once must not share
// a tuner. Results differ from cublasGemmEx's only by the summation order of the algorithm.
constexpr int64_t kGemmTuneMinTokens = kGemvMaxTokens + 1;
constexpr int kGemmTuneCandidates = 8;
// The operands of an FP8 product (w8a8, cpu::linear_w8a8): e4m3 x [T, K] and W [N, K], and
// their fp32 scales per 128 columns, x_scale [K / 128, T] and w_scale [K / 128, N]; or, with
// w_blocks, W's scales per 128 x 128 block as checkpoints store them, [N / 128, K / 128].
struct Fp8Operands {
    const uint8_t* xq = nullptr;
    const float* x_scale = nullptr;
    const uint8_t* w = nullptr;
    const float* w_scale = nullptr;
    bool w_blocks = false;
    const bf16* add = nullptr;  // [T, N] added in the epilogue (beta 1), or nullptr
};
struct GemmOperands;
class GemmTuner {
public:
    // cublas (optional): a handle whose cublasGemmEx, on the product's stream, is timed beside
    // the algorithms (the caller's, which runs it where the tuner declines); it must outlive
    // the tuner's last product.
    explicit GemmTuner(cublasHandle_t cublas = nullptr);
    ~GemmTuner();
    GemmTuner(const GemmTuner&) = delete;
    GemmTuner& operator=(const GemmTuner&) = delete;

    // y[T, N] = x[T, K] W[N, K]^T (+ add[T, N], summed in fp32 before the one rounding to bf16:
    // the residual add in the epilogue), bf16, fp32 sums; false where declined (nothing
    // enqueued). add must not be y.
    bool matmul(const cpu::LinearShape& s, const bf16* x, const bf16* w, bf16* y, cudaStream_t stream, const bf16* add = nullptr);
    // y[T, N] = the FP8 product (cuBLASLt's block-scaled FP8 GEMM, bf16 out) (+ f.add, as
    // matmul()'s), at any row count; false where declined, as matmul().
    bool matmul_fp8(const cpu::LinearShape& s, const Fp8Operands& f, bf16* y, cudaStream_t stream);
    // One line per tuned bucket: the candidates' count, the kept one's time and heuristic #0's.
    std::string summary() const;

private:
    bool product(const cpu::LinearShape& s, const GemmOperands& o, cudaStream_t stream);
    struct Impl;
    Impl* impl_;
};

// The decode GEMV with its neighbours fused in (linear.cu; the kernels are gemv.cuh at one token,
// gemv_mma.cu at 2 to kGemvMaxTokens, batch_gemm.cu past them up to kBatchGemmMaxTokens), y = x
// W^T (+ bias) for each token, where:
// - norm (optional, one token only): x is rmsnorm(residual + x) (or rmsnorm(x) without a
//   residual) computed per block, as add_rmsnorm/rmsnorm would; residual + x goes to residual_out;
// - kSwiglu: y[t, j] = silu(z[t, j]) * z[t, j + N/2] for the linear's output z (the gate_up layout), N/2 wide;
// - kRopeKv: z = [q | k | v] (the fused QKV layout); y = q rotated (as rope()), and k rotated and v
//   written into the caches at (slot[t], pos[t]) (as attention()'s cache write).
// Every result equals the unfused kernels' bit for bit (at 2 tokens or more: the unfused path
// through linear(), whose route for that many rows is the same tensor-core kernel). Whether the
// config lets the decode step take this route at `tokens` tokens: gemv_route_allowed.
// The all-reduce of a batch-1 decode step fused into the GEMVs on either side of it: the GEMV
// that makes each rank's part (o_proj, down_proj) pushes it into every rank's exchange buffer
// (gemv_push, below) in the form of NCCL's LL protocol, 8-byte units of two bf16 and a flag
// stored at once, so that data and flag arrive together (no fence, no flag exchange); the next
// GEMV's norm prologue sums the world's parts in rank order as their flags arrive, so no
// all-reduce kernel runs. Exchange g (the device epoch, advanced by exchange_advance at the
// end of each forward, plus the exchange's place in the forward) uses buffer g & 1 and flag
// g + 1. A rank can be one exchange ahead of a peer, never two: it pushes g + 2 only after it
// summed g + 1, which needed the peer's push of g + 1, which the peer made after summing g.
// The sum is the one-shot all-reduce's (fp32 in rank order, one bf16 rounding): bit-identical.
// The summing GEMV reads the epoch, the norm weight and the residual before its wait for the
// kernel before it (programmatic dependent launch), which the kernels two back have finished:
// so none of them may be written by the kernel just before the sum. In the decode step that
// kernel is the exchange's pushing GEMV, which writes only the exchange buffers.
struct ExchangeIn {
    const uint2* ll = nullptr;  // this rank's exchange buffer, [2][world][units]; nullptr: no exchange
    int world = 0;
    int64_t units = 0;                 // per (buffer, source rank) slot; even
    const uint32_t* epoch = nullptr;   // this rank's
    uint32_t seq = 0;                  // the exchange's place in the forward
    uint32_t* gave_up = nullptr;       // set after a timeout: later waits are skipped
    int* error = nullptr;              // host-mapped: the missing rank + 1
    uint64_t timeout_ns = 0;
};

struct GemvNorm {
    const bf16* x = nullptr;         // the input (the delta to the residual when there is one)
    const bf16* residual = nullptr;  // nullptr: plain rmsnorm of x
    bf16* residual_out = nullptr;    // must not alias x or residual
    const bf16* weight = nullptr;
    float eps = 0;
    ExchangeIn sum;                  // sum.ll set: the input is exchange sum.seq's sum (x unused)
};
struct GemvRopeKv {
    int64_t heads = 0, kv_heads = 0, head_dim = 0, max_seq = 0;
    const int32_t* slot = nullptr;
    const int32_t* pos = nullptr;
    const float* inv_freq = nullptr;  // rope_inv_freq()
    bf16* k_cache = nullptr;
    bf16* v_cache = nullptr;
};
enum class GemvEpilogue { kNone, kSwiglu, kRopeKv };
struct GemvFusedArgs {
    int64_t K = 0, N = 0;
    const bf16* x = nullptr;  // unused when the norm sums an exchange
    const bf16* w = nullptr;
    const bf16* bias = nullptr;      // optional
    bf16* y = nullptr;
    const GemvNorm* norm = nullptr;  // optional prologue
    GemvEpilogue epilogue = GemvEpilogue::kNone;
    const GemvRopeKv* rope = nullptr;  // kRopeKv's parameters
    int64_t tokens = 1;                // x [tokens, K], y [tokens, ...]; RoPE at (slot[t], pos[t]) for token t
};
bool gemv_fused_applies(int64_t K, const GemvNorm* norm, const bf16* w, int64_t tokens = 1);
// Whether `config` lets `tokens` rows take tpx's kernels above (gemv_mma from 2, batch_gemm past
// kGemvMaxTokens; one row always): for linear()'s route and the decode step's fusions.
bool gemv_route_allowed(int64_t tokens, const KernelConfig& config);
void gemv_fused(const GemvFusedArgs& a, Launch at);

void embedding(const cpu::EmbeddingShape& s, const int32_t* ids, const bf16* table, bf16* y, Launch at);
// The e4m3 form of a token-major activation [T, K], the w8a8 prefill's input
// (cpu::quantize_act_fp8's): codes q [T, K] and scales s [ceil(K / 128), T]. Kernels that make
// such an input can write it in this form instead of bf16 (RmsnormArgs, AttentionArgs,
// silu_mul_fp8), bit for bit what fp8_quantize_act (quant_prefill.h) makes of their bf16 output.
struct ActFp8 {
    uint8_t* q = nullptr;
    float* s = nullptr;
};
// The form in one buffer from `base`: the codes, then the scales from act_fp8_scales_offset (on
// 256 bytes); act_fp8_bytes in all.
inline int64_t act_fp8_scales_offset(int64_t T, int64_t K) { return (T * K + 255) / 256 * 256; }
inline int64_t act_fp8_bytes(int64_t T, int64_t K) { return act_fp8_scales_offset(T, K) + (K + 127) / 128 * T * (int64_t)sizeof(float); }
inline ActFp8 act_fp8_at(void* base, int64_t T, int64_t K) {
    return {static_cast<uint8_t*>(base), reinterpret_cast<float*>(static_cast<char*>(base) + act_fp8_scales_offset(T, K))};
}

struct RmsnormArgs {
    int64_t tokens = 0, width = 0;
    float eps = 0;
    const bf16* x = nullptr;
    const bf16* w = nullptr;
    bf16* y = nullptr;
    ActFp8 y8 = {};  // with y8.q set, y in its e4m3 form instead (rmsnorm_fp8_applies)
};
// y in e4m3: rows of whole 128-column blocks that the vector kernel takes (residual_* nullptr
// for rmsnorm).
bool rmsnorm_fp8_applies(const RmsnormArgs& a, const bf16* residual_in, const bf16* residual_out);
void rmsnorm(const RmsnormArgs& a, Launch at);
// Rows up to this wide (a multiple of 8, 16-byte aligned operands) take the vector kernel, whose
// order of sums the quantized GEMVs' norm prologue repeats (others: a kernel summing one value a
// thread a turn).
constexpr int64_t kRmsnormVecMaxWidth = 8192;
// residual_out = residual_in + x (rounded to bf16), y = rmsnorm(residual_out); residual_in may
// be residual_out (in place), neither may alias x. (Both norms' vector kernel reads w before its
// wait for the kernel before, with gemv_early: that kernel must not write w.)
void add_rmsnorm(const RmsnormArgs& a, const bf16* residual_in, bf16* residual_out, Launch at);
void add(int64_t n, const bf16* a, const bf16* b, bf16* y, Launch at);

// inv_freq: the rope_inv_freq() values (computed on the host, identical to the CPU twin's).
// Reads q_in/k_in, whose rows are in_stride elements apart (0: packed), so that they may be
// column slices of the fused QKV output; writes packed q/k (the same buffers for in place).
// With k_cache set, rope() puts the rotated K and the V rows (v_in, v_stride elements apart: a
// row's width at least, never 0) straight into the caches' rows of (slot[t], positions[t]), max_seq positions a slot, where
// attention()'s KV write would (then given no k and v), instead of writing k (k unused: may be nullptr).
struct RopeKvCache {
    bf16* k_cache = nullptr;
    bf16* v_cache = nullptr;
    const bf16* v_in = nullptr;
    int64_t v_stride = 0;
    const int32_t* slot = nullptr;
    int64_t max_seq = 0;
};
struct RopeArgs {
    cpu::RopeParams p;
    int64_t tokens = 0;
    const int32_t* positions = nullptr;
    const float* inv_freq = nullptr;
    const bf16* q_in = nullptr;
    const bf16* k_in = nullptr;
    bf16* q = nullptr;
    bf16* k = nullptr;
    int64_t in_stride = 0;
    RopeKvCache cache = {};
};
// Whether rope() takes a.cache (its 16-byte form: head_dim a multiple of 16, strides of 8
// elements, aligned rows).
bool rope_kv_applies(const RopeArgs& a);
void rope(const RopeArgs& a, Launch at);

// One prompt (or chunk of one) in a batch: tokens [first, first + count) of slot `slot`, at
// positions start, start + 1, ...
struct AttentionSegment {
    int64_t first, count, slot, start;
};
// Segments at least this long attend through cuBLAS (see attention()).
constexpr int64_t kAttentionGemmMinTokens = 64;

// Writes K and V of every token into the cache (k and v rows k_stride and v_stride elements
// apart, 0: packed), then attends (causal, GQA, sliding window). Caches are bf16
// [slots, max_seq, kv_heads * head_dim]. Tokens of segments of at least
// kAttentionGemmMinTokens (when `segments` and `cublas` are given) attend by tensor-core GEMMs:
// S = Q K^T in fp32, a masked softmax to bf16 P, O = P V, query rows in blocks so that each
// block only multiplies the keys it can see. The other tokens go through a kernel with one
// block per (token, head), 16-byte loads of K and V, several keys in flight per warp.
// k and v both nullptr: they are in the caches already (gemv_fused's kRopeKv, or rope()'s
// RopeKvCache).
// A decode step's RoPE done by the attention (attention_rope_applies): AttentionArgs' q, k and v
// are then the QKV product's columns before RoPE; the kernel rotates each token's q and k as
// rope() does and writes its k and v into the caches.
struct AttentionRope {
    const float* inv_freq = nullptr;  // nullptr: none (q rotated already)
    int64_t q_stride = 0;             // q's rows (k's and v's: AttentionArgs' k_stride and v_stride)
};
struct AttentionArgs {
    cpu::AttentionShape shape;
    const int32_t* slot = nullptr;
    const int32_t* pos = nullptr;
    const bf16* q = nullptr;
    const bf16* k = nullptr;
    const bf16* v = nullptr;
    bf16* k_cache = nullptr;
    bf16* v_cache = nullptr;
    bf16* out = nullptr;
    int64_t k_stride = 0, v_stride = 0;                       // 0: packed
    cublasHandle_t cublas = nullptr;                         // with segments: long ones by GEMMs
    const std::vector<AttentionSegment>* segments = nullptr;
    ActFp8 out8 = {};  // with out8.q set, out in its e4m3 form instead (attention_fp8_applies)
    // Every token alone in its sequence (a decode batch: one token a slot), so that its earlier
    // positions were written by earlier forwards: the kernels read those cached rows before
    // waiting for the kernel before (KernelConfig::attention_early).
    bool decode = false;
    AttentionRope rope = {};
};
// Whether attention() takes a's RoPE in (a.rope): a decode step whose every token goes through the
// one-pass kernel (head_dim 64 or 128), with 16-byte rows.
bool attention_rope_applies(const AttentionArgs& a, const KernelConfig& config);
// Whether taking the RoPE in is measured faster than the RoPE kernel before the attention: on
// tensor cores (attention_mma) at every grid; on CUDA cores where the one-pass grid is of
// four-warp blocks (Llama-3-8B at tp 1: 34 tokens or more), as elsewhere the attention's early
// loads, which start while the RoPE kernel runs but not while a GEMM does, gain more there
// (docs/PERF.md, 2026-12-06).
bool attention_rope_pays(const AttentionArgs& a, const KernelConfig& config);
// Every token in a segment the flash kernel of head_dim 128 takes (the row of a head is one
// 128-column block).
bool attention_fp8_applies(const AttentionArgs& a);
void attention(const AttentionArgs& a, Launch at);

// One prompt segment of at least kAttentionGemmMinTokens tokens whose K and V are in the caches
// (prefill_attention.cu; attention() calls it): the flash kernel for head_dim 64 and 128, short
// segments (up to flash_short_max tokens) in 32-row blocks, else batched cuBLAS GEMMs.
struct PrefillSegmentArgs {
    cpu::AttentionShape shape;
    AttentionSegment seg;
    const bf16* q = nullptr;
    const bf16* k_cache = nullptr;
    const bf16* v_cache = nullptr;
    bf16* out = nullptr;
    ActFp8 out8 = {};  // as AttentionArgs'
};
void attention_prefill_segment(cublasHandle_t cublas, const PrefillSegmentArgs& a, Launch at);
// Whether its segments take the flash kernel (head_dim 64 or 128), else the GEMMs.
bool flash_attention_applies(const cpu::AttentionShape& s);

void silu_mul_fused(int64_t tokens, int64_t inter, const bf16* gate_up, bf16* out, Launch at);
void silu_mul(int64_t tokens, int64_t width, const bf16* gate, const bf16* up, bf16* out, Launch at);
// silu_mul's out in its e4m3 form (ActFp8): gate and up rows `row` elements apart (2 * width,
// up = gate + width, for the fused gate_up layout).
bool silu_mul_fp8_applies(int64_t width, const bf16* gate, const bf16* up, const ActFp8& y8);
void silu_mul_fp8(int64_t tokens, int64_t width, const bf16* gate, const bf16* up, int64_t row, const ActFp8& y8, Launch at);

// MoE routing: weights[t, e] for the local experts (0 where the token does not visit e), from
// the router logits as the CPU twin computes them (softmax, top-k, renormalise).
void moe_routing(const cpu::MoeShape& s, const bf16* router_logits, float* weights, Launch at);
// y[t, :] += weights[t * weight_stride] * part[t, :]
struct ScaleAddArgs {
    int64_t tokens = 0, width = 0;
    const float* weights = nullptr;
    int64_t weight_stride = 0;
    const bf16* part = nullptr;
    bf16* y = nullptr;
};
void scale_add(const ScaleAddArgs& a, Launch at);

// One MoE layer's local experts on the device: expert e's gate rows at gate + e * stride, its up
// rows at up + e * stride ([inter_local, hidden] each; the fused w13 gives up = gate +
// inter_local * hidden and stride = 2 * inter_local * hidden), down [local, hidden, inter_local].
struct MoeExperts {
    const bf16* gate;
    const bf16* up;
    int64_t stride;
    const bf16* down;
};
// One MoE layer's input and output: weights [tokens, local] from moe_routing.
struct MoeArgs {
    cpu::MoeShape shape;
    const float* weights = nullptr;
    const bf16* x = nullptr;
    MoeExperts experts{};
    bf16* y = nullptr;
};

// The executor's choice of form (backend.tuning.moe = "auto"; docs/PERF.md has the times that
// set the bounds): MoE layers of at most kMoeSparseMaxTokens tokens sparse; outside a CUDA
// graph, of at least kMoeGroupedMinTokens by expert (below it every expert is chosen anyway and
// the dense form's GEMMs, with no host round trip, are faster); dense otherwise.
constexpr int64_t kMoeSparseMaxTokens = 4;
constexpr int64_t kMoeGroupedMinTokens = 128;

// Sparse MoE experts (moe.cu) for few tokens, capturable: each local expert's weights read
// once, by the tokens routed to it (weights[t, e] != 0, from moe_routing), none for an expert no
// token visits. act [local, tokens, inter_local] and part [local, tokens, hidden] are scratch.
// y[t, :] = the weighted parts, summed in expert order as the dense form's scale_add calls do.
// Needs hidden and inter_local multiples of 8 and 16-byte aligned pointers (moe_sparse_supported).
bool moe_sparse_supported(const cpu::MoeShape& s, const bf16* x, const MoeExperts& w);
void moe_sparse(const MoeArgs& a, bf16* act, bf16* part, Launch at);

// MoE experts by expert (moe.cu; prefill, any batch run outside a CUDA graph): the routing
// weights go to the host (the stream waits), then each local expert some token chose runs its
// gate/up and down GEMMs (cuBLAS) over its tokens' gathered rows, added into y, weighted, expert
// by expert in index order as the dense form adds them. An expert no token chose is not read,
// and each token costs top_k experts' FLOPs, not all of them. Not capturable (throws). `wait`
// waits for the stream (the executor's watchdog, which ends the wait when a peer rank has
// failed); empty: cudaStreamSynchronize.
void moe_grouped(cublasHandle_t cublas, const MoeArgs& a, Launch at, const std::function<void()>& wait = {});

// out[r, :] = x[rows[r], :]
void gather_rows(int64_t n_rows, int64_t width, const int64_t* rows, const bf16* x, bf16* out, Launch at);
// Per-row argmax (the first index on ties); -1 for a row holding a NaN or an infinity, as the
// CPU twin cpu::argmax. `scratch`: argmax_scratch_bytes(rows) of device memory, or nullptr to
// allocate it on the stream.
void argmax_rows(int64_t rows, int64_t width, const float* logits, int32_t* out, Launch at, void* scratch = nullptr);
void argmax_rows(int64_t rows, int64_t width, const bf16* logits, int32_t* out, Launch at, void* scratch = nullptr);
size_t argmax_scratch_bytes(int64_t rows);
// The sampled tokens' draw (kernels/cpu/draw.h's rule; its twin cpu::draw_token): row r's id from its
// bf16 logits and params[r] (device memory), the argmax where its temperature is 0, -1 for a row
// holding a NaN or an infinity. Only the ids leave the device.
void draw_rows(int64_t rows, int64_t vocab, const bf16* logits, const cpu::DrawParams* params, int32_t* out, Launch at);
void bf16_to_f32(int64_t n, const bf16* x, float* y, Launch at);
void f32_to_bf16(int64_t n, const float* x, bf16* y, Launch at);

// The one-shot all-reduce (sum) between the GPUs of one host, for small messages: the ranks'
// buffers and flags are mapped into each other over CUDA IPC (worker/nccl_comm.cpp sets them
// up). Each of kOneShotBlocks blocks owns a contiguous part of the message: it pushes that
// part of `in` into every peer's buffer (this rank's slot), raises its flag at every peer
// (release, system scope), waits for every peer's flag (acquire), then sums the world's parts
// in rank order in fp32, so every rank gets the same bits. Two buffers alternate between
// calls: a rank may run one call ahead of a peer, never two (a call needs every peer to have
// begun the previous one). A wait longer than timeout_ns gives up and sets *error to the
// missing rank + 1 (the result is then garbage; the host's sync reports the rank). In place
// (in == out) is allowed.
constexpr int kOneShotMaxRanks = 8, kOneShotBlocks = 16, kOneShotThreads = 256;
struct OneShotPeers {
    int rank = 0, world = 1;
    size_t capacity = 0;                       // elements per (parity, source rank) slot; a multiple of 8
    bf16* data[kOneShotMaxRanks] = {};         // rank r's buffer, [2][world][capacity] (mapped)
    uint32_t* flags[kOneShotMaxRanks] = {};    // rank r's flags, [kOneShotBlocks][kOneShotMaxRanks] (mapped)
    // This rank's calls so far per block, then a "gave up" word, then the exchange epoch (kOneShotBlocks + 2).
    uint32_t* counters = nullptr;
    int* error = nullptr;                      // host-mapped, 0 while all is well (written, never read, by kernels: a read crosses PCIe)
    uint64_t timeout_ns = 0;
    uint2* ll[kOneShotMaxRanks] = {};          // rank r's exchange buffer (see ExchangeIn), [2][world][ll_units] (mapped)
    int64_t ll_units = 0;                      // a multiple of 4
};
// world > 1, n <= capacity, n % 8 == 0, 16-byte aligned in and out.
bool oneshot_all_reduce_applies(const bf16* in, const bf16* out, size_t n, const OneShotPeers& p);
void oneshot_all_reduce(const bf16* in, bf16* out, size_t n, const OneShotPeers& p, Launch at);

// The fused all-reduce (see ExchangeIn; fused_allreduce.cu and .cuh): gemv_push computes y = x W^T (+ bias) as linear()'s GEMV
// does and pushes it, as this rank's part of exchange `seq`, into every rank's buffer; a
// GemvNorm with sum = exchange_in(p, seq) then reads the world's sum. exchange_advance moves
// the epoch past the `calls` exchanges of a forward.
struct GemvPushArgs {
    int64_t K = 0, N = 0;
    const bf16* x = nullptr;
    const bf16* w = nullptr;
    const bf16* bias = nullptr;  // optional
    uint32_t seq = 0;            // the exchange's place in the forward
};
bool gemv_push_applies(int64_t K, int64_t N, const bf16* x, const bf16* w, const OneShotPeers& p);
void gemv_push(const GemvPushArgs& a, const OneShotPeers& p, Launch at);
ExchangeIn exchange_in(const OneShotPeers& p, uint32_t seq);
void exchange_advance(const OneShotPeers& p, uint32_t calls, Launch at);

}  // namespace tpx::cuda
