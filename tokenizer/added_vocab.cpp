// Matching of added tokens. The matcher is a plain byte trie: tokenizers ship a few hundred
// added tokens at most, all short, so the scan costs one table look-up per byte of text.
#include "tokenizer/added_vocab.h"

#include <utf8proc.h>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace tpx::tok {

void TokenMatcher::add(const std::string& s, int32_t index) {
    if (s.empty()) return;
    int32_t node = 0;
    for (unsigned char b : s) {
        auto it = nodes_[node].next.find(b);
        if (it == nodes_[node].next.end()) {
            nodes_.emplace_back();
            int32_t child = static_cast<int32_t>(nodes_.size() - 1);
            nodes_[node].next[b] = child;
            node = child;
        } else {
            node = it->second;
        }
    }
    if (nodes_[node].index < 0) nodes_[node].index = index;  // the first token with this content wins
    first_[static_cast<unsigned char>(s[0])] = true;
}

int32_t TokenMatcher::longest_at(const std::string& text, size_t pos, size_t* len) const {
    int32_t node = 0, found = -1;
    for (size_t i = pos; i < text.size(); ++i) {
        auto it = nodes_[node].next.find(static_cast<unsigned char>(text[i]));
        if (it == nodes_[node].next.end()) break;
        node = it->second;
        if (nodes_[node].index >= 0) {
            found = nodes_[node].index;
            *len = i + 1 - pos;
        }
    }
    return found;
}

namespace {

// HF's single_word test: a neighbouring character that is alphanumeric or '_' makes the match
// part of a word.
bool is_word_char(char32_t c) {
    if (c == '_') return true;
    auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

}  // namespace

std::vector<AddedToken> AddedVocab::parse(const nlohmann::json& list, const std::string& file) {
    if (!list.is_array()) throw Error(file + ": \"added_tokens\" must be a list", kExitBadInput);
    std::vector<AddedToken> out;
    for (size_t k = 0; k < list.size(); ++k) {
        const auto& j = list[k];
        if (!j.is_object() || !j.contains("id") || !j["id"].is_number_integer() || !j.contains("content") ||
            !j["content"].is_string())
            throw Error(file + ": added_tokens[" + std::to_string(k) + "] needs an integer \"id\" and a string \"content\"",
                        kExitBadInput);
        AddedToken t;
        t.id = j["id"];
        t.content = j["content"];
        t.special = j.value("special", false);
        t.lstrip = j.value("lstrip", false);
        t.rstrip = j.value("rstrip", false);
        t.single_word = j.value("single_word", false);
        t.normalized = j.value("normalized", !t.special);
        out.push_back(std::move(t));
    }
    return out;
}

void AddedVocab::add(AddedToken t) {
    auto known = by_content_.find(t.content);
    if (known != by_content_.end()) {
        // HF updates the options of a token added twice; the id stays.
        tokens_[by_id_[known->second]] = t;
        return;
    }
    by_id_[t.id] = tokens_.size();
    by_content_.emplace(t.content, t.id);
    max_id_ = std::max(max_id_, t.id);
    tokens_.push_back(std::move(t));
}

const AddedToken* AddedVocab::by_id(int32_t id) const {
    auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

int32_t AddedVocab::id_of(const std::string& content) const {
    auto it = by_content_.find(content);
    return it == by_content_.end() ? -1 : it->second;
}

std::vector<Span> AddedVocab::split(const std::string& text, bool normalized) const {
    const TokenMatcher& m = normalized ? normalized_ : raw_;
    std::vector<Span> spans;
    if (m.empty()) {
        spans.push_back({0, text.size(), -1});
        return spans;
    }
    // As HF's find_matches: the scan resumes after each raw match whatever lstrip/rstrip took, so
    // a stripped region may hold further matches, which are emitted as HF emits them.
    size_t done = 0;  // HF's start_offset: text before it is in spans already
    size_t pos = 0;
    while (pos < text.size()) {
        if (!m.may_start(static_cast<unsigned char>(text[pos]))) { ++pos; continue; }
        size_t len = 0;
        int32_t index = m.longest_at(text, pos, &len);
        if (index < 0) { ++pos; continue; }
        const AddedToken& t = tokens_[index];
        size_t start = pos, stop = pos + len;
        pos = stop;
        if (t.single_word) {
            size_t before_start;
            bool word_before = start > 0 && is_word_char(previous_code_point(text, start, &before_start));
            size_t after = stop;
            bool word_after = stop < text.size() && is_word_char(next_code_point(text, after));
            if (word_before || word_after) continue;
        }
        if (t.lstrip) {
            size_t s = start;
            while (s > 0) {
                size_t prev;
                if (!is_whitespace(previous_code_point(text, s, &prev))) break;
                s = prev;
            }
            start = std::max(s, done);
        }
        if (t.rstrip) {
            while (stop < text.size()) {
                size_t next = stop;
                if (!is_whitespace(next_code_point(text, next))) break;
                stop = next;
            }
        }
        if (done < start) spans.push_back({done, start, -1});
        spans.push_back({start, stop, t.id});
        done = stop;
    }
    if (done < text.size()) spans.push_back({done, text.size(), -1});
    return spans;
}

}  // namespace tpx::tok
