// StepRows (worker/step_rows.h): rank 0's spread of a step's rows over threads visits each row
// once, in parts of consecutive rows, each part in order on one thread, whatever the counts.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "worker/step_rows.h"

namespace tpx {
namespace {

TEST(StepRows, EachRowOnceInOrderedPartsOfOneThreadEach) {
    for (int threads : {1, 3, 4, 16})
        for (int64_t rows : {0, 1, 2, 3, 7, 64}) {
            StepRows spread(threads);
            ASSERT_EQ(spread.parts(), threads);
            std::mutex m;
            std::vector<int> seen(rows, 0), part_of(rows, -1);
            std::vector<std::vector<int64_t>> order(threads);
            std::vector<std::set<std::thread::id>> ran_on(threads);
            spread.run(rows, [&](int64_t row, int part) {
                std::lock_guard<std::mutex> lock(m);
                ASSERT_TRUE(part >= 0 && part < threads) << part;
                ++seen[row], part_of[row] = part;
                order[part].push_back(row);
                ran_on[part].insert(std::this_thread::get_id());
            });
            for (int64_t row = 0; row < rows; ++row) EXPECT_EQ(seen[row], 1) << "row " << row << " of " << rows << ", threads " << threads;
            for (int part = 0; part < threads; ++part) {
                EXPECT_LE(ran_on[part].size(), 1u) << "part " << part;
                for (size_t i = 1; i < order[part].size(); ++i) EXPECT_EQ(order[part][i], order[part][i - 1] + 1) << "part " << part;
            }
            for (int64_t row = 1; row < rows; ++row) EXPECT_GE(part_of[row], part_of[row - 1]) << "parts of consecutive rows";
        }
}

// The cores this rank may use, at most 16, where no count is given; a row's exception reaches
// the caller, and the pool goes on.
TEST(StepRows, ThreadsOfTheRankAndFailuresPassedOn) {
    const StepRows own;
    EXPECT_GE(own.parts(), 1);
    EXPECT_LE(own.parts(), StepRows::kMaxThreads);
    StepRows spread(4);
    EXPECT_THROW(spread.run(8, [](int64_t row, int) {
        if (row == 5) throw std::runtime_error("row 5");
    }),
                 std::runtime_error);
    std::atomic<int64_t> after{0};
    spread.run(3, [&](int64_t, int) { ++after; });
    EXPECT_EQ(after.load(), 3) << "the pool works after a failure";
}

}  // namespace
}  // namespace tpx
