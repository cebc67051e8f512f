// Token choice: greedy argmax, or sampling with temperature, top-k and top-p (in that order,
// as HF's logits warpers) from a seeded generator; and what a token's logprobs need.
#include <algorithm>
#include <cmath>
#include <numeric>
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

namespace {

// The order of likelihood: the larger logit first, equal logits the lower id first (the order a
// stable sort of the ids by logit gives).
struct MoreLikely {
    const float* logits;
    bool operator()(int32_t a, int32_t b) const { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); }
};

// Bins of likelihood over logits [bottom, top]: bin(l) = (top - l) x scale, truncated, at most
// kBins - 1 (where every logit below bottom falls too). Float subtraction and multiplication are
// monotone, so a larger logit never falls in a later bin: the ids of bins 0 .. j are each more
// likely than every id past them, and the ids top_k or top_p keep are found by sorting those
// bins' ids only (a whole row's sort was most of a draw's time: docs/PERF.md).
constexpr int kBins = 2048;
constexpr int64_t kFewIds = 256;  // top_k up to this: largest_indices' one pass beats the bins' two
struct Bins {
    float top, scale;
    Bins(float top, float bottom) : top(top), scale(top > bottom ? (float)kBins / (top - bottom) : 0.0f) {}
    int operator()(float l) const {
        const float b = (top - l) * scale;
        return b < (float)(kBins - 1) ? (int)b : kBins - 1;  // (an infinite spread: scale 0, and inf x 0's NaN last)
    }
};

// A finite row's draw: its largest logit, and the weights: an id's logit's distance below the
// largest (in double: a float difference of logits 6e38 apart overflows), over the temperature,
// through fp32 exp: at most 1, and the largest's exactly 1 however small the temperature (1 /
// temperature is infinite below about 1e-308, and 0 x inf NaN). low: the smallest logit whose
// weight is not 0 in fp32 (exp underflows below -104), or the row's smallest where that is
// higher; the bins span [low, top], so that ids held off at float's lowest (min_tokens) leave the
// others their bins.
struct Row {
    const float* logits;
    int64_t n;
    float top = -INFINITY, low = INFINITY;
    double inv_t;
    bool finite = true;
    Row(const float* logits, int64_t n, double temperature) : logits(logits), n(n), inv_t(1.0 / temperature) {
        for (int64_t i = 0; i < n; ++i) {
            finite &= std::isfinite(logits[i]);
            top = std::max(top, logits[i]), low = std::min(low, logits[i]);
        }
        const double reach = (double)top - 104.0 * temperature;
        if (reach > (double)low && (float)reach < top) low = (float)reach;
    }
    float weight(int64_t id) const { return logits[id] == top ? 1.0f : std::exp((float)(((double)logits[id] - (double)top) * inv_t)); }
};

// What a row's draw keeps between calls (a row's worth each: no allocation a step).
struct Scratch {
    std::vector<float> w;  // weights by id
    std::vector<int32_t> ids, edge;  // edge: top_p's last bin's ids
    std::vector<int64_t> count;
    std::vector<double> mass;
};

// The ids of bins 0 .. last, in the ids' order.
void ids_through(const Row& row, const Bins& bins, int last, std::vector<int32_t>& ids) {
    ids.clear();
    for (int64_t i = 0; i < row.n; ++i)
        if (bins(row.logits[i]) <= last) ids.push_back((int32_t)i);
}

// The fewest of ids whose weights reach top_p of total, more than `whole` (ids past those in order
// of likelihood, each less likely than all of those); 0 where their sum falls short (rounding).
int64_t top_p_count(const std::vector<int32_t>& ids, const std::vector<float>& w, double total, double top_p, int64_t whole) {
    double acc = 0;
    for (size_t i = 0; i < ids.size(); ++i)
        if ((acc += (double)w[ids[i]] / total) >= top_p && (int64_t)i >= whole) return (int64_t)i + 1;
    return 0;
}

// Where top_k or top_p apply: the ids they keep into s.ids and their weights into s.w (HF's
// warpers' order: the top_k most likely, then the fewest of those whose probability reaches top_p,
// at least one). Most likely first, but for top_p alone, where the ids of the bins it keeps whole
// come first in the ids' order (a flat row's top_p keeps most of it: docs/PERF.md).
void keep(const Row& row, const SamplingParams& p, Scratch& s) {
    const int64_t n = row.n, k = p.top_k > 0 ? std::min(p.top_k, n) : n;
    std::vector<float>& w = s.w;
    std::vector<int32_t>& ids = s.ids;
    w.resize(n);
    const MoreLikely more{row.logits};
    const Bins bins(row.top, row.low);
    double total = 0;   // of the k most likely ids' weights (top_p is a fraction of it)
    int64_t whole = 0;  // ids kept whatever top_p's cut, first in ids (in any order)
    if (k <= kFewIds) {
        ids.clear();
        for (int64_t id : largest_indices(row.logits, n, k)) ids.push_back((int32_t)id);
        for (int32_t id : ids) total += (w[id] = row.weight(id));
    } else if (k < n) {  // the fewest bins holding k ids
        s.count.assign(kBins, 0);
        for (int64_t i = 0; i < n; ++i) ++s.count[bins(row.logits[i])];
        int last = 0;
        for (int64_t held = s.count[0]; held < k; held += s.count[++last]) {}
        ids_through(row, bins, last, ids);
        std::nth_element(ids.begin(), ids.begin() + (k - 1), ids.end(), more);
        ids.resize(k);
        std::sort(ids.begin(), ids.end(), more);
        for (int32_t id : ids) total += (w[id] = row.weight(id));
    } else {  // the fewest bins holding top_p of the weight: all but the last kept whole (in the ids'
              // order), the last's ids most likely first, where the walk below cuts
        s.mass.assign(kBins, 0.0);
        for (int64_t i = 0; i < n; ++i) s.mass[bins(row.logits[i])] += (w[i] = row.weight(i));
        for (int b = 0; b < kBins; ++b) total += s.mass[b];
        int last = 0;
        for (double held = s.mass[0]; held < p.top_p * total && last < kBins - 1; held += s.mass[++last]) {}
        ids.clear();
        s.edge.clear();
        for (int64_t i = 0; i < n; ++i) {
            const int b = bins(row.logits[i]);
            if (b < last) ids.push_back((int32_t)i);
            else if (b == last) s.edge.push_back((int32_t)i);
        }
        whole = (int64_t)ids.size();
        std::sort(s.edge.begin(), s.edge.end(), more);
        ids.insert(ids.end(), s.edge.begin(), s.edge.end());
    }
    if (p.top_p >= 1) return;
    int64_t reach = top_p_count(ids, w, total, p.top_p, whole);
    if (!reach && k == n && (int64_t)ids.size() < n) {  // the bins' sums rounded past the walk's: every id
        ids_through(row, bins, kBins - 1, ids);
        std::sort(ids.begin(), ids.end(), more);
        reach = top_p_count(ids, w, total, p.top_p, 0);
    }
    if (reach) ids.resize(reach);
}

// A uniform draw in [0, sum of the weights) walked down them in turn: the id it falls on (the last
// with a weight, should the sum's rounding leave the draw past them all).
template <typename Id>
int64_t draw(int64_t count, Id id, const std::vector<float>& w, std::mt19937_64& rng) {
    double sum = 0;
    for (int64_t i = 0; i < count; ++i) sum += w[id(i)];
    double r = std::uniform_real_distribution<double>(0, sum)(rng);
    int64_t last = id(0);
    for (int64_t i = 0; i < count; ++i) {
        const float wi = w[id(i)];
        if (wi <= 0) continue;
        last = id(i);
        if ((r -= wi) < 0) break;
    }
    return last;
}

bool ranks(const SamplingParams& p, int64_t n) { return (p.top_k > 0 && p.top_k < n) || p.top_p < 1; }

}  // namespace

int64_t sample(const float* logits, int64_t n, const SamplingParams& p, std::mt19937_64& rng) {
    if (p.temperature <= 0 || n <= 1) return argmax(logits, n);
    const Row row(logits, n, p.temperature);
    if (!row.finite) return -1;
    thread_local Scratch s;
    if (!ranks(p, n)) {  // any id may come: drawn in the ids' order, nothing sorted
        s.w.resize(n);
        for (int64_t i = 0; i < n; ++i) s.w[i] = row.weight(i);
        return draw(n, [](int64_t i) { return i; }, s.w, rng);
    }
    keep(row, p, s);
    return draw((int64_t)s.ids.size(), [&](int64_t i) { return (int64_t)s.ids[i]; }, s.w, rng);
}

std::vector<int32_t> kept_ids(const float* logits, int64_t n, const SamplingParams& p) {
    std::vector<int32_t> ids(n);
    std::iota(ids.begin(), ids.end(), 0);
    const Row row(logits, n, p.temperature > 0 ? p.temperature : 1.0);
    if (!row.finite || !ranks(p, n)) return ids;
    Scratch s;
    keep(row, p, s);
    std::sort(s.ids.begin(), s.ids.end(), MoreLikely{logits});
    return s.ids;
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
