// The draw of `tpx serve` and `tpx run` (kernels/cpu/draw.h), the twin the device's kernel is
// checked against: its kept set against the rule written out by sorting, its walk against the
// definition, its draws against the kept weights (chi-square), and the integer weights against exp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/draw.h"
#include "kernels/cpu/ops.h"

using namespace tpx;
using cpu::DrawParams;

namespace {

std::mt19937_64 rng(77);

// Values rounded to bf16 (the device's rows), with ties.
float bf16_round(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1)) & 0xffff0000u;
    std::memcpy(&v, &u, 4);
    return v;
}

std::vector<float> random_row(int64_t n, float scale, bool bf16) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> row(n);
    for (float& x : row) x = bf16 ? bf16_round(d(rng)) : d(rng);
    return row;
}

// The rule of draw.h written out: the k-th largest by a full sort; tau by walking the distinct
// values down, adding the weights of each value's ids.
std::vector<int32_t> kept_by_definition(const std::vector<float>& row, const DrawParams& p) {
    const int64_t n = (int64_t)row.size();
    std::vector<float> sorted(row);
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    const float top = sorted[0];
    const double c = cpu::draw::weight_scale(p.temperature);
    float floor = -INFINITY;
    if (p.top_k > 0 && p.top_k < n) floor = sorted[p.top_k - 1];
    if (p.top_p < 1) {
        uint64_t kept = 0;
        for (float v : row)
            if (v >= floor) kept += cpu::draw::weight(v, top, c);
        const uint64_t target = cpu::draw::top_p_target(p.top_p, kept);
        uint64_t above = 0;
        for (size_t i = 0; i < sorted.size() && sorted[i] >= floor; ++i) {
            above += cpu::draw::weight(sorted[i], top, c);
            if ((i + 1 == sorted.size() || sorted[i + 1] != sorted[i]) && above >= target) {
                floor = sorted[i];
                break;
            }
        }
    }
    std::vector<int32_t> ids;
    for (int64_t i = 0; i < n; ++i)
        if (row[i] >= floor) ids.push_back((int32_t)i);
    return ids;
}

const DrawParams kCuts[] = {{1.0, 0, 1.0}, {0.7, 50, 1.0}, {1.0, 0, 0.9}, {0.7, 50, 0.9}, {1.5, 1, 1.0}, {1.0, 0, 1e-9},
                            {0.3, 1000, 0.5}, {2.0, 3, 0.95}, {1e-30, 0, 0.9}, {1e30, 10, 0.5}, {1.0, 1024, 1.0}, {1.0, 1025, 0.9},
                            {0.8, 5000, 1.0}};  // (the twin's top_k: a heap up to 1024, nth_element past it)

TEST(Draw, KeptIdsAreTheRuleWrittenOut) {
    for (bool bf16 : {true, false})
        for (float scale : {0.5f, 3.0f, 30.0f})
            for (int64_t n : {7, 1000, 40000})
                for (const DrawParams& p : kCuts) {
                    const std::vector<float> row = random_row(n, scale, bf16);
                    const cpu::KeptWeights kept = cpu::draw_kept(row.data(), n, p);
                    EXPECT_EQ(kept.ids, kept_by_definition(row, p))
                        << "n " << n << " scale " << scale << " T " << p.temperature << " top_k " << p.top_k << " top_p " << p.top_p;
                    // Each weight draw::weight's (the twin computes a bf16 value's once a row).
                    const float top = *std::max_element(row.begin(), row.end());
                    const double c = cpu::draw::weight_scale(p.temperature);
                    for (size_t i = 0; i < kept.ids.size() && i < kept.weights.size(); ++i)
                        ASSERT_EQ(kept.weights[i], cpu::draw::weight(row[kept.ids[i]], top, c)) << "id " << kept.ids[i] << " T " << p.temperature;
                }
}

TEST(Draw, KeptIdsOfRowsWithTiesAndExtremes) {
    const float lowest = std::numeric_limits<float>::lowest();
    const std::vector<std::vector<float>> rows = {
        std::vector<float>(100, 2.0f),                             // every logit equal
        {1, 3, 3, 3, 2, 3, 0, -1},                                 // ties at the top and at the k-th
        {0.0f, -0.0f, 0.0f, -0.0f, -1.0f, -0.0f},                  // -0 is +0
        {3e38f, -3e38f, 1.0f, 2.9e38f, lowest, 0.0f},              // a spread past float's range
        {lowest, lowest, 5.0f, 4.0f, lowest, 4.5f, 4.0f, lowest},  // ids held at float's lowest
    };
    for (const std::vector<float>& row : rows)
        for (const DrawParams& p : kCuts)
            for (int64_t k : {0, 1, 2, 3, 4, 5})
                for (double top_p : {1.0, 0.999, 0.6, 0.3, 1e-6}) {
                    DrawParams q = p;
                    q.top_k = k, q.top_p = top_p;
                    EXPECT_EQ(cpu::draw_kept(row.data(), (int64_t)row.size(), q).ids, kept_by_definition(row, q))
                        << "row of " << row.size() << " T " << q.temperature << " top_k " << k << " top_p " << top_p;
                }
    // Ties at the k-th logit are all kept (HF's and vLLM's top-k); top_p keeps its cut's ties.
    const std::vector<float> row = {1, 3, 3, 3, 2, 3, 0, -1};
    EXPECT_EQ(cpu::draw_kept(row.data(), 8, {1.0, 2, 1.0, 0}).ids, (std::vector<int32_t>{1, 2, 3, 5}));
    EXPECT_EQ(cpu::draw_kept(row.data(), 8, {1.0, 0, 0.01, 0}).ids, (std::vector<int32_t>{1, 2, 3, 5}));
    // A cut whose target the ids above it reach exactly stops there (not at the next value down).
    const std::vector<float> two = {5, 5, -1000, -1000};
    EXPECT_EQ(cpu::draw_kept(two.data(), 4, {1.0, 0, 0.9999999999999999, 0}).ids, (std::vector<int32_t>{0, 1}));
}

// The id the walk must find: the first kept id whose running weight passes floor(random x total / 2^64).
int64_t walked(const std::vector<float>& row, const DrawParams& p) {
    const cpu::KeptWeights k = cpu::draw_kept(row.data(), (int64_t)row.size(), p);
    const uint64_t total = std::accumulate(k.weights.begin(), k.weights.end(), (uint64_t)0);
    const uint64_t point = (uint64_t)(((unsigned __int128)p.random * total) >> 64);
    uint64_t below = 0;
    for (size_t i = 0; i < k.ids.size(); ++i)
        if ((below += k.weights[i]) > point) return k.ids[i];
    return -2;
}

TEST(Draw, TheDrawWalksTheKeptIdsInOrder) {
    for (const DrawParams& p : kCuts)
        for (int i = 0; i < 50; ++i) {
            const std::vector<float> row = random_row(3000, 2.0f, i % 2 == 0);
            DrawParams q = p;
            q.random = i < 2 ? (i == 0 ? 0 : ~0ull) : rng();
            EXPECT_EQ(cpu::draw_token(row.data(), 3000, q), walked(row, q)) << "T " << q.temperature << " random " << q.random;
        }
}

TEST(Draw, DrawsFollowTheKeptWeights) {
    // A row of distinct logits 0.37 apart: chi-square over 40,000 draws (from fixed random numbers:
    // deterministic) below its degrees of freedom plus 4.5 standard deviations (past the 0.999
    // quantile: 46.7 for top_k's 19).
    std::vector<float> row(64);
    for (int i = 0; i < 64; ++i) row[i] = -0.37f * (float)((i * 37) % 64);
    for (const DrawParams& p : {DrawParams{1.0, 20, 1.0, 0}, DrawParams{1.3, 0, 0.99, 0}}) {
        const cpu::KeptWeights k = cpu::draw_kept(row.data(), 64, p);
        ASSERT_GE(k.ids.size(), 10u);
        const double total = (double)std::accumulate(k.weights.begin(), k.weights.end(), (uint64_t)0);
        std::vector<int> count(64, 0);
        constexpr int kDraws = 40000;
        for (int d = 0; d < kDraws; ++d) {
            DrawParams q = p;
            q.random = cpu::draw_random(12345, (uint64_t)d);
            const int64_t id = cpu::draw_token(row.data(), 64, q);
            ASSERT_GE(id, 0);
            ++count[id];
        }
        double chi2 = 0;
        int kept = 0;
        for (size_t i = 0; i < k.ids.size(); ++i) {
            const double want = kDraws * (double)k.weights[i] / total;
            chi2 += (count[k.ids[i]] - want) * (count[k.ids[i]] - want) / want;
            count[k.ids[i]] = -1;
            ++kept;
        }
        for (int c : count) EXPECT_LE(c, 0) << "an id outside the kept set was drawn";
        const double limit = kept - 1 + 4.5 * std::sqrt(2.0 * (kept - 1));  // past the 0.999 quantile for these dof
        EXPECT_LT(chi2, limit) << kept << " ids kept, top_k " << p.top_k << " top_p " << p.top_p;
    }
}

TEST(Draw, WeightsAreExpToItsPrecisionAndTheTopsExactly) {
    const double c = cpu::draw::weight_scale(1.0);
    EXPECT_EQ(cpu::draw::weight(3.5f, 3.5f, c), cpu::draw::kTopWeight);
    EXPECT_EQ(cpu::draw::weight(3.5f, 3.5f, INFINITY), cpu::draw::kTopWeight);  // (a temperature of 1e-320)
    uint64_t last = cpu::draw::kTopWeight;
    for (float d = 0.001f; d < 30.0f; d *= 1.01f) {
        const uint64_t w = cpu::draw::weight(-d, 0.0f, c);
        const double want = std::exp(-(double)d) * (double)cpu::draw::kTopWeight;
        EXPECT_LE(w, last);
        if (want > 1e9) {  // (past the truncation's 1e-9)
            EXPECT_NEAR((double)w / want, 1.0, 3e-7) << d;
        }
        last = w;
    }
    EXPECT_EQ(cpu::draw::weight(-28.0f, 0.0f, c), 0u);  // below 2^-40 of the top's
    EXPECT_EQ(cpu::draw::weight(-3e38f, 3e38f, c), 0u);
}

TEST(Draw, GreedyBrokenAndDegenerateRows) {
    const std::vector<float> row = {1, 4, 2, 4, -3};
    EXPECT_EQ(cpu::draw_token(row.data(), 5, {0.0, 0, 1.0, 99}), 1);  // the argmax, first on ties
    // An id of weight 0 (27.7 temperatures below the top) is never drawn, even by the lowest number.
    const std::vector<float> far = {-100, 0, 1};
    EXPECT_EQ(cpu::draw_token(far.data(), 3, {1.0, 0, 1.0, 0}), 1);
    std::vector<float> bad(row);
    bad[4] = NAN;
    EXPECT_EQ(cpu::draw_token(bad.data(), 5, {1.0, 0, 1.0, 99}), -1);
    bad[4] = INFINITY;
    EXPECT_EQ(cpu::draw_token(bad.data(), 5, {0.0, 0, 1.0, 99}), -1);
    // A temperature near 0 draws among the largest only; a huge one from every id alike.
    std::vector<int> seen(5, 0);
    for (uint64_t i = 0; i < 400; ++i) ++seen[cpu::draw_token(row.data(), 5, {1e-30, 0, 1.0, cpu::draw_random(1, i)})];
    EXPECT_EQ(seen[0] + seen[2] + seen[4], 0);
    EXPECT_GT(seen[1], 150);
    EXPECT_GT(seen[3], 150);
    std::fill(seen.begin(), seen.end(), 0);
    for (uint64_t i = 0; i < 1000; ++i) ++seen[cpu::draw_token(row.data(), 5, {1e30, 0, 1.0, cpu::draw_random(2, i)})];
    for (int s : seen) EXPECT_GT(s, 150);
}

// Temperatures at the ends of what the job file and the API accept: one so small that 1 / T
// overflows draws the argmax (inf - inf made every weight NaN in an earlier sampler); at 1e39 and
// 1e300, two logits 6e38 apart (their float difference overflows) are drawn as exp says: the
// second's share of 4,000 draws (p at most 1/2: a standard deviation of at most 0.008) within
// 0.05, over 6 standard deviations. One id is always drawn.
TEST(Draw, TemperaturesAtTheEndsOfTheRange) {
    const uint64_t seed = std::random_device{}();
    SCOPED_TRACE("logits from seed " + std::to_string(seed));
    std::mt19937_64 fresh(seed);
    std::uniform_real_distribution<float> over(-30.0f, 30.0f);
    std::vector<float> spread(64);
    for (float& l : spread) l = over(fresh);
    const int64_t best = cpu::argmax(spread.data(), 64);
    for (double t : {5e-324, 1e-310, 1e-300, 1e-30})
        for (int64_t k : {0, 5})
            for (uint64_t i = 0; i < 50; ++i) EXPECT_EQ(cpu::draw_token(spread.data(), 64, {t, k, 0.9, cpu::draw_random(seed, i)}), best) << t;
    const float two[2] = {3e38f, -3e38f};
    for (double t : {1e39, 1e300}) {
        int second = 0;
        for (uint64_t i = 0; i < 4000; ++i) second += cpu::draw_token(two, 2, {t, 0, 1.0, cpu::draw_random(seed + 1, i)}) == 1 ? 1 : 0;
        EXPECT_NEAR(second / 4000.0, 1.0 / (1.0 + std::exp(6e38 / t)), 0.05) << "temperature " << t;
    }
    const float one = 4.0f;
    EXPECT_EQ(cpu::draw_token(&one, 1, {1.0, 0, 0.5, 123}), 0);
}

TEST(Draw, RandomNumbersDependOnKeyAndCounterOnly) {
    EXPECT_EQ(cpu::draw_random(5, 9), cpu::draw_random(5, 9));
    EXPECT_NE(cpu::draw_random(5, 9), cpu::draw_random(5, 10));
    EXPECT_NE(cpu::draw_random(5, 9), cpu::draw_random(6, 9));
    // The top bit (which halves the range a draw falls in) is set about half the time.
    int high = 0;
    for (uint64_t i = 0; i < 10000; ++i) high += (int)(cpu::draw_random(3, i) >> 63);
    EXPECT_NEAR(high, 5000, 250);
}

}  // namespace
