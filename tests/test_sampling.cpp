// The CPU's token choice (kernels/cpu/sampling.cpp), which both `tpx run` and `tpx serve` draw
// sampled tokens from: every temperature the job file and the API accept, down to the smallest
// double, and rows that hold NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/ops.h"

namespace tpx::cpu {
namespace {

std::vector<float> spread_logits() {
    std::vector<float> logits(64);
    for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(0.7f * (float)i) * 30.0f;
    return logits;
}

// Over a temperature that small the logits overflow; the draw must still be the argmax (it was
// the least likely token kept: inf - inf made every weight NaN).
TEST(Sampling, ATemperatureTooSmallToDivideByPicksTheArgmax) {
    const std::vector<float> logits = spread_logits();
    const int64_t best = argmax(logits.data(), (int64_t)logits.size());
    for (double t : {5e-324, 1e-320, 1e-310, 1e-300, 1e-30, 1e-6})
        for (const SamplingParams& p : {SamplingParams{t, 0, 1}, SamplingParams{t, 5, 0.9}})
            for (uint64_t seed = 0; seed < 8; ++seed) {
                std::mt19937_64 rng(seed);
                EXPECT_EQ(sample(logits.data(), (int64_t)logits.size(), p, rng), best) << "temperature " << t << ", seed " << seed;
            }
}

// At an ordinary temperature the draws follow the softmax: the top token of two whose logits
// differ by ln 3 comes about three times as often.
TEST(Sampling, DrawsFollowTheSoftmaxAtTheTemperature) {
    const std::vector<float> logits = {0.0f, std::log(3.0f) * 0.5f, -40.0f};
    std::mt19937_64 rng(7);
    int first = 0, second = 0;
    for (int i = 0; i < 40000; ++i) {
        const int64_t t = sample(logits.data(), 3, {0.5, 0, 1}, rng);
        ASSERT_TRUE(t == 0 || t == 1) << t;
        (t == 1 ? first : second)++;
    }
    EXPECT_NEAR((double)first / second, 3.0, 0.15);
}

TEST(Sampling, ARowHoldingNaNHasNoToken) {
    std::vector<float> logits = spread_logits();
    logits[9] = std::nanf("");
    std::mt19937_64 rng(1);
    EXPECT_EQ(sample(logits.data(), (int64_t)logits.size(), {0.8, 0, 1}, rng), -1);
    EXPECT_EQ(argmax(logits.data(), (int64_t)logits.size()), -1);
}

}  // namespace
}  // namespace tpx::cpu
