// Pre-tokenizers of tokenizer.json (Split, ByteLevel, Metaspace, Digits and Sequence, flattened
// into steps). Each step cuts every piece into smaller pieces; BPE then runs on each piece alone,
// so the cut points must be exactly HF's.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/regex.h"

namespace tpx::tok {

// A piece of text on its way to the model. at_origin: it starts at offset 0 of the input text
// (Metaspace's prepend_scheme "first" prepends only there).
struct Piece {
    std::string text;
    bool at_origin = false;
};

// HF's SplitDelimiterBehavior.
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
enum class PrependScheme { First, Always, Never };

struct PreTokenizerStep {
    enum class Kind { Split, ByteLevel, Metaspace, Digits };
    Kind kind;
    std::shared_ptr<Regex> regex;  // Split (a String pattern is compiled as a quoted regex); ByteLevel with use_regex
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false;  // ByteLevel
    std::string replacement;        // Metaspace
    PrependScheme prepend = PrependScheme::Always;
    bool split = true;              // Metaspace
    bool individual_digits = false; // Digits
};

class PreTokenizer {
public:
    // Reads the "pre_tokenizer" value (null = none); unknown types throw tpx::Error (exit 2).
    static PreTokenizer from_json(const nlohmann::json& j, const std::string& file);
    // Metaspace(replacement, scheme, split=false): the pre-tokenizer transformers' LlamaTokenizer builds.
    static PreTokenizer metaspace(const std::string& replacement, PrependScheme scheme, bool split);
    // Replaces `pieces` by their sub-pieces; empty pieces are dropped.
    void pre_tokenize(std::vector<Piece>& pieces) const;

private:
    void add(const nlohmann::json& j, const std::string& file);
    std::vector<PreTokenizerStep> steps_;
};

// Applies `behavior` to the alternating match / non-match ranges of one piece (exposed for tests).
std::vector<std::pair<size_t, size_t>> split_ranges(const std::vector<std::pair<std::pair<size_t, size_t>, bool>>& parts,
                                                    SplitBehavior behavior);

}  // namespace tpx::tok
