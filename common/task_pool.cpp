// The calling thread works too, so a pool of one thread is just a loop.
#include "common/task_pool.h"

namespace tpx {

TaskPool::TaskPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

TaskPool::~TaskPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
}

// Takes tasks of the current batch until none is left.
void TaskPool::drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (tasks_ && next_ < tasks_->size()) {
        const std::function<void()>& task = (*tasks_)[next_++];
        if (error_) {  // a task failed: the rest of the batch is skipped
            if (++finished_ == tasks_->size()) done_.notify_all();
            continue;
        }
        lock.unlock();
        std::exception_ptr error;
        try {
            task();
        } catch (...) {
            error = std::current_exception();
        }
        lock.lock();
        if (error && !error_) error_ = error;
        if (++finished_ == tasks_->size()) done_.notify_all();
    }
}

void TaskPool::work() {
    unsigned long seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
        }
        drain();
    }
}

void TaskPool::run(const std::vector<std::function<void()>>& tasks) {
    if (tasks.empty()) return;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        tasks_ = &tasks;
        next_ = finished_ = 0;
        error_ = nullptr;
        ++generation_;
    }
    wake_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return finished_ == tasks.size(); });
    tasks_ = nullptr;
    if (error_) std::rethrow_exception(error_);
}

}  // namespace tpx
