// The decoder steps, each written after the HF decoder of the same name, because decodes are
// compared byte for byte with transformers (including U+FFFD for broken UTF-8).
#include "tokenizer/decoder.h"

#include "common/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/utf8.h"

namespace tpx::tok {

namespace {

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// "<0xAB>" -> 0xAB; -1 for any other token (HF parses the two characters as hex).
int byte_token(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
    if (lo < 0) return -1;
    if (hi < 0) return t[3] == '+' ? lo : -1;  // Rust's from_str_radix accepts a '+' sign
    return hi * 16 + lo;
}

std::vector<std::string> byte_fallback(std::vector<std::string>& tokens) {
    std::vector<std::string> out;
    std::string bytes;
    auto flush = [&] {
        if (bytes.empty()) return;
        if (find_invalid_utf8(bytes) == std::string::npos) {
            out.push_back(bytes);
        } else {
            for (size_t k = 0; k < bytes.size(); ++k) out.push_back("\xEF\xBF\xBD");  // one U+FFFD per byte
        }
        bytes.clear();
    };
    for (std::string& t : tokens) {
        int b = byte_token(t);
        if (b >= 0) {
            bytes += static_cast<char>(b);
        } else {
            flush();
            out.push_back(std::move(t));
        }
    }
    flush();
    return out;
}

void strip(std::string& t, char32_t content, size_t start, size_t stop) {
    std::vector<size_t> bounds;  // byte offset of every character, then the end
    for (size_t i = 0; i < t.size();) {
        bounds.push_back(i);
        next_code_point(t, i);
    }
    size_t n = bounds.size();
    bounds.push_back(t.size());
    auto char_at = [&](size_t k) {
        size_t i = bounds[k];
        return next_code_point(t, i);
    };
    size_t a = 0;
    for (size_t k = 0; k < start && k < n; ++k) {
        if (char_at(k) != content) break;
        a = k + 1;
    }
    size_t b = n;
    for (size_t k = 0; k < stop && k < n; ++k) {
        size_t index = n - k - 1;
        if (char_at(index) != content) break;
        b = index;
    }
    t = a < b ? t.substr(bounds[a], bounds[b] - bounds[a]) : std::string();
}

}  // namespace

Decoder Decoder::from_json(const nlohmann::json& j, const std::string& file) {
    Decoder d;
    if (!j.is_null()) {
        d.none_ = false;
        d.add(j, file);
    }
    return d;
}

Decoder Decoder::llama(bool strip_prefix_space) {
    Decoder d;
    d.none_ = false;
    auto step = [](DecoderStep::Kind kind) {
        DecoderStep s{};
        s.kind = kind;
        return s;
    };
    DecoderStep replace = step(DecoderStep::Kind::ReplaceString);
    replace.pattern = "\xE2\x96\x81";
    replace.content = " ";
    d.steps_.push_back(replace);
    d.steps_.push_back(step(DecoderStep::Kind::ByteFallback));
    d.steps_.push_back(step(DecoderStep::Kind::Fuse));
    if (strip_prefix_space) {
        DecoderStep strip = step(DecoderStep::Kind::Strip);
        strip.content = " ";
        strip.start = 1;
        d.steps_.push_back(strip);
    }
    return d;
}

void Decoder::add(const nlohmann::json& j, const std::string& file) {
    std::string where = file + ": decoder";
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
        throw Error(where + " must be an object with a \"type\", got " + j.dump().substr(0, 200), kExitBadInput);
    std::string type = j["type"];
    using K = DecoderStep::Kind;
    DecoderStep step{};
    if (type == "Sequence") {
        if (!j.contains("decoders") || !j["decoders"].is_array())
            throw Error(where + " Sequence has no \"decoders\" list", kExitBadInput);
        for (const auto& child : j["decoders"]) add(child, file);
        return;
    } else if (type == "ByteLevel") {
        step.kind = K::ByteLevel;
    } else if (type == "Replace") {
        const nlohmann::json& p = j.value("pattern", nlohmann::json());
        step.content = j.value("content", "");
        if (p.is_object() && p.contains("String") && p["String"].is_string()) {
            step.kind = K::ReplaceString;
            step.pattern = p["String"];
        } else if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
            step.kind = K::ReplaceRegex;
            step.pattern = p["Regex"];
            step.regex = std::make_shared<Regex>(step.pattern, where + " Replace");
        } else {
            throw Error(where + " Replace: \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}", kExitBadInput);
        }
    } else if (type == "ByteFallback") {
        step.kind = K::ByteFallback;
    } else if (type == "Fuse") {
        step.kind = K::Fuse;
    } else if (type == "Strip") {
        step.kind = K::Strip;
        step.content = j.value("content", " ");
        size_t i = 0;
        if (step.content.empty() || (next_code_point(step.content, i), i != step.content.size()))
            throw Error(where + " Strip: \"content\" must be one character", kExitBadInput);
        step.start = j.value("start", 0);
        step.stop = j.value("stop", 0);
    } else if (type == "Metaspace") {
        step.kind = K::Metaspace;
        step.replacement = j.value("replacement", "\xE2\x96\x81");
        std::string scheme = j.value("prepend_scheme", j.value("add_prefix_space", true) ? "always" : "never");
        step.prepend = scheme == "never" ? PrependScheme::Never : scheme == "first" ? PrependScheme::First : PrependScheme::Always;
    } else {
        throw Error(where + " type \"" + type + "\" is not supported (tpx supports ByteLevel, Replace, ByteFallback, "
                    "Fuse, Strip, Metaspace, Sequence)", kExitBadInput);
    }
    steps_.push_back(std::move(step));
}

std::optional<std::string> Decoder::raw_bytes(const std::string& token) const {
    for (const DecoderStep& step : steps_) {
        std::string bytes;
        if (step.kind == DecoderStep::Kind::ByteLevel && append_token_bytes(token, bytes)) return bytes;
        if (step.kind == DecoderStep::Kind::ByteFallback && byte_token(token) >= 0) return std::string(1, (char)byte_token(token));
    }
    return std::nullopt;
}

std::string Decoder::decode(std::vector<std::string> tokens) const {
    using K = DecoderStep::Kind;
    if (none_) {
        std::string out;
        for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
        return out;
    }
    for (const DecoderStep& step : steps_) {
        switch (step.kind) {
        case K::ByteLevel: {
            std::string bytes;
            for (const std::string& t : tokens)
                if (!append_token_bytes(t, bytes)) bytes += t;
            tokens.assign(1, utf8_lossy(bytes));
            break;
        }
        case K::ReplaceString:
            for (std::string& t : tokens) replace_all(t, step.pattern, step.content);
            break;
        case K::ReplaceRegex:
            for (std::string& t : tokens) {
                std::vector<std::pair<size_t, size_t>> hits;
                step.regex->find_all(t, hits);
                std::string out;
                size_t pos = 0;
                for (auto [a, b] : hits) {
                    out.append(t, pos, a - pos);
                    out += step.content;
                    pos = b;
                }
                out.append(t, pos, std::string::npos);
                t.swap(out);
            }
            break;
        case K::ByteFallback:
            tokens = byte_fallback(tokens);
            break;
        case K::Fuse: {
            std::string all;
            for (const std::string& t : tokens) all += t;
            tokens.assign(1, all);
            break;
        }
        case K::Strip: {
            size_t i = 0;
            char32_t c = next_code_point(step.content, i);
            for (std::string& t : tokens) strip(t, c, step.start, step.stop);
            break;
        }
        case K::Metaspace:
            for (size_t k = 0; k < tokens.size(); ++k) {
                std::string out;
                std::string& t = tokens[k];
                for (size_t i = 0; i < t.size();) {
                    size_t start = i;
                    next_code_point(t, i);
                    if (t.compare(start, i - start, step.replacement) == 0) {
                        // The first token's leading replacement is the prepended space: dropped.
                        if (!(k == 0 && start == 0 && step.prepend != PrependScheme::Never)) out += ' ';
                    } else {
                        out.append(t, start, i - start);
                    }
                }
                t.swap(out);
            }
            break;
        }
    }
    std::string out;
    for (const std::string& t : tokens) out += t;
    return out;
}

}  // namespace tpx::tok
