// Quantized linears (GPTQ int4, fine-grained FP8) in the layouts the GPU's quantized GEMVs read
// (kernels/cuda/quant_gemv.cu), and the CPU twins of those kernels over the very same layouts:
// y[t, n] = sum_k x[t, k] W[n, k] with W dequantized inside the dot product, fp32 sums. The
// layouts are made on the host from a checkpoint's packed slices by worker/quant_pack.h.
#pragma once

#include <cstdint>
#include <vector>

namespace tpx::cpu {

constexpr int64_t kGptqChunk = 32;     // k' values (four words, 16 bytes) a GPTQ row is read in
constexpr int64_t kFp8Chunk = 16;      // FP8 values (16 bytes) a row is read in
constexpr int kQuantMaxSegments = 4;   // row segments of a GPTQ weight with their own k' order

// FP8 W [N, K] e4m3 bytes, row-major as HF stores it; W[n, k] = fp8 x scale[n / rows_per_scale,
// (k + in_offset) / block_in] (fp32, weight_scale_inv, scale_cols a row). Invariants: K,
// block_in and in_offset multiples of kFp8Chunk, so that a 16-byte chunk has one scale.
struct Fp8Layout {
    int64_t N = 0, K = 0;
    int64_t block_in = 128, in_offset = 0;
    int64_t rows_per_scale = 128, scale_cols = 0;
};
struct Fp8View {
    Fp8Layout l;
    const uint8_t* w = nullptr;
    const float* scale = nullptr;
    // For the prefill's FP8 tensor-core GEMM (fp8_row_scales): the scale of every row and
    // every 128 columns, [ceil(K / 128), N] (N contiguous); nullptr where not made.
    const float* row_scale = nullptr;
};

// GPTQ int4 W [N, K] re-laid: row n has Kp / 8 words, nibble j (lowest first) of its word c
// holding q at position k' = 8c + j of the row's segment order; word c of row n is
// qw[gptq_word(l, n, c)] (tiles of 16 rows by one kGptqStep, below). Position k'
// reads x[perm[s][k']] (perm nullptr: x[k'], and Kp == K; -1: padding, x taken as 0) where s is
// the row's segment (rows [seg_end[s - 1], seg_end[s])); act-order rows are sorted by group at
// load, so each chunk of kGptqChunk positions lies in one group, chunk_group[s][c] (local group
// index). W = fp16 scales[n, g] x (q - zero[n, g]), zero from `zeros` ([N, G] bytes, the offset of
// the checkpoint format applied) or 8 for every group (zeros nullptr: symmetric).
struct GptqLayout {
    int64_t N = 0, K = 0, Kp = 0, G = 0;
    int segments = 1;
    int64_t seg_end[kQuantMaxSegments] = {};
    // Every kGptqStep positions from a multiple of kGptqStep lie in one group, in every segment
    // (groups of a multiple of 128, or one group): the tensor-core GEMV's steps. gptq_mark_steps sets it.
    bool group_steps = false;
};
struct GptqView {
    GptqLayout l;
    const uint32_t* qw = nullptr;           // gptq_words(l), tiles of 16 rows by a step (gptq_word)
    const uint16_t* scales = nullptr;       // fp16 [N, G]
    const uint8_t* zeros = nullptr;         // [N, G] or nullptr (all 8)
    const int32_t* perm = nullptr;          // [segments, Kp] or nullptr (identity)
    const int32_t* chunk_group = nullptr;   // [segments, Kp / kGptqChunk]
};

constexpr int64_t kGptqStep = 4 * kGptqChunk;

// Where the words lie: tiles of 16 rows by one step of kGptqStep positions (16 words a row),
// each tile's steps in order, a step's 16 rows one after another (1 KB), rows past N and words
// past Kp / 8 zero. The tensor-core GEMV's warp reads a tile's rows, a lane 16 bytes of rows g
// and g + 8 a step (quant_gemv_mma.cu): where its 16 rows start a tile (every linear of Llama's
// shapes), each load is 512 contiguous bytes, which streams faster than 64 bytes of each of 8
// rows (docs/PERF.md).
#ifdef __CUDACC__
__host__ __device__
#endif
inline int64_t gptq_steps(const GptqLayout& l) {
    return (l.Kp + kGptqStep - 1) / kGptqStep;
}
#ifdef __CUDACC__
__host__ __device__
#endif
inline int64_t gptq_word(const GptqLayout& l, int64_t n, int64_t c) {
    return (((n >> 4) * gptq_steps(l) + (c >> 4)) << 8) + ((n & 15) << 4) + (c & 15);
}
// The words qw holds.
inline int64_t gptq_words(const GptqLayout& l) { return (l.N + 15) / 16 * gptq_steps(l) * 256; }

// The host's copies (what is uploaded), with views of themselves.
struct Fp8Weight {
    Fp8Layout l;
    std::vector<uint8_t> w;
    std::vector<float> scale;
    Fp8View view() const { return {l, w.data(), scale.data()}; }
    int64_t bytes() const { return (int64_t)(w.size() + scale.size() * sizeof(float)); }
};
struct GptqWeight {
    GptqLayout l;
    std::vector<uint32_t> qw;
    std::vector<uint16_t> scales;
    std::vector<uint8_t> zeros;       // empty: symmetric
    std::vector<int32_t> perm;        // empty: identity
    std::vector<int32_t> chunk_group;
    GptqView view() const {
        return {l, qw.data(), scales.data(), zeros.empty() ? nullptr : zeros.data(), perm.empty() ? nullptr : perm.data(), chunk_group.data()};
    }
    int64_t bytes() const {
        return (int64_t)(qw.size() * 4 + scales.size() * 2 + zeros.size() + perm.size() * 4 + chunk_group.size() * 4);
    }
};

// Sets w.l.group_steps from w.chunk_group.
void gptq_mark_steps(GptqWeight& w);

// The segment of row n (also called by the kernels).
#ifdef __CUDACC__
__host__ __device__
#endif
inline int gptq_segment(const GptqLayout& l, int64_t n) {
    int s = 0;
    while (s + 1 < l.segments && n >= l.seg_end[s]) ++s;
    return s;
}

// The twins: y[t, n] = x[t, :] . W[n, :] (+ bias[n]) for t < tokens, x [tokens, K], y [tokens, N]
// fp32. Sums as the kernels make them: per chunk (FP8: 16 values, one scale; GPTQ: 32
// positions, one group) the chunk's dot product with the integers or FP8 values, then times
// its scale into the row's sum.
void gemv_fp8(const Fp8View& w, int64_t tokens, const float* x, const float* bias, float* y);
void gemv_gptq(const GptqView& w, int64_t tokens, const float* x, const float* bias, float* y);
// W dequantized to fp32 [N, K] (HF's orientation): the prefill path's bf16 weight before rounding.
void dequantize_fp8_layout(const Fp8View& w, float* dst);
void dequantize_gptq_layout(const GptqView& w, float* dst);

// Prefill with FP8 activations (w8a8, as HF's and TensorRT-LLM's fine-grained FP8 run it: the
// activations quantized per token and 128 columns, "activation_scheme": "dynamic"): with m =
// max |x| over its 128 columns, x[t, k] becomes e4m3(x * (448 / m)) (one fp32 division a block,
// the quotient at most FLT_MAX; HF's x / (m / 448) rounds twice, docs/NUMERICS.md) and its scale
// s = m / 448, and
// y[t, n] = sum over blocks b of s_x[b, t] s_w[b, n] (sum over k in b of xq[t, k] wq[n, k]).
constexpr int64_t kFp8ActBlock = 128;
// Whether a weight's scales are constant over each 128 columns of the device matrix (blocks of a
// multiple of 128 columns, a cut of `in` on a 128 boundary) and K is whole blocks of 128.
bool fp8_w8a8_applies(const Fp8Layout& l);
// The weight's scale per row and 128 columns, [ceil(K / 128), N] (requires fp8_w8a8_applies).
std::vector<float> fp8_row_scales(const Fp8View& w);
// fp32 to e4m3 (the OCP FP8 E4M3FN code): round to nearest even, saturated to +-448, as CUDA's
// __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3); NaN to 0x7f.
uint8_t f32_to_e4m3(float v);
float e4m3_to_f32(uint8_t v);
// xq [T, K] and xs [ceil(K / 128), T] (T contiguous) from x [T, K]; a block of zeros gets scale 1.
void quantize_act_fp8(const float* x, int64_t T, int64_t K, uint8_t* xq, float* xs);
// y [T, N] = the w8a8 product above (+ bias), fp32, block sums in order.
void linear_w8a8(const Fp8View& w, const uint8_t* xq, const float* xs, int64_t T, const float* bias, float* y);

// fp16 bits to fp32, exactly.
float half_bits_to_f32(uint16_t h);

}  // namespace tpx::cpu
