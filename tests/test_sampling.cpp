// The host's token choice besides the draw (kernels/cpu/sampling.cpp; the draw is test_draw's):
// the penalties, and what a served token's logprobs need.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
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
