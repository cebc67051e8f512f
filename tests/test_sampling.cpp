// The CPU's token choice (kernels/cpu/sampling.cpp), which both `tpx run` and `tpx serve` draw
// sampled tokens from: every temperature the job file and the API accept, down to the smallest
// double, rows that hold NaN, the penalties; and what a served token's logprobs need.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {
namespace {

// Logits spread over [-30, 30), fresh each run (the seed is printed by the failing check).
std::vector<float> spread_logits(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> spread(-30.0f, 30.0f);
    std::vector<float> logits(64);
    for (float& l : logits) l = spread(rng);
    return logits;
}

uint64_t fresh_seed() { return std::random_device{}(); }

// Over a temperature that small the logits overflow; the draw must still be the argmax (it was
// the least likely token kept: inf - inf made every weight NaN).
TEST(Sampling, ATemperatureTooSmallToDivideByPicksTheArgmax) {
    const uint64_t inputs = fresh_seed();
    SCOPED_TRACE("logits from seed " + std::to_string(inputs));
    const std::vector<float> logits = spread_logits(inputs);
    const int64_t best = argmax(logits.data(), (int64_t)logits.size());
    for (double t : {5e-324, 1e-320, 1e-310, 1e-300, 1e-30, 1e-6})
        for (const SamplingParams& p : {SamplingParams{t, 0, 1}, SamplingParams{t, 5, 0.9}})
            for (uint64_t seed = 0; seed < 8; ++seed) {
                std::mt19937_64 rng(seed);
                EXPECT_EQ(sample(logits.data(), (int64_t)logits.size(), p, rng), best) << "temperature " << t << ", seed " << seed;
            }
}

// At an ordinary temperature the draws follow the softmax: the top token of two whose logits
// differ by ln 3 (at the temperature) comes three times as often. Of 40,000 draws with p = 3/4
// the top count has a standard deviation of sqrt(40000 * 3/4 * 1/4) = 87, so the ratio
// (30000 +- 87 over 10000 -+ 87) stays within 3 +- 0.035 at one sigma: 0.15 is over 4 sigma.
TEST(Sampling, DrawsFollowTheSoftmaxAtTheTemperature) {
    const std::vector<float> logits = {0.0f, std::log(3.0f) * 0.5f, -40.0f};
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("draws from seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    int first = 0, second = 0;
    for (int i = 0; i < 40000; ++i) {
        const int64_t t = sample(logits.data(), 3, {0.5, 0, 1}, rng);
        ASSERT_TRUE(t == 0 || t == 1) << t;
        (t == 1 ? first : second)++;
    }
    EXPECT_NEAR((double)first / second, 3.0, 0.15);
}

TEST(Sampling, ARowHoldingNaNOrInfinityHasNoToken) {
    for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
        std::vector<float> logits = spread_logits(fresh_seed());
        logits[9] = bad;
        std::mt19937_64 rng(1);
        EXPECT_EQ(sample(logits.data(), (int64_t)logits.size(), {0.8, 0, 1}, rng), -1) << bad;
        EXPECT_EQ(argmax(logits.data(), (int64_t)logits.size()), -1) << bad;
    }
}

// What a served token's logprobs rest on: the log-softmax's normalizer (without overflow at
// large logits), and the most likely tokens in order, as a stable sort puts them (equal logits by
// the lower index first), for counts of none to past the row.
TEST(Sampling, LogSumExpAndTheLargestIndicesInOrder) {
    const uint64_t inputs = fresh_seed();
    std::vector<float> logits = spread_logits(inputs);
    logits[7] = logits[40];  // a tie
    double sum = 0;
    for (float x : logits) sum += std::exp((double)x);
    EXPECT_NEAR(log_sum_exp(logits.data(), (int64_t)logits.size()), std::log(sum), 1e-6) << "inputs " << inputs;
    std::vector<float> big(logits);
    for (float& x : big) x += 1000.0f;  // exp() alone would overflow
    EXPECT_NEAR(log_sum_exp(big.data(), (int64_t)big.size()), std::log(sum) + 1000.0, 1e-3) << "inputs " << inputs;
    std::vector<int64_t> sorted(logits.size());
    for (size_t i = 0; i < sorted.size(); ++i) sorted[i] = (int64_t)i;
    std::stable_sort(sorted.begin(), sorted.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
    for (int64_t k : {0, 1, 5, 64, 80}) {
        const std::vector<int64_t> want(sorted.begin(), sorted.begin() + std::min<int64_t>(k, 64));
        EXPECT_EQ(largest_indices(logits.data(), 64, k), want) << "k " << k << ", inputs " << inputs;
    }
}

// A row of n logits from a normal spread, on a grid of quarters (so that equal logits abound).
std::vector<float> tied_logits(uint64_t seed, int64_t n, float spread) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, spread);
    std::vector<float> logits(n);
    for (float& l : logits) l = std::round(normal(rng) * 4.0f) / 4.0f;
    return logits;
}

// The definition of what a draw keeps, written out: a stable sort of the ids by logit, the first
// top_k, then the fewest whose probability (exp((logit - largest) / temperature) over the k's
// sum, in double) reaches top_p. probs: the kept ids' probabilities within the k; ambiguous: the
// cut lies within 1e-5 of top_p, where fp32 weights may fairly cut one later or sooner.
struct Definition {
    std::vector<int32_t> kept;
    std::vector<double> probs;
    bool ambiguous = false;
};
Definition definition(const std::vector<float>& l, const SamplingParams& p) {
    const int64_t n = (int64_t)l.size(), k = p.top_k > 0 ? std::min<int64_t>(p.top_k, n) : n;
    std::vector<int32_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = (int32_t)i;
    std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
    ids.resize(k);
    Definition d;
    double sum = 0;
    for (int32_t id : ids) sum += std::exp(((double)l[id] - l[ids[0]]) / p.temperature);
    double acc = 0;
    for (int32_t id : ids) {
        d.kept.push_back(id);
        d.probs.push_back(std::exp(((double)l[id] - l[ids[0]]) / p.temperature) / sum);
        acc += d.probs.back();
        if (p.top_p < 1 && acc >= p.top_p) {
            d.ambiguous = acc - p.top_p < 1e-5 || (d.kept.size() > 1 && std::fabs(acc - d.probs.back() - p.top_p) < 1e-5);
            break;
        }
    }
    return d;
}

// The ids top_k and top_p keep are the definition's, in its order, on both of kept_ids' ways to
// them (top_k up to 256 in one pass, larger top_k and top_p through bins of likelihood): ties at
// the cut, a k at and around the path's bound, top_p cutting after one id and near the end.
TEST(Sampling, KeptIdsAreTheDefinitions) {
    const uint64_t inputs = fresh_seed();
    SCOPED_TRACE("logits from seed " + std::to_string(inputs));
    for (int64_t n : {40, 3000})
        for (float spread : {0.5f, 3.0f, 12.0f}) {
            const std::vector<float> l = tied_logits(inputs + n + (uint64_t)spread, n, spread);
            for (int64_t k : {0, 1, 7, 255, 256, 257, 700, 2999, 3000, 4000})
                for (double top_p : {1.0, 0.999, 0.9, 0.5, 0.05, 1e-9})
                    for (double t : {0.5, 1.0, 2.5}) {
                        const SamplingParams p{t, k, top_p};
                        const Definition d = definition(l, p);
                        const std::vector<int32_t> got = kept_ids(l.data(), n, p);
                        const std::string where = "n " + std::to_string(n) + ", spread " + std::to_string(spread) + ", top_k " + std::to_string(k) +
                                                  ", top_p " + std::to_string(top_p) + ", t " + std::to_string(t);
                        if ((k != 0 && k < n) || top_p < 1) {
                            const size_t common = std::min(got.size(), d.kept.size());
                            if (d.ambiguous && common + 1 >= std::max(got.size(), d.kept.size()))  // a cut one sooner or later
                                EXPECT_TRUE(std::equal(got.begin(), got.begin() + common, d.kept.begin())) << where;
                            else
                                EXPECT_EQ(got, d.kept) << where;
                        } else {
                            EXPECT_EQ((int64_t)got.size(), n);  // every id, in order: nothing to rank
                        }
                    }
        }
}

// Rows at the float range's ends keep the definition's ids too: a spread too wide to subtract
// (bins of an infinite width), every logit equal, ids held off at float's lowest (min_tokens)
// beside ordinary ones (whatever the bins' span, the kept ids are the same: the span is a matter
// of speed, docs/PERF.md), and one id.
TEST(Sampling, KeptIdsOfExtremeRows) {
    std::vector<float> wide = {3e38f, -3e38f, 1.0f, 3e38f, -1.0f, 0.0f, -3e38f, 2e38f};
    std::vector<float> flat(500, 7.0f);
    std::vector<float> held = tied_logits(fresh_seed(), 3000, 3.0f);
    held[5] = held[2000] = std::numeric_limits<float>::lowest();
    for (const std::vector<float>* l : {&wide, &flat, &held})
        for (int64_t k : {0, 1, 3, 300, 1000})
            for (double top_p : {1.0, 0.6, 1e-9}) {
                const SamplingParams p{1.0, k, top_p};
                if (!(k > 0 && k < (int64_t)l->size()) && top_p >= 1) continue;
                EXPECT_EQ(kept_ids(l->data(), (int64_t)l->size(), p), definition(*l, p).kept)
                    << "size " << l->size() << ", top_k " << k << ", top_p " << top_p;
            }
    // Two logits 6e38 apart at temperatures past 1e38: their difference overflows a float, not
    // their weights; at 1e300 they are about equally likely (a float difference made the
    // weights NaN, and every draw the last id).
    const float two[2] = {3e38f, -3e38f};
    std::mt19937_64 draws(fresh_seed());
    for (double t : {1e39, 1e300}) {
        int second = 0;
        for (int i = 0; i < 4000; ++i) second += sample(two, 2, {t, 0, 1}, draws) == 1 ? 1 : 0;
        const double p_second = 1.0 / (1.0 + std::exp(6e38 / t));
        EXPECT_NEAR(second / 4000.0, p_second, 0.05) << "temperature " << t;
    }
    const float one = 4.0f;
    std::mt19937_64 rng(3);
    EXPECT_EQ(sample(&one, 1, {1.0, 0, 0.5}, rng), 0);
}

// Draws follow the kept ids' probabilities, renormalised: each draw is a kept id, and the counts
// of 40,000 draws, in groups of at least 800 expected, pass a chi-square test at about 8 standard
// deviations of its statistic (a draw over the wrong ids or at the wrong temperature fails far
// beyond that; a right one fails about once in 1e12).
TEST(Sampling, DrawsFollowTheKeptProbabilities) {
    const uint64_t inputs = fresh_seed();
    SCOPED_TRACE("logits and draws from seed " + std::to_string(inputs));
    const std::vector<float> l = tied_logits(inputs, 600, 2.0f);
    std::mt19937_64 rng(inputs + 1);
    for (const SamplingParams& p : {SamplingParams{1.0, 0, 1.0}, SamplingParams{0.7, 40, 1.0}, SamplingParams{1.3, 400, 1.0},
                                    SamplingParams{1.0, 0, 0.8}, SamplingParams{0.8, 300, 0.9}}) {
        const Definition d = definition(l, p);
        double kept_mass = 0;
        for (double q : d.probs) kept_mass += q;
        std::vector<int64_t> slot(l.size(), -1);
        for (size_t i = 0; i < d.kept.size(); ++i) slot[d.kept[i]] = (int64_t)i;
        constexpr int kDraws = 40000;
        std::vector<int64_t> count(d.kept.size(), 0);
        for (int i = 0; i < kDraws; ++i) {
            const int64_t id = sample(l.data(), (int64_t)l.size(), p, rng);
            ASSERT_TRUE(id >= 0 && id < (int64_t)l.size() && slot[id] >= 0)
                << "drew id " << id << ", which is not kept; top_k " << p.top_k << ", top_p " << p.top_p;
            ++count[slot[id]];
        }
        std::vector<double> expected(1, 0.0), observed(1, 0.0);  // groups, in order of likelihood
        for (size_t i = 0; i < d.kept.size(); ++i) {
            if (expected.back() >= 800) expected.push_back(0), observed.push_back(0);
            expected.back() += kDraws * d.probs[i] / kept_mass, observed.back() += (double)count[i];
        }
        if (expected.size() > 1 && expected.back() < 800) {  // a short last group joins the one before
            expected[expected.size() - 2] += expected.back(), observed[observed.size() - 2] += observed.back();
            expected.pop_back(), observed.pop_back();
        }
        double chi2 = 0;
        for (size_t g = 0; g < expected.size(); ++g) chi2 += (observed[g] - expected[g]) * (observed[g] - expected[g]) / expected[g];
        const size_t groups = expected.size();
        const double dof = (double)groups - 1;
        EXPECT_LT(chi2, dof + 8 * std::sqrt(2 * dof) + 10)
            << "chi-square over " << groups << " groups; temperature " << p.temperature << ", top_k " << p.top_k << ", top_p " << p.top_p;
    }
}

// Penalties as vLLM applies them: repetition on the prompt's and the output's ids (a positive
// logit divided, another multiplied), then frequency times each output id's count and
// presence once; ids in neither stay, ids outside the row are passed over.
TEST(Sampling, PenaltiesAsVllmAppliesThem) {
    const uint64_t inputs = fresh_seed();
    const std::vector<float> l = spread_logits(inputs);
    const Penalties p{0.25, 0.5, 1.5};
    const std::vector<int32_t> prompt = {0, 1, 3, 70}, output = {2, 2, 1, -4, 64};
    std::vector<float> got(l);
    apply_penalties(got.data(), 64, p, prompt, output);
    auto repeated = [&](float x) { return x > 0 ? x / 1.5f : x * 1.5f; };
    EXPECT_FLOAT_EQ(got[0], repeated(l[0])) << "inputs " << inputs;                             // the prompt's only
    EXPECT_FLOAT_EQ(got[1], repeated(l[1]) - 0.5f - 0.25f) << "inputs " << inputs;              // the prompt's and once out
    EXPECT_FLOAT_EQ(got[2], repeated(l[2]) - 2 * 0.5f - 0.25f) << "inputs " << inputs;          // out twice
    EXPECT_FLOAT_EQ(got[3], repeated(l[3])) << "inputs " << inputs;
    for (size_t i = 4; i < 64; ++i) EXPECT_EQ(got[i], l[i]) << i;
    EXPECT_FALSE(Penalties{}.any());
}

}  // namespace
}  // namespace tpx::cpu
