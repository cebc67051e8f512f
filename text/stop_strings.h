// [run] stop strings: a sequence ends at the first place its decoded output holds any of them,
// and its text is cut before it (as OpenAI's and vLLM's `stop`). Checked on rank 0 after each
// token, over the output's tail only, so that a long output does not cost a full decode a step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace tpx {

class StopStrings {
public:
    explicit StopStrings(std::vector<std::string> stops = {}) : stops_(std::move(stops)) {}
    bool empty() const { return stops_.empty(); }

    // Where the first stop string begins in `text`, or std::string::npos.
    size_t find_in(const std::string& text) const { return first_match(text).at; }
    // That place and the stop string there (the first listed where two begin at it; none: npos
    // and null).
    struct Match {
        size_t at = std::string::npos;
        const std::string* stop = nullptr;
    };
    // `ends_after`: only matches that end past that many bytes of `text` (vLLM's min_tokens: the
    // text of the first min_tokens tokens holds no match).
    Match first_match(const std::string& text, size_t ends_after = 0) const;

    // Whether `output` (all ids generated so far, the last one just added) now holds a stop
    // string in its decoded text (skip_special_tokens: the text without the special tokens) as
    // without_unfinished_char leaves it: a character whose bytes have not all come is not
    // searched (as vLLM's). Only the text of the last tokens that could reach into a new match
    // is decoded.
    bool reached(const Tokenizer& tokenizer, const std::vector<int32_t>& output, bool skip_special_tokens = true) const;

private:
    std::vector<std::string> stops_;
};

// The length of `text` without the U+FFFD characters at its end: a decoded output whose last
// character's bytes have not all come ends in one (the next token may complete it).
size_t finished_length(const std::string& text);
// `text` cut there.
inline std::string without_unfinished_char(std::string text) {
    text.resize(finished_length(text));
    return text;
}

// The longest prefix of `text` that is final (what a stream may send): no trailing incomplete
// UTF-8 character (decoded as U+FFFD) and, with stop strings, not the last bytes that could begin one.
size_t final_prefix(const std::string& text, const std::vector<std::string>& stops);

}  // namespace tpx
