// PCRE2 behind tpx::tok::Regex. One match-data block per thread is reused: matching a 10 MB
// text calls pcre2_match millions of times and must not allocate each time.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <string>

#include "common/error.h"

namespace tpx::tok {

namespace {

// Oniguruma's \s under Unicode: the White_Space property, without PCRE2's extra U+180E.
const char* kSpaceClass = "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

}  // namespace

std::string translate_pattern(const std::string& p) {
    std::string out;
    bool in_class = false;
    for (size_t i = 0; i < p.size(); ++i) {
        char c = p[i];
        if (c == '\\' && i + 1 < p.size()) {
            char n = p[i + 1];
            if (n == 's') {
                out += in_class ? std::string(kSpaceClass) : "[" + std::string(kSpaceClass) + "]";
            } else if (n == 'S' && !in_class) {
                out += "[^" + std::string(kSpaceClass) + "]";
            } else {
                out += c;
                out += n;
            }
            ++i;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            out += c;
            // A ']' right after '[' or '[^' is a literal, not the end of the class.
            if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
            if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
            continue;
        }
        if (c == ']' && in_class) in_class = false;
        out += c;
    }
    return out;
}

struct Regex::Impl {
    pcre2_code* code = nullptr;
    bool jit = false;
    std::string where, pattern;  // for a failed match's message
};

Regex::Regex(const std::string& pattern, const std::string& where) : impl_(std::make_unique<Impl>()) {
    std::string translated = translate_pattern(pattern);
    int err = 0;
    PCRE2_SIZE offset = 0;
    impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
    if (!impl_->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        throw Error(where + ": bad regex '" + pattern + "' at offset " + std::to_string(offset) + ": " +
                        reinterpret_cast<const char*>(msg), kExitBadInput);
    }
    impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
    impl_->where = where, impl_->pattern = pattern;
}

Regex::~Regex() {
    if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

namespace {

// A thread's match state. A repeated group on a long text ("(?:ab)+" over 100 KB) needs more
// than the JIT's default 32 KiB stack: the stack may grow to 64 MiB, and past that the match is
// run again by the interpreter, whose heap may grow to 1 GiB (Oniguruma, which HF uses, has no
// such limit).
struct MatchData {
    pcre2_match_data* data = pcre2_match_data_create(16, nullptr);
    pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr);
    pcre2_match_context* context = pcre2_match_context_create(nullptr);
    MatchData() {
        pcre2_jit_stack_assign(context, nullptr, stack);
        pcre2_set_heap_limit(context, 1024 * 1024);  // KiB
    }
    ~MatchData() {
        pcre2_match_context_free(context);
        pcre2_jit_stack_free(stack);
        pcre2_match_data_free(data);
    }
};

}  // namespace

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
    thread_local MatchData md;
    auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0, last_end = std::string_view::npos;
    while (pos <= text.size()) {
        int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, text.size(), pos, 0, md.data, md.context) : 0;
        if (!impl_->jit || rc == PCRE2_ERROR_JIT_STACKLIMIT)  // no JIT, or its stack outgrown: the interpreter
            rc = pcre2_match(impl_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.data, md.context);
        if (rc == PCRE2_ERROR_NOMATCH) return;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            throw Error(impl_->where + ": the regex '" + impl_->pattern + "' cannot be matched on a text of " + std::to_string(text.size()) +
                            " bytes: " + reinterpret_cast<const char*>(msg),
                        kExitBadInput);
        }
        PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
        size_t start = ov[0], end = ov[1];
        // An empty match where the last match ended is skipped, as Oniguruma's find_iter (HF's)
        // skips it: "a*" over "aab" matches "aa", then the empty match at the end, not at 2.
        const bool skipped = end == start && end == last_end;
        if (!skipped) out.emplace_back(start, end), last_end = end;
        if (end > start) {
            pos = end;
        } else {
            if (end >= text.size()) return;
            pos = end + 1;
            while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
        }
    }
}

}  // namespace tpx::tok
