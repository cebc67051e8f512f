// The CPU twin of the device's draw (draw.h says the rule): thresholds as logit values, so a row
// costs a few passes whatever its spread. Built with -ffp-contract=off: the weights' polynomial
// must round as the device's does.
#include "kernels/cpu/draw.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {
namespace {

// Larger floats have larger keys; -0 and +0 share one (they are equal logits).
uint32_t key_of(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    if (u == 0x80000000u) u = 0;
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

struct Scratch {
    std::vector<uint64_t> w;  // each id's weight
    std::vector<float> values;
    std::vector<uint64_t> mass;
    std::vector<std::pair<float, uint64_t>> edge;
    std::vector<uint8_t> mixed;  // top_p's buckets holding a value that is not bf16
    std::vector<float> bucket_value;  // a value of each bucket of top_p's
    // Weights by a bf16 value's bits, for the row whose number is in `made` (a row from the
    // device holds bf16 values only, a few thousand distinct ones: weight() once each).
    std::vector<uint64_t> by_value;
    std::vector<uint32_t> made;
    uint32_t row = 0;
};

// Each id's weight at or above floor into s.w (0 below it: never read): a logit that is a bf16
// value (its low 16 bits 0) through s.by_value, each value's weight computed once a row.
void fill_weights(const float* logits, int64_t n, float floor, float top, double c, Scratch& s) {
    s.w.resize(n);
    if (s.made.empty()) s.by_value.assign(1 << 16, 0), s.made.assign(1 << 16, 0);
    if (++s.row == 0) std::fill(s.made.begin(), s.made.end(), 0u), s.row = 1;  // (the counter wrapped)
    for (int64_t i = 0; i < n; ++i) {
        const float l = logits[i];
        if (!(l >= floor)) {
            s.w[i] = 0;
            continue;
        }
        uint32_t bits;
        std::memcpy(&bits, &l, 4);
        if (bits & 0xffffu) {
            s.w[i] = draw::weight(l, top, c);
            continue;
        }
        const uint32_t v = bits >> 16;
        if (s.made[v] != s.row) s.by_value[v] = draw::weight(l, top, c), s.made[v] = s.row;
        s.w[i] = s.by_value[v];
    }
}

// The k-th largest logit (k in [1, n)): for k up to kHeapK the least of a heap of the k largest
// so far, which most logits pass by with one comparison (a copy of the row and nth_element cost
// more: docs/PERF.md); else nth_element.
constexpr int64_t kHeapK = 1024;
float kth_largest(const float* logits, int64_t n, int64_t k, Scratch& s) {
    if (k <= kHeapK) {
        std::vector<float>& heap = s.values;  // a min-heap
        heap.assign(logits, logits + k);
        std::make_heap(heap.begin(), heap.end(), std::greater<float>());
        for (int64_t i = k; i < n; ++i)
            if (logits[i] > heap.front()) {
                std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
                heap.back() = logits[i];
                std::push_heap(heap.begin(), heap.end(), std::greater<float>());
            }
        return heap.front();
    }
    s.values.assign(logits, logits + n);
    std::nth_element(s.values.begin(), s.values.begin() + (k - 1), s.values.end(), std::greater<float>());
    return s.values[k - 1];
}

// The largest logit value tau >= floor whose ids (at or above it, and at or above floor) weigh at
// least top_p of those at or above floor (s.w: the weights): a histogram of the weight over the
// values' monotone keys' top 16 bits, then a sort of the bucket the cut falls in, unless it holds
// bf16 values only (low 16 bits 0: a row from the device), which are one value: tau.
float top_p_threshold(const float* logits, int64_t n, float floor, double top_p, Scratch& s) {
    s.mass.assign(1 << 16, 0);
    s.mixed.assign(1 << 16, 0);
    s.bucket_value.resize(1 << 16);
    uint64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float l = logits[i];
        if (!(l >= floor)) continue;
        uint32_t bits;
        std::memcpy(&bits, &l, 4);
        const uint32_t b = key_of(l) >> 16;
        s.mass[b] += s.w[i], kept += s.w[i];
        s.mixed[b] |= (bits & 0xffffu) != 0;
        s.bucket_value[b] = l;
    }
    const uint64_t target = draw::top_p_target(top_p, kept);
    uint64_t above = 0;
    int bucket = (1 << 16) - 1;
    for (; bucket > 0 && above + s.mass[bucket] < target; --bucket) above += s.mass[bucket];
    if (!s.mixed[bucket] && s.mass[bucket] > 0) return s.bucket_value[bucket];  // (weight there: an id, whose value it holds)
    s.edge.clear();
    for (int64_t i = 0; i < n; ++i)
        if (logits[i] >= floor && (int)(key_of(logits[i]) >> 16) == bucket) s.edge.emplace_back(logits[i], s.w[i]);
    std::sort(s.edge.begin(), s.edge.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (const auto& [value, w] : s.edge)  // (ties share the value returned)
        if ((above += w) >= target) return value;
    return floor;  // (not reached: the ids at or above floor hold the whole target)
}

// The row's largest logit, and whether every logit is finite.
bool top_of(const float* logits, int64_t n, float& top) {
    top = -INFINITY;
    bool finite = true;
    for (int64_t i = 0; i < n; ++i) {
        finite &= std::isfinite(logits[i]);
        top = std::max(top, logits[i]);
    }
    return finite;
}

// The lowest logit a draw keeps (its thresholds), for a finite row; s.w its weights.
float keep_floor(const float* logits, int64_t n, float top, const DrawParams& p, Scratch& s) {
    float floor = -INFINITY;
    if (p.top_k > 0 && p.top_k < n) floor = kth_largest(logits, n, p.top_k, s);
    const double c = draw::weight_scale(p.temperature);
    fill_weights(logits, n, floor, top, c, s);
    if (p.top_p < 1) floor = top_p_threshold(logits, n, floor, p.top_p, s);
    return floor;
}

}  // namespace

uint64_t draw_random(uint64_t key, uint64_t counter) {
    uint64_t z = key + (counter + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int64_t draw_token(const float* logits, int64_t n, const DrawParams& p) {
    if (p.temperature <= 0 || n <= 1) return argmax(logits, n);
    float top;
    if (!top_of(logits, n, top)) return -1;
    thread_local Scratch s;
    const float floor = keep_floor(logits, n, top, p, s);
    uint64_t total = 0;
    for (int64_t i = 0; i < n; ++i)
        if (logits[i] >= floor) total += s.w[i];
    const uint64_t r = draw::scale_down(p.random, total);
    uint64_t below = 0;
    for (int64_t i = 0; i < n; ++i)
        if (logits[i] >= floor && (below += s.w[i]) > r) return i;
    return argmax(logits, n);  // (not reached: r < total)
}

KeptWeights draw_kept(const float* logits, int64_t n, const DrawParams& p) {
    KeptWeights k;
    float top;
    if (p.temperature <= 0 || !top_of(logits, n, top)) return k;
    Scratch s;
    const float floor = keep_floor(logits, n, top, p, s);
    for (int64_t i = 0; i < n; ++i)
        if (logits[i] >= floor) k.ids.push_back((int32_t)i), k.weights.push_back(s.w[i]);
    return k;
}

}  // namespace tpx::cpu
