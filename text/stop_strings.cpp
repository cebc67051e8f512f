// Stop strings over decoded text.
#include "text/stop_strings.h"

#include <algorithm>

namespace tpx {

StopStrings::Match StopStrings::first_match(const std::string& text, size_t ends_after) const {
    Match m;
    for (const std::string& s : stops_)
        if (size_t at = text.find(s, ends_after >= s.size() ? ends_after - s.size() + 1 : 0); at < m.at) m = {at, &s};
    return m;
}

bool StopStrings::reached(const Tokenizer& tokenizer, const std::vector<int32_t>& output, bool skip_special_tokens) const {
    if (stops_.empty() || output.empty()) return false;
    // A new match must end in the last token's text and start at most longest-1 bytes before
    // it. Each token that is not special yields at least one byte (a kept special one its whole
    // text), so the last longest + 4 of them (a UTF-8 character may be split over up to four
    // byte tokens) reach back far enough.
    // A tail decodes differently from the whole text only at its first characters (a space a
    // decoder strips, a split character), which lie before any match ending in the last token.
    size_t longest = 0;
    for (const std::string& s : stops_) longest = std::max(longest, s.size());
    size_t start = output.size(), counted = 0;
    while (start > 0 && counted < longest + 4) {
        const int32_t id = output[--start];
        if (!skip_special_tokens || !tokenizer.is_special(id)) ++counted;
    }
    std::vector<int32_t> tail(output.begin() + (ptrdiff_t)start, output.end());
    return find_in(without_unfinished_char(tokenizer.decode(tail, skip_special_tokens))) != std::string::npos;
}

size_t finished_length(const std::string& text) {
    static const std::string kReplacement = "\xEF\xBF\xBD";
    size_t end = text.size();
    while (end >= kReplacement.size() && text.compare(end - kReplacement.size(), kReplacement.size(), kReplacement) == 0)
        end -= kReplacement.size();
    return end;
}

size_t final_prefix(const std::string& text, const std::vector<std::string>& stops) {
    size_t end = finished_length(text);
    size_t hold = 0;
    for (const std::string& s : stops) hold = std::max(hold, s.size() - 1);
    end = end > hold ? end - hold : 0;
    while (end > 0 && end < text.size() && ((unsigned char)text[end] & 0xC0) == 0x80) --end;
    return end;
}

}  // namespace tpx
