// The normalizer steps. Unicode tables come from utf8proc, never from tpx.
#include "tokenizer/normalizer.h"

#include <cstdlib>

#include <utf8proc.h>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace tpx::tok {

namespace {

std::string pattern_string(const nlohmann::json& pattern, bool* is_regex, const std::string& where) {
    if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
        *is_regex = false;
        return pattern["String"].get<std::string>();
    }
    if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
        *is_regex = true;
        return pattern["Regex"].get<std::string>();
    }
    throw Error(where + ": \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}, got " + pattern.dump(), kExitBadInput);
}

}  // namespace

void replace_all(std::string& s, const std::string& from, const std::string& to) {
    if (from.empty() || s.find(from) == std::string::npos) return;
    std::string out;
    out.reserve(s.size());
    size_t pos = 0;
    for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
        out.append(s, pos, hit - pos);
        out += to;
    }
    out.append(s, pos, std::string::npos);
    s.swap(out);
}

std::string unicode_normalize(const std::string& s, NormalizerStep::Kind form) {
    bool ascii = true;
    for (char c : s) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
    if (ascii) return s;  // every form leaves ASCII unchanged
    // utf8proc_map with an explicit length: the text may hold U+0000, which the NUL-terminated
    // helpers (utf8proc_NFC...) would take for its end.
    int options = UTF8PROC_STABLE;
    switch (form) {
    case NormalizerStep::Kind::NFC: options |= UTF8PROC_COMPOSE; break;
    case NormalizerStep::Kind::NFD: options |= UTF8PROC_DECOMPOSE; break;
    case NormalizerStep::Kind::NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t* out = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                                      &out, static_cast<utf8proc_option_t>(options));
    if (n < 0) throw Error(std::string("tokenizer: utf8proc could not normalize a piece of text: ") + utf8proc_errmsg(n));
    std::string r(reinterpret_cast<char*>(out), static_cast<size_t>(n));
    std::free(out);
    return r;
}

std::string lowercase(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        char32_t c = next_code_point(s, i);
        if (c == 0x130) {
            out += "i\xCC\x87";
        } else {
            append_utf8(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
        }
    }
    return out;
}

Normalizer Normalizer::from_json(const nlohmann::json& j, const std::string& file) {
    Normalizer n;
    if (!j.is_null()) n.add(j, file);
    return n;
}

void Normalizer::add(const nlohmann::json& j, const std::string& file) {
    std::string where = file + ": normalizer";
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
        throw Error(where + " must be an object with a \"type\", got " + j.dump().substr(0, 200), kExitBadInput);
    std::string type = j["type"];
    using K = NormalizerStep::Kind;
    NormalizerStep step{};
    if (type == "Sequence") {
        if (!j.contains("normalizers") || !j["normalizers"].is_array())
            throw Error(where + " Sequence has no \"normalizers\" list", kExitBadInput);
        for (const auto& child : j["normalizers"]) add(child, file);
        return;
    } else if (type == "Prepend") {
        step.kind = K::Prepend;
        step.text = j.value("prepend", "");
    } else if (type == "Replace") {
        bool is_regex = false;
        std::string p = pattern_string(j.value("pattern", nlohmann::json()), &is_regex, where + " Replace");
        step.kind = is_regex ? K::ReplaceRegex : K::ReplaceString;
        step.text = p;
        step.content = j.value("content", "");
        if (is_regex) step.regex = std::make_shared<Regex>(p, where + " Replace");
    } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
        step.kind = type == "NFC" ? K::NFC : type == "NFD" ? K::NFD : type == "NFKC" ? K::NFKC : K::NFKD;
    } else if (type == "Lowercase") {
        step.kind = K::Lowercase;
    } else if (type == "Strip") {
        step.kind = K::Strip;
        step.left = j.value("strip_left", true);
        step.right = j.value("strip_right", true);
    } else {
        throw Error(where + " type \"" + type + "\" is not supported (tpx supports Prepend, Replace, NFC, NFD, NFKC, "
                    "NFKD, Lowercase, Strip, Sequence)", kExitBadInput);
    }
    steps_.push_back(std::move(step));
}

void Normalizer::normalize(std::string& s) const {
    using K = NormalizerStep::Kind;
    for (const NormalizerStep& step : steps_) {
        switch (step.kind) {
        case K::Prepend:
            if (!s.empty()) s.insert(0, step.text);  // HF prepends to non-empty text only
            break;
        case K::ReplaceString:
            replace_all(s, step.text, step.content);
            break;
        case K::ReplaceRegex: {
            std::vector<std::pair<size_t, size_t>> hits;
            step.regex->find_all(s, hits);
            if (hits.empty()) break;
            std::string out;
            size_t pos = 0;
            for (auto [a, b] : hits) {
                out.append(s, pos, a - pos);
                out += step.content;
                pos = b;
            }
            out.append(s, pos, std::string::npos);
            s.swap(out);
            break;
        }
        case K::NFC: case K::NFD: case K::NFKC: case K::NFKD:
            s = unicode_normalize(s, step.kind);
            break;
        case K::Lowercase:
            s = lowercase(s);
            break;
        case K::Strip: {
            size_t a = 0, b = s.size();
            if (step.left) {
                while (a < b) {
                    size_t i = a;
                    if (!is_whitespace(next_code_point(s, i))) break;
                    a = i;
                }
            }
            if (step.right) {
                while (b > a) {
                    size_t start;
                    if (!is_whitespace(previous_code_point(s, b, &start))) break;
                    b = start;
                }
            }
            s = s.substr(a, b - a);
            break;
        }
        }
    }
}

}  // namespace tpx::tok
