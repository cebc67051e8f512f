// GPTQ and FP8 dequantization, one plain loop each: the CPU backend's and the tests' reference.
// A tile is dequantized row of the packed tensor by row, so the packed reads are sequential.
#include "loader/dequant.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace tpx {

float fp8_e4m3_to_f32(uint8_t v) {
    const float sign = (v & 0x80) ? -1.0f : 1.0f;
    const int e = (v >> 3) & 0xf, m = v & 0x7;
    if (e == 0xf && m == 0x7) return std::numeric_limits<float>::quiet_NaN();
    if (e == 0) return sign * std::ldexp((float)m, -9);  // subnormal: m/8 x 2^(1-7)
    return sign * std::ldexp(1.0f + (float)m / 8.0f, e - 7);
}

uint8_t f32_to_fp8_e4m3(float f) {
    if (std::isnan(f)) return 0x7f;
    const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
    float a = std::min(std::fabs(f), 448.0f);
    if (a < std::ldexp(1.0f, -6)) return sign | (uint8_t)std::nearbyint(a * 512.0f);  // subnormal (8 -> 2^-6, code 0x08)
    int e = 0;
    float mant = std::frexp(a, &e) * 2.0f;  // a = mant x 2^(e-1), mant in [1, 2)
    e -= 1;
    int m = (int)std::nearbyint((mant - 1.0f) * 8.0f);  // round to nearest even
    if (m == 8) m = 0, ++e;
    return sign | (uint8_t)(((e + 7) << 3) | m);
}

void dequantize_gptq(const GptqTile& t, float* dst) {
    const int64_t row0 = t.in_begin / 8, col0 = t.out_begin / 8;
    const std::vector<int32_t>& held = *t.row_of_group;
    for (int64_t i = 0; i < t.in_len; ++i) {
        const int64_t in = t.in_begin + i;
        const int shift = 4 * (int)(in % 8);
        const uint32_t* q = reinterpret_cast<const uint32_t*>(t.qweight + (in / 8 - row0) * t.out_len);
        const int64_t g = held[t.g_idx[i]];
        const float* scale = t.scales + g * t.out_len;
        const uint32_t* zeros = reinterpret_cast<const uint32_t*>(t.qzeros + g * t.qzeros_cols);
        for (int64_t o = 0; o < t.out_len; ++o) {
            const int64_t out = t.out_begin + o;
            const int value = (int)((q[o] >> shift) & 0xf);
            const int zero = (int)((zeros[out / 8 - col0] >> (4 * (out % 8))) & 0xf) + t.zero_offset;
            dst[o * t.in_len + i] = scale[o] * (float)(value - zero);
        }
    }
}

void dequantize_fp8(const Fp8Tile& t, float* dst) {
    float table[256];
    for (int v = 0; v < 256; ++v) table[v] = fp8_e4m3_to_f32((uint8_t)v);
    const int64_t brow0 = t.out_begin / t.block_out, bcol0 = t.in_begin / t.block_in;
    for (int64_t o = 0; o < t.out_len; ++o) {
        const float* scales = t.scale_inv + ((t.out_begin + o) / t.block_out - brow0) * t.scale_cols;
        const uint8_t* w = t.weight + o * t.in_len;
        for (int64_t i = 0; i < t.in_len; ++i) dst[o * t.in_len + i] = table[w[i]] * scales[(t.in_begin + i) / t.block_in - bcol0];
    }
}

}  // namespace tpx
