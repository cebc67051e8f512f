// Causal GQA attention over the KV cache, one token at a time: scores in fp32, softmax with
// the maximum subtracted. All K/V of the batch are written before any token attends, so a
// prefill of a whole prompt and a decode step are the same code.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {

void attention(const AttentionShape& s, const int32_t* slot, const int32_t* pos, const float* q, const float* k,
               const float* v, float* k_cache, float* v_cache, float* out) {
    int64_t kv_width = s.kv_heads * s.head_dim;
    for (int64_t t = 0; t < s.tokens; ++t) {
        int64_t at = ((int64_t)slot[t] * s.max_seq + pos[t]) * kv_width;
        std::memcpy(k_cache + at, k + t * kv_width, kv_width * sizeof(float));
        std::memcpy(v_cache + at, v + t * kv_width, kv_width * sizeof(float));
    }
    float scale = 1.0f / std::sqrt((float)s.head_dim);
    int64_t group = s.heads / s.kv_heads;
    std::vector<float> scores;
    for (int64_t t = 0; t < s.tokens; ++t) {
        int64_t p = pos[t];
        int64_t first = s.sliding_window > 0 && p - s.sliding_window + 1 > 0 ? p - s.sliding_window + 1 : 0;
        const float* kbase = k_cache + (int64_t)slot[t] * s.max_seq * kv_width;
        const float* vbase = v_cache + (int64_t)slot[t] * s.max_seq * kv_width;
        scores.resize(p - first + 1);
        for (int64_t h = 0; h < s.heads; ++h) {
            const float* qh = q + t * s.heads * s.head_dim + h * s.head_dim;
            int64_t kvh = h / group;
            float mx = -INFINITY;
            for (int64_t j = first; j <= p; ++j) {
                const float* kj = kbase + j * kv_width + kvh * s.head_dim;
                float d = 0;
                for (int64_t i = 0; i < s.head_dim; ++i) d += qh[i] * kj[i];
                scores[j - first] = d * scale;
                mx = std::max(mx, scores[j - first]);
            }
            float sum = 0;
            for (float& x : scores) sum += (x = std::exp(x - mx));
            float* o = out + t * s.heads * s.head_dim + h * s.head_dim;
            std::memset(o, 0, s.head_dim * sizeof(float));
            for (int64_t j = first; j <= p; ++j) {
                float w = scores[j - first] / sum;
                const float* vj = vbase + j * kv_width + kvh * s.head_dim;
                for (int64_t i = 0; i < s.head_dim; ++i) o[i] += w * vj[i];
            }
        }
    }
}

}  // namespace tpx::cpu
