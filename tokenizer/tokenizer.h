// tpx's tokenizer: text to ids and back exactly as HF transformers' AutoTokenizer does, for the
// BPE tokenizers that Llama 2/3, Mistral, Mixtral and Qwen2/2.5/3 ship. Reads tokenizer.json,
// tokenizer_config.json and special_tokens_map.json; see docs/TOKENIZER.md for the pipeline and
// the one place where transformers and HF's Rust library differ (LlamaTokenizer).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tpx::tok {
class Normalizer;
class PreTokenizer;
class Decoder;
class Bpe;
class AddedVocab;
// One item of the post-processor's single-sequence template: the encoded text, or special ids.
struct PostStep {
    bool sequence = false;
    std::vector<int32_t> ids;
};
}  // namespace tpx::tok

namespace tpx {

class Tokenizer {
public:
    // `path` is a folder holding tokenizer.json (and usually tokenizer_config.json), or a
    // tokenizer.json file. Bad files throw tpx::Error with exit code 2 naming the file and the
    // component.
    static Tokenizer load(const std::string& path);
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    // `text` must be valid UTF-8 (tpx::Error exit 2 otherwise). add_special_tokens applies the
    // post-processor's template (e.g. a leading BOS).
    std::vector<int32_t> encode(const std::string& text, bool add_special_tokens = true) const;
    // Ids outside the vocabulary are skipped, as HF does; bytes that do not form UTF-8 become
    // U+FFFD as in Rust's from_utf8_lossy.
    std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
    // The bytes one token stands for: its decode alone, except where that is not whole UTF-8
    // (part of a character's bytes: a byte-level or byte-fallback token), its raw bytes.
    std::string token_bytes(int32_t id) const;

    size_t vocab_size() const;                          // largest id + 1, added tokens included
    int32_t token_to_id(const std::string& token) const;  // -1 when unknown
    std::optional<std::string> id_to_token(int32_t id) const;
    bool is_special(int32_t id) const;

    // From tokenizer_config.json (or special_tokens_map.json); "" when absent.
    const std::string& bos_token() const { return bos_; }
    const std::string& eos_token() const { return eos_; }
    const std::string& pad_token() const { return pad_; }
    const std::string& unk_token() const { return unk_; }
    // tokenizer_config.json's "chat_template" as written (a string, or a list of {name,
    // template}); null when absent. Read by the chat engine.
    const nlohmann::json& chat_template() const { return chat_template_; }
    std::optional<bool> add_bos_token() const { return add_bos_; }
    std::optional<bool> add_eos_token() const { return add_eos_; }
    bool clean_up_tokenization_spaces() const { return clean_up_; }
    // The class transformers would build ("LlamaTokenizer", "TokenizersBackend", ...).
    const std::string& tokenizer_class() const { return class_; }
    const std::string& file() const { return file_; }

private:
    Tokenizer();
    void load_files(const std::string& tokenizer_json);  // tokenizer.json, then tokenizer_config.json beside it
    void load_config(const std::string& folder);
    void load_post_processor(const nlohmann::json& j);
    void apply_transformers_rules();
    void encode_text(const std::string& text, bool at_origin, std::vector<int32_t>& out) const;

    std::string file_;
    std::unique_ptr<tok::Normalizer> normalizer_;
    std::unique_ptr<tok::PreTokenizer> pre_tokenizer_;
    std::unique_ptr<tok::Decoder> decoder_;
    std::unique_ptr<tok::Bpe> model_;
    std::unique_ptr<tok::AddedVocab> added_;
    std::vector<tok::PostStep> post_;  // the single-sequence template, flattened
    std::string bos_, eos_, pad_, unk_, class_;
    nlohmann::json chat_template_;
    std::optional<bool> add_bos_, add_eos_;
    std::optional<bool> legacy_, add_prefix_space_;
    bool clean_up_ = false;
};

}  // namespace tpx
