// GEMM with the weight in checkpoint layout [out, in]: each output is a dot product of two
// contiguous rows, blocked over tokens so a weight row is reused from cache.
#include "kernels/cpu/ops.h"

namespace tpx::cpu {

void linear(const LinearShape& s, const float* x, const float* w, const float* bias, float* y) {
    const int64_t kTokenBlock = 8;
    for (int64_t t0 = 0; t0 < s.tokens; t0 += kTokenBlock) {
        int64_t t1 = t0 + kTokenBlock < s.tokens ? t0 + kTokenBlock : s.tokens;
        for (int64_t n = 0; n < s.out; ++n) {
            const float* wr = w + n * s.in;
            for (int64_t t = t0; t < t1; ++t) {
                const float* xr = x + t * s.in;
                float acc = 0;
                for (int64_t k = 0; k < s.in; ++k) acc += xr[k] * wr[k];
                y[t * s.out + n] = acc + (bias ? bias[n] : 0.0f);
            }
        }
    }
}

}  // namespace tpx::cpu
