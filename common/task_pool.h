// A fixed pool of threads (the loader's reads and dequantization, rank 0's choice of a step's
// tokens): run() hands out a batch of tasks and returns when all are done, rethrowing the first
// exception a task threw. Tasks already running when one fails still finish (none is left
// writing into a buffer the caller frees); tasks not yet started are skipped.
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tpx {

class TaskPool {
public:
    explicit TaskPool(int threads);
    ~TaskPool();
    TaskPool(const TaskPool&) = delete;
    TaskPool& operator=(const TaskPool&) = delete;

    int threads() const { return (int)workers_.size() + 1; }
    void run(const std::vector<std::function<void()>>& tasks);

private:
    void work();
    void drain();

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::vector<std::function<void()>>* tasks_ = nullptr;
    size_t next_ = 0, finished_ = 0;
    unsigned long generation_ = 0;
    bool stop_ = false;
    std::exception_ptr error_;
};

}  // namespace tpx
