// A compiled PCRE2 pattern (UTF + UCP, JIT where available) that reports every non-overlapping
// match, as the Oniguruma regexes of HF's tokenizers do. Patterns are translated so that \s, and
// \S outside a [class], mean Unicode White_Space as in Oniguruma (PCRE2's \s also takes U+180E).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tpx::tok {

class Regex {
public:
    // Throws tpx::Error (exit 2) with `where` and PCRE2's message when the pattern is bad.
    Regex(const std::string& pattern, const std::string& where);
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    // [start, end) byte ranges of the matches in `text` (valid UTF-8), left to right; an empty
    // match advances one character, and one where the last match ended is skipped, as
    // Oniguruma's find_iter does. Throws tpx::Error (exit 2) naming `where` when the match
    // runs out of its stack or heap.
    void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// The pattern with \s / \S spelled out as Oniguruma's Unicode White_Space (exposed for tests).
std::string translate_pattern(const std::string& pattern);

}  // namespace tpx::tok
