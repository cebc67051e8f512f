// SwiGLU activation: silu(gate) * up.
#include <cmath>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {

static inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

void silu_mul_fused(int64_t tokens, int64_t inter, const float* gate_up, float* out) {
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t i = 0; i < inter; ++i)
            out[t * inter + i] = silu(gate_up[t * 2 * inter + i]) * gate_up[t * 2 * inter + inter + i];
}

void silu_mul(int64_t tokens, int64_t width, const float* gate, const float* up, float* out) {
    for (int64_t i = 0; i < tokens * width; ++i) out[i] = silu(gate[i]) * up[i];
}

}  // namespace tpx::cpu
