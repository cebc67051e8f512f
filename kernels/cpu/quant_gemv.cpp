// The quantized GEMVs' CPU twins: the same chunks, the same scale per chunk, the same order of
// sums per lane as kernels/cuda/quant_gemv.cu, in plain loops (the reference of its tests).
#include "kernels/cpu/quant_gemv.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

namespace tpx::cpu {

float half_bits_to_f32(uint16_t h) {
    const int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v;
    if (e == 0) v = std::ldexp((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = std::ldexp((float)(m | 0x400), e - 25);
    return sign ? -v : v;
}

float e4m3_to_f32(uint8_t v) {
    const float sign = (v & 0x80) ? -1.0f : 1.0f;
    const int e = (v >> 3) & 0xf, m = v & 0x7;
    if (e == 0xf && m == 0x7) return NAN;
    if (e == 0) return sign * std::ldexp((float)m, -9);
    return sign * std::ldexp(1.0f + (float)m / 8.0f, e - 7);
}

// Magnitudes are rounded on the grid of their binade (2^-9 below 2^-6, the subnormals), ties to
// the even code; past 448 (the largest finite value) they saturate.
uint8_t f32_to_e4m3(float v) {
    if (std::isnan(v)) return 0x7f;
    const uint8_t sign = std::signbit(v) ? 0x80 : 0;
    const float a = std::fabs(v);
    if (a >= 448.0f) return sign | 0x7e;
    int e = 0;
    std::frexp(a, &e);                                     // a = f 2^e, f in [0.5, 1)
    const int exp = std::max(e - 1, -6);                   // a's binade, 2^exp <= a (normal range)
    const float step = std::ldexp(1.0f, exp - 3);          // three mantissa bits
    const float q = std::nearbyint(a / step);              // exact division by a power of two; ties to even
    const float r = q * step;
    if (r >= 448.0f) return sign | 0x7e;
    if (r < std::ldexp(1.0f, -6)) return sign | (uint8_t)std::lrint(r / std::ldexp(1.0f, -9));  // subnormal (or zero)
    int re = 0;
    const float f = std::frexp(r, &re);                    // r may have rounded up into the next binade
    return sign | (uint8_t)(((re - 1 + 7) << 3) | ((int)std::lrint(f * 16.0f) & 0x7));
}

bool fp8_w8a8_applies(const Fp8Layout& l) {
    return l.block_in % kFp8ActBlock == 0 && l.in_offset % kFp8ActBlock == 0 && l.K % kFp8ActBlock == 0 && l.K > 0 && l.N > 0;
}

namespace {

float fp8_scale(const Fp8View& w, int64_t n, int64_t k) {
    return w.scale[(n / w.l.rows_per_scale) * w.l.scale_cols + (k + w.l.in_offset) / w.l.block_in];
}

// Row n's q at position kp (0..15).
int gptq_q(const GptqView& w, int64_t n, int64_t kp) { return (int)((w.qw[gptq_word(w.l, n, kp / 8)] >> (4 * (kp % 8))) & 0xf); }
int gptq_zero(const GptqView& w, int64_t n, int64_t g) { return w.zeros ? w.zeros[n * w.l.G + g] : 8; }
int64_t gptq_x_index(const GptqView& w, int s, int64_t kp) { return w.perm ? w.perm[s * w.l.Kp + kp] : kp; }

}  // namespace

// The kernel: lane l of a row's warp takes chunks l, l + 32, ...; each chunk's sum times its
// scale goes into the lane's sum, and the 32 lanes' sums are added as a butterfly (warp_sum).
// The twin adds the chunks in order instead: the tests' tolerance covers the reordering.
void gemv_fp8(const Fp8View& w, int64_t tokens, const float* x, const float* bias, float* y) {
    float table[256];
    for (int v = 0; v < 256; ++v) table[v] = e4m3_to_f32((uint8_t)v);
    const int64_t N = w.l.N, K = w.l.K;
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t n = 0; n < N; ++n) {
            float acc = 0;
            for (int64_t c = 0; c < K; c += kFp8Chunk) {
                float d = 0;
                for (int64_t j = 0; j < kFp8Chunk; ++j) d += table[w.w[n * K + c + j]] * x[t * K + c + j];
                acc += d * fp8_scale(w, n, c);
            }
            y[t * N + n] = acc + (bias ? bias[n] : 0.0f);
        }
}

void gemv_gptq(const GptqView& w, int64_t tokens, const float* x, const float* bias, float* y) {
    const int64_t N = w.l.N, K = w.l.K, Kp = w.l.Kp, chunks = Kp / kGptqChunk;
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t n = 0; n < N; ++n) {
            const int s = gptq_segment(w.l, n);
            float acc = 0;
            for (int64_t c = 0; c < chunks; ++c) {
                const int64_t g = w.chunk_group[s * chunks + c];
                const int z = gptq_zero(w, n, g);
                float d = 0;
                for (int64_t j = 0; j < kGptqChunk; ++j) {
                    const int64_t kp = c * kGptqChunk + j, k = gptq_x_index(w, s, kp);
                    d += (float)(gptq_q(w, n, kp) - z) * (k >= 0 ? x[t * K + k] : 0.0f);
                }
                acc += d * half_bits_to_f32(w.scales[n * w.l.G + g]);
            }
            y[t * N + n] = acc + (bias ? bias[n] : 0.0f);
        }
}

void dequantize_fp8_layout(const Fp8View& w, float* dst) {
    for (int64_t n = 0; n < w.l.N; ++n)
        for (int64_t k = 0; k < w.l.K; ++k) dst[n * w.l.K + k] = e4m3_to_f32(w.w[n * w.l.K + k]) * fp8_scale(w, n, k);
}

std::vector<float> fp8_row_scales(const Fp8View& w) {
    const int64_t N = w.l.N, blocks = (w.l.K + kFp8ActBlock - 1) / kFp8ActBlock;
    std::vector<float> s(blocks * N);
    for (int64_t b = 0; b < blocks; ++b)
        for (int64_t n = 0; n < N; ++n) s[b * N + n] = fp8_scale(w, n, b * kFp8ActBlock);
    return s;
}

void quantize_act_fp8(const float* x, int64_t T, int64_t K, uint8_t* xq, float* xs) {
    const int64_t blocks = (K + kFp8ActBlock - 1) / kFp8ActBlock;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t k0 = b * kFp8ActBlock, k1 = std::min(K, k0 + kFp8ActBlock);
            float amax = 0;
            for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(x[t * K + k]));
            xs[b * T + t] = amax > 0 ? amax / 448.0f : 1.0f;
            const float inv = amax > 0 ? std::min(448.0f / amax, FLT_MAX) : 1.0f;
            for (int64_t k = k0; k < k1; ++k) xq[t * K + k] = f32_to_e4m3(x[t * K + k] * inv);
        }
}

void linear_w8a8(const Fp8View& w, const uint8_t* xq, const float* xs, int64_t T, const float* bias, float* y) {
    float table[256];
    for (int v = 0; v < 256; ++v) table[v] = e4m3_to_f32((uint8_t)v);
    const int64_t N = w.l.N, K = w.l.K, blocks = (K + kFp8ActBlock - 1) / kFp8ActBlock;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) {
            float acc = 0;
            for (int64_t b = 0; b < blocks; ++b) {
                float d = 0;
                for (int64_t k = b * kFp8ActBlock; k < std::min(K, (b + 1) * kFp8ActBlock); ++k) d += table[xq[t * K + k]] * table[w.w[n * K + k]];
                acc += d * xs[b * T + t] * w.row_scale[b * N + n];
            }
            y[t * N + n] = acc + (bias ? bias[n] : 0.0f);
        }
}

void dequantize_gptq_layout(const GptqView& w, float* dst) {
    const int64_t K = w.l.K, chunks = w.l.Kp / kGptqChunk;
    for (int64_t n = 0; n < w.l.N; ++n) {
        const int s = gptq_segment(w.l, n);
        for (int64_t kp = 0; kp < w.l.Kp; ++kp) {
            const int64_t k = gptq_x_index(w, s, kp);
            if (k < 0) continue;
            const int64_t g = w.chunk_group[s * chunks + kp / kGptqChunk];
            dst[n * K + k] = half_bits_to_f32(w.scales[n * w.l.G + g]) * (float)(gptq_q(w, n, kp) - gptq_zero(w, n, g));
        }
    }
}

void gptq_mark_steps(GptqWeight& w) {
    const int64_t chunks = w.l.Kp / kGptqChunk, per = kGptqStep / kGptqChunk;
    bool whole = w.l.Kp % kGptqStep == 0;
    for (int s = 0; whole && s < w.l.segments; ++s)
        for (int64_t c = 0; whole && c < chunks; ++c) whole = w.chunk_group[s * chunks + c] == w.chunk_group[s * chunks + c / per * per];
    w.l.group_steps = whole;
}

}  // namespace tpx::cpu
