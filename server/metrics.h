// The server's counters and histograms, rendered in Prometheus' text format for GET /metrics.
// Updated by HTTP threads (requests by status) and the scheduler (tokens, batch, latencies);
// every member is guarded by one mutex (a few updates per step, far below any contention).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace tpx {

class Histogram {
public:
    explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
    void observe(double v);
    // Prometheus lines for `name` (cumulative _bucket{le=...}, _sum, _count).
    std::string render(const std::string& name, const std::string& help) const;
    // The samples alone, each with `labels` (e.g. kind="decode") before le: one of several
    // series of a family whose header is written once.
    std::string samples(const std::string& name, const std::string& labels) const;

private:
    std::vector<double> bounds_;
    std::vector<uint64_t> counts_;  // counts_[i]: observations <= bounds_[i] and > bounds_[i-1]; last: the rest
    double sum_ = 0;
    uint64_t count_ = 0;
};

class ServeMetrics {
public:
    ServeMetrics();
    void count_response(int status);
    void add_prompt_tokens(int64_t n);
    void add_generated_tokens(int64_t n);
    void count_cancelled();
    void set_running(int64_t sequences);  // sequences holding a KV slot
    void observe_ttft(double seconds);
    void observe_tpot(double seconds);
    // One scheduler step's wall time, from building its batch to its tokens handed to the
    // calls; `mixed`: the batch held prompt tokens (a prefill chunk) beside the decoding ones.
    // `device_seconds`: the GPU's time for a greedy step (from after its inputs' upload to its ids'
    // download: Executor::last_device_ms); negative where there is none to give (the CPU backend,
    // pp > 1, a step holding a sampled request), and then not counted.
    void observe_step(bool mixed, double seconds, double device_seconds = -1);
    // The whole exposition; `queue_depth` is read from the queue at the time of the scrape.
    std::string render(int64_t queue_depth) const;

private:
    mutable std::mutex mutex_;
    std::map<int, uint64_t> responses_;  // by HTTP status
    uint64_t prompt_tokens_ = 0, generated_tokens_ = 0, cancelled_ = 0;
    int64_t running_ = 0;
    Histogram ttft_, tpot_, step_decode_, step_mixed_, device_decode_, device_mixed_;
};

}  // namespace tpx
