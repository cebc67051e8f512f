// StepArena, the offsets of a captured decode step's activations: checked against offsets worked
// out by hand, and against a brute-force overlap check over a long random sequence.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "common/error.h"
#include "worker/step_arena.h"

namespace tpx {
namespace {

constexpr size_t G = StepArena::kGranule;

TEST(StepArena, FirstFitMergesAndLowersTheTop) {
    StepArena a;
    EXPECT_EQ(a.take(0), 0u);          // one granule even for nothing
    EXPECT_EQ(a.take(G + 1), G);       // two granules
    EXPECT_EQ(a.take(10), 3 * G);
    EXPECT_EQ(a.peak(), 4 * G);
    a.give(0);
    EXPECT_EQ(a.take(G), 0u);          // the hole is reused
    a.give(0);
    a.give(G);                         // merges with [0, G): a hole of three granules
    EXPECT_EQ(a.take(2 * G), 0u);      // first fit, the rest stays free
    EXPECT_EQ(a.take(G), 2 * G);
    a.give(3 * G);                     // the top comes down
    EXPECT_EQ(a.take(5 * G), 3 * G);   // and grows again from there
    EXPECT_EQ(a.peak(), 8 * G);
    a.give(0), a.give(2 * G), a.give(3 * G);
    EXPECT_TRUE(a.idle());
    EXPECT_EQ(a.take(8 * G), 0u);      // everything merged back into one range
    EXPECT_THROW(a.give(G), Error);    // not an offset that was taken
}

TEST(StepArena, RandomSequencesNeverOverlapAndRepeatExactly) {
    auto run = [](std::vector<size_t>* offsets) {
        std::mt19937 rng(7);
        StepArena a;
        std::map<size_t, size_t> live;  // offset -> bytes
        for (int i = 0; i < 4000; ++i) {
            if (!live.empty() && rng() % 3 == 0) {
                auto it = live.begin();
                std::advance(it, rng() % live.size());
                a.give(it->first);
                live.erase(it);
                continue;
            }
            size_t bytes = 1 + rng() % (8 * G);
            size_t at = a.take(bytes);
            offsets->push_back(at);
            EXPECT_EQ(at % G, 0u);
            EXPECT_LE(at + bytes, a.peak());
            auto next = live.lower_bound(at);
            if (next != live.end()) {
                EXPECT_LE(at + bytes, next->first) << "overlaps the range above";
            }
            if (next != live.begin()) {
                auto prev = std::prev(next);
                EXPECT_LE(prev->first + prev->second, at) << "overlaps the range below";
            }
            live[at] = bytes;
        }
        return a.peak();
    };
    std::vector<size_t> first, second;
    size_t peak = run(&first);
    EXPECT_EQ(run(&second), peak);
    EXPECT_EQ(first, second) << "the same sequence must give the same offsets (an eager step sizes the captured one)";
}

}  // namespace
}  // namespace tpx
