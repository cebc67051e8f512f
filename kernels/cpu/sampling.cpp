// Token choice on the host besides the draw (draw.cpp): the greedy argmax, the penalties, and what
// a token's logprobs need.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {

int64_t argmax(const float* logits, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(logits[i])) return -1;
        if (logits[i] > logits[best]) best = i;
    }
    return best;
}

void apply_penalties(float* logits, int64_t n, const Penalties& p, const std::vector<int32_t>& prompt, const std::vector<int32_t>& output) {
    std::vector<int32_t> out(output);  // sorted: each id's count is its run
    std::sort(out.begin(), out.end());
    if (p.repetition != 1) {
        std::vector<int32_t> seen(prompt);
        seen.insert(seen.end(), out.begin(), out.end());
        std::sort(seen.begin(), seen.end());
        seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
        const float r = (float)p.repetition;  // fp32 arithmetic throughout, as vLLM's tensors
        for (int32_t id : seen) {
            if (id < 0 || id >= n) continue;
            float& l = logits[id];
            l = l > 0 ? l / r : l * r;
        }
    }
    for (size_t i = 0; i < out.size();) {
        size_t j = i;
        while (j < out.size() && out[j] == out[i]) ++j;
        if (out[i] >= 0 && out[i] < n) {
            float& l = logits[out[i]];
            l -= (float)p.frequency * (float)(j - i);
            l -= (float)p.presence;
        }
        i = j;
    }
}

double log_sum_exp(const float* logits, int64_t n) {
    float top = -INFINITY;
    for (int64_t i = 0; i < n; ++i) top = std::max(top, logits[i]);
    double sum = 0;  // (float differences and exps: each term within a few 1e-7 of its own, far below a logprob's 1e-4)
    for (int64_t i = 0; i < n; ++i) sum += std::exp(logits[i] - top);
    return (double)top + std::log(sum);
}

std::vector<int64_t> largest_indices(const float* logits, int64_t n, int64_t k) {
    k = std::max<int64_t>(0, std::min(k, n));
    const auto before = [&](int64_t a, int64_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::vector<int64_t> best;  // in order; one pass over the row (k is small: a served call's at most 20)
    best.reserve(k + 1);
    for (int64_t i = 0; i < n && k > 0; ++i) {
        if ((int64_t)best.size() == k && !before(i, best.back())) continue;
        best.insert(std::upper_bound(best.begin(), best.end(), i, before), i);
        if ((int64_t)best.size() > k) best.pop_back();
    }
    return best;
}

}  // namespace tpx::cpu
