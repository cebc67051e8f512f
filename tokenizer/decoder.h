// Decoders of tokenizer.json (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace and
// Sequence). As in HF each step maps the list of token strings to a new list; the result is
// the concatenation of the last list.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/regex.h"

namespace tpx::tok {

struct DecoderStep {
    enum class Kind { ByteLevel, ReplaceString, ReplaceRegex, ByteFallback, Fuse, Strip, Metaspace };
    Kind kind;
    std::string pattern, content;  // Replace; Strip: content is one character
    std::shared_ptr<Regex> regex;
    size_t start = 0, stop = 0;  // Strip: at most this many characters from each end
    std::string replacement;     // Metaspace
    PrependScheme prepend = PrependScheme::Always;
};

class Decoder {
public:
    // Reads the "decoder" value; null means HF's default (tokens joined by one space).
    static Decoder from_json(const nlohmann::json& j, const std::string& file);
    // transformers' LlamaTokenizer decoder: Replace("▁", " "), ByteFallback, Fuse, and
    // Strip(" ", 1, 0) when add_prefix_space.
    static Decoder llama(bool strip_prefix_space);
    std::string decode(std::vector<std::string> tokens) const;
    // The bytes one vocabulary token stands for where they are not whole UTF-8 (decode gives
    // U+FFFD for them): a byte-level token's bytes, or a ByteFallback token's byte ("<0xAB>").
    // Null for any other token or decoder.
    std::optional<std::string> raw_bytes(const std::string& token) const;

private:
    void add(const nlohmann::json& j, const std::string& file);
    bool none_ = true;
    std::vector<DecoderStep> steps_;
};

}  // namespace tpx::tok
