// The pre-tokenizer steps and HF's five ways of turning matches into pieces.
// Every step keeps the pieces' order and drops empty pieces, as PreTokenizedString::split does.
#include "tokenizer/pre_tokenizer.h"

#include <utf8proc.h>

#include "common/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/utf8.h"

namespace tpx::tok {

namespace {

// GPT-2's pattern, which ByteLevel uses when use_regex is true.
const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

std::string quote_regex(const std::string& s) {
    std::string out;
    for (char c : s) {
        unsigned char u = static_cast<unsigned char>(c);
        if (u < 0x80 && !std::isalnum(u)) out += '\\';
        out += c;
    }
    return out;
}

SplitBehavior parse_behavior(const std::string& s, const std::string& where) {
    if (s == "Removed") return SplitBehavior::Removed;
    if (s == "Isolated") return SplitBehavior::Isolated;
    if (s == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
    if (s == "MergedWithNext") return SplitBehavior::MergedWithNext;
    if (s == "Contiguous") return SplitBehavior::Contiguous;
    throw Error(where + ": unknown behavior \"" + s + "\" (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)",
                kExitBadInput);
}

PrependScheme parse_scheme(const nlohmann::json& j, const std::string& where) {
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
        std::string s = j["prepend_scheme"];
        if (s == "first") return PrependScheme::First;
        if (s == "always") return PrependScheme::Always;
        if (s == "never") return PrependScheme::Never;
        throw Error(where + ": unknown prepend_scheme \"" + s + "\" (first, always, never)", kExitBadInput);
    }
    // Files written before prepend_scheme existed say add_prefix_space instead.
    return j.value("add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
}

using Parts = std::vector<std::pair<std::pair<size_t, size_t>, bool>>;

// Alternating non-match / match ranges covering `text`, as HF's find_matches returns them.
void regex_parts(const Regex& re, const std::string& text, Parts& parts, std::vector<std::pair<size_t, size_t>>& hits) {
    hits.clear();
    re.find_all(text, hits);
    parts.clear();
    size_t prev = 0;
    for (auto [a, b] : hits) {
        if (prev != a) parts.push_back({{prev, a}, false});
        parts.push_back({{a, b}, true});
        prev = b;
    }
    if (prev != text.size()) parts.push_back({{prev, text.size()}, false});
}

// Every character for which `pred` holds is a match of its own (HF's split on a char predicate).
template <class Pred>
void char_parts(const std::string& text, Pred pred, Parts& parts) {
    parts.clear();
    size_t prev = 0;
    for (size_t i = 0; i < text.size();) {
        size_t start = i;
        if (pred(next_code_point(text, i))) {
            if (prev != start) parts.push_back({{prev, start}, false});
            parts.push_back({{start, i}, true});
            prev = i;
        }
    }
    if (prev != text.size()) parts.push_back({{prev, text.size()}, false});
}

void emit(const Piece& parent, const std::vector<std::pair<size_t, size_t>>& ranges, std::vector<Piece>& out) {
    for (auto [a, b] : ranges) {
        if (a == b) continue;
        out.push_back(Piece{parent.text.substr(a, b - a), parent.at_origin && a == 0});
    }
}

}  // namespace

std::vector<std::pair<size_t, size_t>> split_ranges(const Parts& parts, SplitBehavior behavior) {
    std::vector<std::pair<size_t, size_t>> out;
    bool previous_match = false;
    switch (behavior) {
    case SplitBehavior::Isolated:
        for (const auto& p : parts) out.push_back(p.first);
        break;
    case SplitBehavior::Removed:
        for (const auto& p : parts)
            if (!p.second) out.push_back(p.first);
        break;
    case SplitBehavior::MergedWithPrevious:
        for (const auto& [r, is_match] : parts) {
            if (is_match && !previous_match && !out.empty()) out.back().second = r.second;
            else out.push_back(r);
            previous_match = is_match;
        }
        break;
    case SplitBehavior::MergedWithNext:
        for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
            const auto& [r, is_match] = *it;
            if (is_match && !previous_match && !out.empty()) out.back().first = r.first;
            else out.push_back(r);
            previous_match = is_match;
        }
        std::reverse(out.begin(), out.end());
        break;
    case SplitBehavior::Contiguous:
        for (const auto& [r, is_match] : parts) {
            if (is_match == previous_match && !out.empty()) out.back().second = r.second;
            else out.push_back(r);
            previous_match = is_match;
        }
        break;
    }
    return out;
}

PreTokenizer PreTokenizer::from_json(const nlohmann::json& j, const std::string& file) {
    PreTokenizer p;
    if (!j.is_null()) p.add(j, file);
    return p;
}

PreTokenizer PreTokenizer::metaspace(const std::string& replacement, PrependScheme scheme, bool split) {
    PreTokenizer p;
    PreTokenizerStep step{};
    step.kind = PreTokenizerStep::Kind::Metaspace;
    step.replacement = replacement;
    step.prepend = scheme;
    step.split = split;
    p.steps_.push_back(std::move(step));
    return p;
}

void PreTokenizer::add(const nlohmann::json& j, const std::string& file) {
    std::string where = file + ": pre_tokenizer";
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
        throw Error(where + " must be an object with a \"type\", got " + j.dump().substr(0, 200), kExitBadInput);
    std::string type = j["type"];
    using K = PreTokenizerStep::Kind;
    PreTokenizerStep step{};
    if (type == "Sequence") {
        if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
            throw Error(where + " Sequence has no \"pretokenizers\" list", kExitBadInput);
        for (const auto& child : j["pretokenizers"]) add(child, file);
        return;
    } else if (type == "Split") {
        step.kind = K::Split;
        const nlohmann::json& pattern = j.value("pattern", nlohmann::json());
        if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
            step.regex = std::make_shared<Regex>(quote_regex(pattern["String"]), where + " Split");
        } else if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
            step.regex = std::make_shared<Regex>(pattern["Regex"].get<std::string>(), where + " Split");
        } else {
            throw Error(where + " Split: \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}", kExitBadInput);
        }
        step.behavior = parse_behavior(j.value("behavior", "Isolated"), where + " Split");
        step.invert = j.value("invert", false);
    } else if (type == "ByteLevel") {
        step.kind = K::ByteLevel;
        step.add_prefix_space = j.value("add_prefix_space", true);
        if (j.value("use_regex", true)) step.regex = std::make_shared<Regex>(kGpt2Pattern, where + " ByteLevel");
    } else if (type == "Metaspace") {
        step.kind = K::Metaspace;
        step.replacement = j.value("replacement", "\xE2\x96\x81");
        size_t i = 0;
        if (step.replacement.empty() || (next_code_point(step.replacement, i), i != step.replacement.size()))
            throw Error(where + " Metaspace: \"replacement\" must be one character", kExitBadInput);
        step.prepend = parse_scheme(j, where + " Metaspace");
        step.split = j.value("split", true);
    } else if (type == "Digits") {
        step.kind = K::Digits;
        step.individual_digits = j.value("individual_digits", false);
    } else {
        throw Error(where + " type \"" + type + "\" is not supported (tpx supports Split, ByteLevel, Metaspace, Digits, "
                    "Sequence)", kExitBadInput);
    }
    steps_.push_back(std::move(step));
}

void PreTokenizer::pre_tokenize(std::vector<Piece>& pieces) const {
    using K = PreTokenizerStep::Kind;
    std::vector<Piece> out;
    Parts parts;
    std::vector<std::pair<size_t, size_t>> hits;
    for (const PreTokenizerStep& step : steps_) {
        out.clear();
        out.reserve(pieces.size() * 2);
        for (Piece& piece : pieces) {
            switch (step.kind) {
            case K::Split:
                regex_parts(*step.regex, piece.text, parts, hits);
                if (step.invert)
                    for (auto& p : parts) p.second = !p.second;
                emit(piece, split_ranges(parts, step.behavior), out);
                break;
            case K::ByteLevel: {
                if (step.add_prefix_space && (piece.text.empty() || piece.text[0] != ' ')) piece.text.insert(0, " ");
                size_t first = out.size();
                if (step.regex) {
                    regex_parts(*step.regex, piece.text, parts, hits);
                    emit(piece, split_ranges(parts, SplitBehavior::Isolated), out);
                } else if (!piece.text.empty()) {
                    out.push_back(std::move(piece));
                }
                for (size_t k = first; k < out.size(); ++k) out[k].text = to_byte_level(out[k].text);
                break;
            }
            case K::Metaspace: {
                replace_all(piece.text, " ", step.replacement);
                bool starts = piece.text.compare(0, step.replacement.size(), step.replacement) == 0;
                if (!starts && (step.prepend == PrependScheme::Always ||
                                (step.prepend == PrependScheme::First && piece.at_origin)))
                    piece.text.insert(0, step.replacement);
                if (step.split) {
                    size_t i = 0;
                    char32_t rep = next_code_point(step.replacement, i);
                    char_parts(piece.text, [rep](char32_t c) { return c == rep; }, parts);
                    emit(piece, split_ranges(parts, SplitBehavior::MergedWithNext), out);
                } else if (!piece.text.empty()) {
                    out.push_back(std::move(piece));
                }
                break;
            }
            case K::Digits: {
                auto numeric = [](char32_t c) {
                    auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
                    return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
                };
                char_parts(piece.text, numeric, parts);
                emit(piece, split_ranges(parts, step.individual_digits ? SplitBehavior::Isolated : SplitBehavior::Contiguous),
                     out);
                break;
            }
            }
        }
        pieces.swap(out);
    }
}

}  // namespace tpx::tok
