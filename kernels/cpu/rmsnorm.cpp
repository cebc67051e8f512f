// RMSNorm and the fused residual add + RMSNorm; sums in double so that the CPU reference is
// no less accurate than HF's fp32 reduction.
#include <cmath>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {

void rmsnorm(int64_t tokens, int64_t width, float eps, const float* x, const float* w, float* y) {
    for (int64_t t = 0; t < tokens; ++t) {
        const float* xr = x + t * width;
        double ss = 0;
        for (int64_t i = 0; i < width; ++i) ss += (double)xr[i] * xr[i];
        float inv = 1.0f / std::sqrt((float)(ss / width) + eps);
        for (int64_t i = 0; i < width; ++i) y[t * width + i] = w[i] * (xr[i] * inv);
    }
}

void add_rmsnorm(int64_t tokens, int64_t width, float eps, const float* x, float* residual, const float* w, float* y) {
    for (int64_t i = 0; i < tokens * width; ++i) residual[i] += x[i];
    rmsnorm(tokens, width, eps, residual, w, y);
}

}  // namespace tpx::cpu
