// Progress of long work on rank 0 (loading, prefill, decoding), on stderr: a line rewritten in
// place when tpx run's terminal is a tty ("live"), a line every few seconds otherwise ("lines"),
// nothing with --quiet. Printing never blocks the work for long: updates are rate-limited.
#pragma once

#include <chrono>
#include <string>

namespace tpx {

enum class ProgressMode { kQuiet, kLines, kLive };

// "quiet" | "lines" | "live"; throws JobError for anything else.
ProgressMode parse_progress_mode(const std::string& text);

class Progress {
public:
    // In "lines" mode the first line comes only after one interval: a short run prints none.
    explicit Progress(ProgressMode mode = ProgressMode::kQuiet, double line_interval_s = 5.0)
        : mode_(mode), interval_s_(line_interval_s), last_(Clock::now()), shown_(mode == ProgressMode::kLines) {}
    ~Progress() { finish(); }

    // The current state; shown now if `force` or when the mode's interval has passed.
    void update(const std::string& text, bool force = false);
    // Ends a live line (a newline after it), so that what follows starts on its own line.
    void finish();
    bool quiet() const { return mode_ == ProgressMode::kQuiet; }

private:
    using Clock = std::chrono::steady_clock;
    ProgressMode mode_;
    double interval_s_;
    Clock::time_point last_;
    bool shown_;
    bool open_line_ = false;
    size_t last_width_ = 0;
};

// A duration as "42s", "3m07s" or "1h05m" ("?" when unknown).
std::string format_eta(double seconds);

}  // namespace tpx
