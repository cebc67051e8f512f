// The CPU's token choice (kernels/cpu/sampling.cpp), which both `tpx run` and `tpx serve` draw
// sampled tokens from: every temperature the job file and the API accept, down to the smallest
// double, rows that hold NaN, the penalties; and what a served token's logprobs need.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
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
