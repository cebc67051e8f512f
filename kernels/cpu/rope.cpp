// Rotary position embedding as HF computes it: inv_freq in fp32 (llama3 scaling applied to
// it), angle = position * inv_freq, and the rotate_half pairing (i, i + head_dim / 2).
#include <cmath>
#include <cstring>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {
namespace {

// HF keeps inv_freq as a module buffer: a model cast with .to(bfloat16) rounds it, and then
// runs with the rounded frequencies even after .float(). `dtype` reproduces that.
std::vector<float> round_freqs(std::vector<float> inv, RopeFreqDtype dtype) {
    for (float& f : inv) {
        if (dtype == RopeFreqDtype::kBF16) {
            uint32_t u;
            std::memcpy(&u, &f, 4);
            u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;  // round to nearest even
            std::memcpy(&f, &u, 4);
        } else if (dtype == RopeFreqDtype::kF16) {
            f = (float)(_Float16)f;
        }
    }
    return inv;
}

}  // namespace

std::vector<float> rope_inv_freq(const RopeParams& p) {
    int64_t half = p.head_dim / 2;
    std::vector<float> inv(half);
    for (int64_t i = 0; i < half; ++i) {
        float exponent = (float)(2 * i) / (float)p.head_dim;
        inv[i] = 1.0f / std::pow((float)p.theta, exponent);
    }
    if (!p.llama3) return round_freqs(inv, p.freq_dtype);
    const double pi = 3.14159265358979323846;
    double low_wavelen = p.original_max_position_embeddings / p.low_freq_factor;
    double high_wavelen = p.original_max_position_embeddings / p.high_freq_factor;
    for (float& f : inv) {
        double wavelen = 2 * pi / f;
        if (wavelen < high_wavelen) continue;
        if (wavelen > low_wavelen) {
            f = (float)(f / p.factor);
        } else {
            double smooth = (p.original_max_position_embeddings / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
            f = (float)((1 - smooth) * f / p.factor + smooth * f);
        }
    }
    return round_freqs(inv, p.freq_dtype);
}

namespace {

void rotate(float* v, int64_t heads, int64_t hd, const float* cos_t, const float* sin_t) {
    int64_t half = hd / 2;
    for (int64_t h = 0; h < heads; ++h) {
        float* x = v + h * hd;
        for (int64_t i = 0; i < half; ++i) {
            float a = x[i], b = x[i + half];
            x[i] = a * cos_t[i] - b * sin_t[i];
            x[i + half] = b * cos_t[i] + a * sin_t[i];
        }
    }
}

}  // namespace

void rope(const RopeParams& p, int64_t tokens, const int32_t* positions, float* q, float* k) {
    std::vector<float> inv = rope_inv_freq(p);
    int64_t half = p.head_dim / 2;
    std::vector<float> cos_t(half), sin_t(half);
    for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t i = 0; i < half; ++i) {
            float angle = (float)positions[t] * inv[i];  // fp32, as HF's freqs
            cos_t[i] = std::cos(angle);
            sin_t[i] = std::sin(angle);
        }
        rotate(q + t * p.heads * p.head_dim, p.heads, p.head_dim, cos_t.data(), sin_t.data());
        rotate(k + t * p.kv_heads * p.head_dim, p.kv_heads, p.head_dim, cos_t.data(), sin_t.data());
    }
}

}  // namespace tpx::cpu
