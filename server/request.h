// A request as the scheduler sees it (one prompt, its limits and sampling), and the channel its
// tokens go back on. HTTP threads make requests and wait on channels; the scheduler thread (rank
// 0's, the one that owns MPI) takes requests from the queue and pushes events. No MPI here.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "server/token_logprobs.h"

namespace tpx {

using ServeClock = std::chrono::steady_clock;

// What the scheduler tells the HTTP side about one prompt of a call.
struct ServeEvent {
    enum Kind { kToken, kFinished, kFailed };
    Kind kind = kToken;
    int index = 0;                // which prompt of the call
    int32_t token = 0;            // kToken, kFinished: the id just generated
    std::string text;             // kToken: text that became final with it; kFinished: the whole output text (a refit's: its JSON answer)
    std::string tail;             // kFinished: the text not yet sent in kToken events
    std::string finish_reason;    // kFinished: "stop" (an eos or stop id, a stop string), "length" or "abort" (a refit ended it)
    int32_t stop_id = -1;         // kFinished: the call's stop id that ended it (vLLM's stop_reason)
    std::string stop_string;      // kFinished: or its stop string
    std::vector<int32_t> output;  // kFinished: every generated id
    std::vector<TokenLogprobs> logprobs;  // where the call asks: kToken: its token's; kFinished: every generated id's
    std::string error;            // kFailed: why (names the rank)
    int status = 500;             // kFailed: the HTTP status it is answered with
    std::string code = "rank_failed";
};

// One HTTP call's events, from every prompt it holds (a completions call may give several).
class ResponseChannel {
public:
    void push(ServeEvent e) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            events_.push_back(std::move(e));
        }
        cv_.notify_all();
    }
    // The next event, waiting up to `timeout`; false when none came.
    bool pop(ServeEvent& out, std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return false;
        out = std::move(events_.front());
        events_.pop_front();
        return true;
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<ServeEvent> events_;
};

struct ServeRequest {
    int index = 0;                    // the prompt's place in its call
    std::vector<int32_t> prompt;
    int64_t max_tokens = 16;
    double temperature = 0;           // 0 = greedy
    int64_t top_k = 0;                // 0 = no cut
    double top_p = 1;
    uint64_t seed = 0;                // with the prompt, fixes the sampled tokens
    std::vector<std::string> stop;    // stop strings (need the tokenizer)
    bool skip_special_tokens = true;  // the text leaves the output's special tokens out
    std::vector<int32_t> stop_token_ids;  // end the sequence as an eos id does
    bool ignore_eos = false;              // the eos ids do not end it
    int logprobs = -1;                    // each token's logprob and this many most likely tokens' (-1: none)
    double presence_penalty = 0, frequency_penalty = 0, repetition_penalty = 1;  // cpu::Penalties's
    int64_t min_tokens = 0;  // no eos or stop id before this many tokens, no stop string in their text
    ServeClock::time_point arrived = ServeClock::now();
    std::atomic<bool> cancelled{false};  // the client went away: the scheduler drops it, freeing its slot
    std::shared_ptr<ResponseChannel> channel;
};

// Requests waiting for a KV slot, bounded: a full queue refuses (the HTTP side answers 429).
class RequestQueue {
public:
    explicit RequestQueue(size_t capacity) : capacity_(capacity) {}
    size_t capacity() const { return capacity_; }
    // All of `batch` or none of it.
    bool push(const std::vector<std::shared_ptr<ServeRequest>>& batch) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (closed_ || queue_.size() + batch.size() > capacity_) return false;
            queue_.insert(queue_.end(), batch.begin(), batch.end());
        }
        cv_.notify_all();
        return true;
    }
    // The oldest request, waiting up to `timeout` for one; null when none came.
    std::shared_ptr<ServeRequest> pop(std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (!cv_.wait_for(lock, timeout, [&] { return !queue_.empty() || closed_ || poked_; }) || queue_.empty()) {
            poked_ = false;
            return nullptr;
        }
        std::shared_ptr<ServeRequest> r = std::move(queue_.front());
        queue_.pop_front();
        return r;
    }
    size_t size() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return queue_.size();
    }
    // No more requests are taken; those waiting are returned (to be answered).
    std::deque<std::shared_ptr<ServeRequest>> close() {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_ = true;
        cv_.notify_all();
        return std::move(queue_);
    }
    // Wakes a waiting pop (a signal arrived).
    void wake() { cv_.notify_all(); }
    // Ends the wait of a pop now (or the next one) with null: the scheduler has other work (a refit).
    void poke() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            poked_ = true;
        }
        cv_.notify_all();
    }

private:
    const size_t capacity_;
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<ServeRequest>> queue_;
    bool closed_ = false;
    bool poked_ = false;
};

// A refit asked over HTTP (POST /v1/admin/refit): new weights from `path`, read in place by every
// rank at a step boundary. Its answer comes back on `channel`: kFinished with the JSON body in
// `text`, or kFailed with the status (400: refused, the old weights still serve).
struct RefitCall {
    std::string path;
    bool abort = false;  // end the sequences in flight (finish_reason "abort") instead of finishing them
    ServeClock::time_point arrived = ServeClock::now();
    std::shared_ptr<ResponseChannel> channel;
};

// At most one refit waits or runs at a time; the HTTP side files it, the scheduler takes it.
class RefitDesk {
public:
    // False when another refit is pending.
    bool file(std::shared_ptr<RefitCall> call) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (pending_) return false;
        pending_ = std::move(call);
        return true;
    }
    std::shared_ptr<RefitCall> pending() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return pending_;
    }
    // The pending refit was answered: the next may be filed.
    void close() {
        std::lock_guard<std::mutex> lock(mutex_);
        pending_.reset();
    }

private:
    mutable std::mutex mutex_;
    std::shared_ptr<RefitCall> pending_;
};

}  // namespace tpx
