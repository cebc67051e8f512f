// Added tokens (tokenizer.json "added_tokens"): matched in the text before the model runs, as
// HF's AddedVocabulary does: leftmost-longest, non-normalized tokens on the raw text first, then
// normalized tokens on each normalized remainder; lstrip/rstrip/single_word as HF applies them.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

namespace tpx::tok {

struct AddedToken {
    int32_t id = -1;
    std::string content;
    bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
    // Dropped by decode's skip_special_tokens: HF drops a token whose text (the normalized form,
    // for a normalized one) is a special token's as written, so a special token that its
    // normalization changes is kept (set by AddedVocab::build).
    bool skipped_as_special = false;
};

// One span of text: either an added token (id >= 0) or text for the model (id < 0).
struct Span {
    size_t start, end;
    int32_t id;
};

// Finds the leftmost-longest occurrences of a set of strings (a byte trie; the first-byte table
// lets the scan skip most positions at once).
class TokenMatcher {
public:
    void add(const std::string& s, int32_t index);
    bool empty() const { return nodes_.size() <= 1; }
    // The longest string starting at text[pos]: its index, and its length in *len; -1 if none.
    int32_t longest_at(const std::string& text, size_t pos, size_t* len) const;
    bool may_start(unsigned char b) const { return first_[b]; }

private:
    struct Node {
        std::unordered_map<unsigned char, int32_t> next;
        int32_t index = -1;
    };
    std::vector<Node> nodes_{1};
    bool first_[256] = {};
};

class AddedVocab {
public:
    // Reads the "added_tokens" list; a missing id or content throws tpx::Error naming `file`.
    // Ids are given as HF's AddedVocabulary gives them, whatever the file says: the model's id
    // when the content is in its vocab, else the next free id after the vocab (`model_id` looks
    // a content up in the model, -1 when absent; `model_size` counts its vocab entries).
    template <class ModelId>
    void load(const nlohmann::json& list, const std::string& file, ModelId model_id, size_t model_size) {
        if (list.is_null()) return;
        for (AddedToken t : parse(list, file)) {
            int32_t id = id_of(t.content);
            if (id < 0) id = model_id(t.content);
            if (id < 0) id = max_id_ >= static_cast<int32_t>(model_size) ? max_id_ + 1 : static_cast<int32_t>(model_size);
            t.id = id;
            add(std::move(t));
        }
    }
    // Builds the matchers; `normalize` gives the normalized form of a normalized token.
    template <class Normalize>
    void build(Normalize normalize) {
        for (size_t i = 0; i < tokens_.size(); ++i) {
            AddedToken& t = tokens_[i];
            t.skipped_as_special = t.special;
            if (t.content.empty()) continue;
            if (!t.normalized) {
                raw_.add(t.content, static_cast<int32_t>(i));
                continue;
            }
            // HF keeps a normalized token in its normalized form: it is matched so, and
            // id_to_token (hence decode) gives that form.
            std::string normalized = normalize(t.content);
            t.skipped_as_special = t.special && normalized == t.content;
            t.content = std::move(normalized);
            by_content_.emplace(t.content, t.id);
            normalized_.add(t.content, static_cast<int32_t>(i));
        }
    }
    // Splits `text` at the added tokens of one matcher (raw or normalized).
    std::vector<Span> split(const std::string& text, bool normalized) const;

    const AddedToken* by_id(int32_t id) const;
    int32_t id_of(const std::string& content) const;  // -1 when not an added token
    bool is_special(int32_t id) const { const AddedToken* t = by_id(id); return t && t->special; }
    int32_t max_id() const { return max_id_; }
    const std::vector<AddedToken>& tokens() const { return tokens_; }

private:
    static std::vector<AddedToken> parse(const nlohmann::json& list, const std::string& file);
    void add(AddedToken t);

    std::vector<AddedToken> tokens_;
    std::unordered_map<int32_t, size_t> by_id_;
    std::unordered_map<std::string, int32_t> by_content_;
    TokenMatcher raw_, normalized_;
    int32_t max_id_ = -1;
};

}  // namespace tpx::tok
