// Prometheus text format 0.0.4: "# HELP", "# TYPE", then samples; histogram buckets cumulative.
#include "server/metrics.h"

#include <cstdio>
#include <sstream>

namespace tpx {
namespace {

std::string number(double v) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.9g", v);
    return buf;
}

void header(std::ostringstream& os, const std::string& name, const char* type, const std::string& help) {
    os << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
}

// Steps: 0.5 ms apart up to 12 ms (a large model's decode step), coarser beyond.
std::vector<double> step_bounds() {
    std::vector<double> b;
    for (int i = 1; i <= 24; ++i) b.push_back(0.0005 * i);
    for (double v : {0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5}) b.push_back(v);
    return b;
}

}  // namespace

void Histogram::observe(double v) {
    size_t i = 0;
    while (i < bounds_.size() && v > bounds_[i]) ++i;
    ++counts_[i];
    sum_ += v;
    ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
    std::ostringstream os;
    header(os, name, "histogram", help);
    return os.str() + samples(name, "");
}

std::string Histogram::samples(const std::string& name, const std::string& labels) const {
    std::ostringstream os;
    const std::string before_le = labels.empty() ? "" : labels + ",";
    const std::string only = labels.empty() ? "" : "{" + labels + "}";
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds_.size(); ++i) {
        cumulative += counts_[i];
        os << name << "_bucket{" << before_le << "le=\"" << number(bounds_[i]) << "\"} " << cumulative << "\n";
    }
    os << name << "_bucket{" << before_le << "le=\"+Inf\"} " << count_ << "\n";
    os << name << "_sum" << only << " " << number(sum_) << "\n" << name << "_count" << only << " " << count_ << "\n";
    return os.str();
}

ServeMetrics::ServeMetrics()
    : ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      tpot_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}),
      step_decode_(step_bounds()),
      step_mixed_(step_bounds()),
      device_decode_(step_bounds()),
      device_mixed_(step_bounds()) {}

void ServeMetrics::count_response(int status) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++responses_[status];
}
void ServeMetrics::add_prompt_tokens(int64_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    prompt_tokens_ += (uint64_t)n;
}
void ServeMetrics::add_generated_tokens(int64_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    generated_tokens_ += (uint64_t)n;
}
void ServeMetrics::count_cancelled() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++cancelled_;
}
void ServeMetrics::set_running(int64_t sequences) {
    std::lock_guard<std::mutex> lock(mutex_);
    running_ = sequences;
}
void ServeMetrics::observe_ttft(double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    ttft_.observe(seconds);
}
void ServeMetrics::observe_tpot(double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    tpot_.observe(seconds);
}
void ServeMetrics::observe_step(bool mixed, double seconds, double device_seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    (mixed ? step_mixed_ : step_decode_).observe(seconds);
    if (device_seconds >= 0) (mixed ? device_mixed_ : device_decode_).observe(device_seconds);
}

std::string ServeMetrics::render(int64_t queue_depth) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::ostringstream os;
    header(os, "tpx_requests_total", "counter", "HTTP responses by status code");
    for (auto& [status, n] : responses_) os << "tpx_requests_total{status=\"" << status << "\"} " << n << "\n";
    header(os, "tpx_requests_cancelled_total", "counter", "requests whose client went away before they finished");
    os << "tpx_requests_cancelled_total " << cancelled_ << "\n";
    header(os, "tpx_prompt_tokens_total", "counter", "prompt tokens prefilled");
    os << "tpx_prompt_tokens_total " << prompt_tokens_ << "\n";
    header(os, "tpx_generation_tokens_total", "counter", "tokens generated");
    os << "tpx_generation_tokens_total " << generated_tokens_ << "\n";
    header(os, "tpx_queue_depth", "gauge", "requests waiting for a KV slot");
    os << "tpx_queue_depth " << queue_depth << "\n";
    header(os, "tpx_running_sequences", "gauge", "sequences in the running batch (each holds a KV slot)");
    os << "tpx_running_sequences " << running_ << "\n";
    os << ttft_.render("tpx_time_to_first_token_seconds", "from a request's arrival to its first generated token");
    os << tpot_.render("tpx_time_per_output_token_seconds", "between consecutive generated tokens of a request");
    header(os, "tpx_step_seconds", "histogram", "scheduler steps' wall time, by kind: decode only, or mixed with prompt tokens");
    os << step_decode_.samples("tpx_step_seconds", "kind=\"decode\"") << step_mixed_.samples("tpx_step_seconds", "kind=\"mixed\"");
    header(os, "tpx_step_device_seconds", "histogram",
           "greedy steps' GPU time (after the inputs' upload to the ids' download), by kind; none on the CPU backend, "
           "at pp > 1, or for steps holding a sampled request");
    os << device_decode_.samples("tpx_step_device_seconds", "kind=\"decode\"") << device_mixed_.samples("tpx_step_device_seconds", "kind=\"mixed\"");
    return os.str();
}

}  // namespace tpx
