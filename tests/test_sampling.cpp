// The CPU's token choice (kernels/cpu/sampling.cpp), which both `tpx run` and `tpx serve` draw
// sampled tokens from: every temperature the job file and the API accept, down to the smallest
// double, and rows that hold NaN.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace tpx::cpu

// What a served token's logprobs rest on: the log-softmax's normalizer without overflow at large
// logits, and the most likely tokens in order, equal logits by the lower index first.
TEST(Sampling, LogSumExpAndTheLargestInOrder) {
    const std::vector<float> big = {1000.0f, 1000.0f, -1000.0f};
    EXPECT_NEAR(tpx::cpu::log_sum_exp(big.data(), 3), 1000.0 + std::log(2.0), 1e-12);
    const std::vector<float> small = {0.5f, -1.25f, 2.0f};
    double sum = 0;
    for (float x : small) sum += std::exp((double)x);
    EXPECT_NEAR(tpx::cpu::log_sum_exp(small.data(), 3), std::log(sum), 1e-12);
    const std::vector<float> logits = {0.1f, 3.0f, -2.0f, 3.0f, 1.5f};
    EXPECT_EQ(tpx::cpu::largest(logits.data(), 5, 3), (std::vector<int64_t>{1, 3, 4}));
    EXPECT_EQ(tpx::cpu::largest(logits.data(), 5, 9), (std::vector<int64_t>{1, 3, 4, 0, 2}));  // at most n
    EXPECT_TRUE(tpx::cpu::largest(logits.data(), 5, 0).empty());
}

// Penalties as vLLM applies them: repetition on the prompt's and the output's ids (a positive
// logit divided, a negative one multiplied), then frequency times each output id's count and
// presence once; ids in neither stay.
TEST(Sampling, PenaltiesAsVllmAppliesThem) {
    std::vector<float> l = {2.0f, -1.0f, 3.0f, 0.5f, 1.0f};
    tpx::cpu::apply_penalties(l.data(), 5, {0.25, 0.5, 2.0}, /*prompt=*/{0, 1}, /*output=*/{2, 2, 1});
    EXPECT_FLOAT_EQ(l[0], 1.0f);                // prompt only: 2 / 2
    EXPECT_FLOAT_EQ(l[1], -2.0f - 0.5f - 0.25f);  // prompt and output once: -1 x 2, then the penalties
    EXPECT_FLOAT_EQ(l[2], 1.5f - 1.0f - 0.25f);   // output twice: 3 / 2, less 2 x 0.5 and 0.25
    EXPECT_FLOAT_EQ(l[3], 0.5f);
    EXPECT_FLOAT_EQ(l[4], 1.0f);
    EXPECT_FALSE(tpx::cpu::Penalties{}.any());
}
