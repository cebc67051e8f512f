// The quantized GEMVs' CPU twins: the same chunks, the same scale per chunk, the same order of
// sums per lane as kernels/cuda/quant_gemv.cu, in plain loops (the reference of its tests).
#include "kernels/cpu/quant_gemv.h"

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

namespace {

float fp8_value(uint8_t v) {
    const float sign = (v & 0x80) ? -1.0f : 1.0f;
    const int e = (v >> 3) & 0xf, m = v & 0x7;
    if (e == 0xf && m == 0x7) return NAN;
    if (e == 0) return sign * std::ldexp((float)m, -9);
    return sign * std::ldexp(1.0f + (float)m / 8.0f, e - 7);
}

float fp8_scale(const Fp8View& w, int64_t n, int64_t k) {
    return w.scale[(n / w.l.rows_per_scale) * w.l.scale_cols + (k + w.l.in_offset) / w.l.block_in];
}

// Row n's q at position kp (0..15).
int gptq_q(const GptqView& w, int64_t n, int64_t kp) { return (int)((w.qw[n * (w.l.Kp / 8) + kp / 8] >> (4 * (kp % 8))) & 0xf); }
int gptq_zero(const GptqView& w, int64_t n, int64_t g) { return w.zeros ? w.zeros[n * w.l.G + g] : 8; }
int64_t gptq_x_index(const GptqView& w, int s, int64_t kp) { return w.perm ? w.perm[s * w.l.Kp + kp] : kp; }

}  // namespace

// The kernel: lane l of a row's warp takes chunks l, l + 32, ...; each chunk's sum times its
// scale goes into the lane's sum, and the 32 lanes' sums are added as a butterfly (warp_sum).
// The twin adds the chunks in order instead: the tests' tolerance covers the reordering.
void gemv_fp8(const Fp8View& w, int64_t tokens, const float* x, const float* bias, float* y) {
    float table[256];
    for (int v = 0; v < 256; ++v) table[v] = fp8_value((uint8_t)v);
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
        for (int64_t k = 0; k < w.l.K; ++k) dst[n * w.l.K + k] = fp8_value(w.w[n * w.l.K + k]) * fp8_scale(w, n, k);
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

}  // namespace tpx::cpu
