// Rank 0's work on each row of a step's logits (a token's choice: penalties, the draw, logprobs),
// spread over a pool of threads: a row's work reads the logits and changes only its own
// sequence's state and its part's scratch, so the tokens are the same however the rows are
// spread. (What a draw costs rank 0: docs/PERF.md.)
#pragma once

#include <cstdint>
#include <functional>

#include "common/task_pool.h"

namespace tpx {

class StepRows {
public:
    // threads: the pool's, the calling thread counted; 0: the cores this process may run on, at
    // most kMaxThreads.
    static constexpr int kMaxThreads = 16;
    explicit StepRows(int threads = 0);

    int parts() const { return pool_.threads(); }
    // fn(row, part) for each row in [0, rows), in parts of consecutive rows (part < parts()), each
    // part's rows in order on one thread. An exception a row throws reaches the caller once the
    // parts already running end (TaskPool::run); a row whose failure is an answer (a call's 500)
    // returns it as its result instead.
    void run(int64_t rows, const std::function<void(int64_t row, int part)>& fn);

private:
    TaskPool pool_;
};

}  // namespace tpx
