// Vocab-parallel embedding lookup.
#include <cstring>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {

void embedding(const EmbeddingShape& s, const int32_t* ids, const float* table, float* y) {
    for (int64_t t = 0; t < s.tokens; ++t) {
        int64_t row = (int64_t)ids[t] - s.start;
        float* out = y + t * s.width;
        if (row >= 0 && row < s.rows) std::memcpy(out, table + row * s.width, s.width * sizeof(float));
        else std::memset(out, 0, s.width * sizeof(float));
    }
}

}  // namespace tpx::cpu
