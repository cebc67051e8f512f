// Rate-limited progress lines on stderr.
#include "worker/progress.h"

#include <cstdio>

#include "common/error.h"

namespace tpx {

ProgressMode parse_progress_mode(const std::string& text) {
    if (text == "quiet") return ProgressMode::kQuiet;
    if (text == "lines") return ProgressMode::kLines;
    if (text == "live") return ProgressMode::kLive;
    throw JobError("--progress takes quiet, lines or live, not '" + text + "'");
}

void Progress::update(const std::string& text, bool force) {
    if (mode_ == ProgressMode::kQuiet) return;
    auto now = Clock::now();
    double since = std::chrono::duration<double>(now - last_).count();
    double interval = mode_ == ProgressMode::kLive ? 0.2 : interval_s_;
    if (shown_ && !force && since < interval) return;
    last_ = now;
    shown_ = true;
    if (mode_ == ProgressMode::kLive) {
        // Pad over what the last, longer line left on the terminal.
        std::string line = text;
        if (line.size() < last_width_) line.append(last_width_ - line.size(), ' ');
        last_width_ = text.size();
        std::fprintf(stderr, "\r%s", line.c_str());
        open_line_ = true;
    } else {
        std::fprintf(stderr, "%s\n", text.c_str());
    }
    std::fflush(stderr);
}

void Progress::finish() {
    if (open_line_) {
        std::fputc('\n', stderr);
        std::fflush(stderr);
        open_line_ = false;
        last_width_ = 0;
    }
}

std::string format_eta(double seconds) {
    if (!(seconds >= 0) || seconds > 1e7) return "?";
    char buf[32];
    long s = (long)(seconds + 0.5);
    if (s >= 3600) std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else if (s >= 60) std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
    else std::snprintf(buf, sizeof(buf), "%lds", s);
    return buf;
}

}  // namespace tpx
