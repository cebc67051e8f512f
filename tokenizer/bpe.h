// The BPE model of tokenizer.json: vocab, ranked merges, byte_fallback, unk_token (fused or not),
// ignore_merges, continuing_subword_prefix / end_of_word_suffix. tokenize() gives HF's ids for
// one pre-tokenized piece; results are cached per piece, which never changes them.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace tpx::tok {

class Bpe {
public:
    // Reads the "model" object. Not BPE, a merge naming an unknown token, or an unk_token not
    // in the vocab throw tpx::Error (exit 2) naming `file`.
    static Bpe from_json(const nlohmann::json& model, const std::string& file);
    Bpe() = default;
    Bpe(Bpe&& other) noexcept;

    // Appends the ids of `piece` to `out`.
    void tokenize(const std::string& piece, std::vector<int32_t>& out) const;

    int32_t token_to_id(std::string_view token) const;  // -1 when absent
    const std::string* id_to_token(int32_t id) const;   // nullptr when absent
    size_t vocab_size() const { return id_to_token_.size(); }  // largest id + 1
    size_t vocab_entries() const { return vocab_.size(); }
    int32_t unk_id() const { return unk_id_; }

private:
    struct Symbol {
        int32_t id;
        int32_t prev, next;  // neighbours in the word, -1 at the ends
        int32_t len;         // bytes of the piece it covers; 0 once merged into its left neighbour
    };
    void merge_word(const std::string& piece, std::vector<int32_t>& out) const;
    void merge_symbols(std::vector<Symbol>& symbols) const;
    bool find_merge(int32_t a, int32_t b, int32_t* rank, int32_t* id) const;

    std::unordered_map<std::string, int32_t> vocab_;
    std::vector<std::string> id_to_token_;  // dense by id; "" where the vocab has a gap
    std::vector<bool> has_id_;
    // (left id << 32 | right id) -> (rank, merged id); a later duplicate merge wins, as in HF.
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
    int32_t unk_id_ = -1;
    bool fuse_unk_ = false;
    bool byte_fallback_ = false;
    bool ignore_merges_ = false;
    std::string prefix_, suffix_;  // continuing_subword_prefix, end_of_word_suffix
    int32_t byte_ids_[256];        // "<0xAB>" tokens for byte_fallback, -1 when missing

    mutable std::mutex cache_mutex_;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace tpx::tok
