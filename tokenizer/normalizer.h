// Normalizers of tokenizer.json (Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip and
// Sequence, flattened into one list of steps). They run on each piece of text that is not an
// added token, in order, as HF's NormalizedString transforms do.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/regex.h"

namespace tpx::tok {

struct NormalizerStep {
    enum class Kind { Prepend, ReplaceString, ReplaceRegex, NFC, NFD, NFKC, NFKD, Lowercase, Strip };
    Kind kind;
    std::string text;     // Prepend: the prefix; Replace: the pattern string
    std::string content;  // Replace: the replacement
    std::shared_ptr<Regex> regex;
    bool left = false, right = false;  // Strip
};

class Normalizer {
public:
    // Reads the "normalizer" value (null = none). Unknown types throw tpx::Error (exit 2)
    // naming `file` and the type.
    static Normalizer from_json(const nlohmann::json& j, const std::string& file);
    bool empty() const { return steps_.empty(); }
    void normalize(std::string& s) const;

private:
    void add(const nlohmann::json& j, const std::string& file);
    std::vector<NormalizerStep> steps_;
};

// Unicode normalization through utf8proc; `form` is one of NFC, NFD, NFKC, NFKD.
std::string unicode_normalize(const std::string& s, NormalizerStep::Kind form);
// Rust's per-character to_lowercase (full mappings, no context: U+0130 becomes "i\u0307").
std::string lowercase(const std::string& s);
// Replaces every occurrence of `from` (not empty) by `to`.
void replace_all(std::string& s, const std::string& from, const std::string& to);

}  // namespace tpx::tok
