#include "worker/step_rows.h"

#include <sched.h>

#include <algorithm>
#include <vector>

namespace tpx {
namespace {

int usable_cores() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
    return std::max(1, CPU_COUNT(&set));
}

}  // namespace

StepRows::StepRows(int threads) : pool_(std::clamp(threads > 0 ? threads : usable_cores(), 1, kMaxThreads)) {}

void StepRows::run(int64_t rows, const std::function<void(int64_t, int)>& fn) {
    const int64_t parts = std::min<int64_t>(pool_.threads(), rows);
    if (parts <= 1) {
        for (int64_t row = 0; row < rows; ++row) fn(row, 0);
        return;
    }
    std::vector<std::function<void()>> tasks;
    for (int64_t part = 0; part < parts; ++part)
        tasks.emplace_back([&fn, rows, parts, part] {
            for (int64_t row = rows * part / parts; row < rows * (part + 1) / parts; ++row) fn(row, (int)part);
        });
    pool_.run(tasks);
}

}  // namespace tpx
