// Loading a tokenizer folder and running HF's pipeline: added tokens, normalizer,
// pre-tokenizer, BPE, post-processor; and back: ids to token strings, decoder, clean-up.
// The transformers-specific rules live in apply_transformers_rules() and nowhere else.
#include "tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/json_object.h"
#include "tokenizer/added_vocab.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/utf8.h"

namespace fs = std::filesystem;

namespace tpx {

namespace {

nlohmann::json read_json(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw Error(file + ": cannot open", kExitBadInput);
    std::stringstream ss;
    ss << in.rdbuf();
    try {
        return parse_json_bounded(ss.str());
    } catch (const nlohmann::json::exception& e) {
        throw Error(file + ": bad JSON: " + strip_json_tag(e), kExitBadInput);
    }
}

// A special token in tokenizer_config.json is a string or an AddedToken object.
std::string token_string(const nlohmann::json& j) {
    if (j.is_string()) return j.get<std::string>();
    if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"].get<std::string>();
    return "";
}

std::optional<bool> opt_bool(const nlohmann::json& config, const char* key) {
    if (config.contains(key) && config[key].is_boolean()) return config[key].get<bool>();
    return std::nullopt;
}

// transformers' clean_up_tokenization (tokenization_utils_base.py), applied to decodes when the
// config's clean_up_tokenization_spaces is true.
std::string clean_up_tokenization(std::string s) {
    static const std::pair<const char*, const char*> kRules[] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
        {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
    };
    for (const auto& [from, to] : kRules) tok::replace_all(s, from, to);
    return s;
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
    Tokenizer t;
    fs::path p(path);
    if (fs::is_directory(p)) p /= "tokenizer.json";
    if (!fs::is_regular_file(p))
        throw Error(p.string() + ": no tokenizer.json (tpx reads HF's tokenizer.json, not tokenizer.model)", kExitBadInput);
    t.file_ = p.string();
    try {
        t.load_files(p.string());
    } catch (const nlohmann::json::exception& e) {  // a key whose value has the wrong type
        throw Error(t.file_ + ": a value of the wrong type: " + strip_json_tag(e), kExitBadInput);
    }
    return t;
}

void Tokenizer::load_files(const std::string& tokenizer_json) {
    nlohmann::json j = read_json(tokenizer_json);
    if (!j.is_object()) throw Error(file_ + ": not a JSON object", kExitBadInput);
    if (!j.contains("model")) throw Error(file_ + ": no \"model\"", kExitBadInput);
    model_ = std::make_unique<tok::Bpe>(tok::Bpe::from_json(j["model"], file_));
    normalizer_ = std::make_unique<tok::Normalizer>(tok::Normalizer::from_json(j.value("normalizer", nlohmann::json()), file_));
    pre_tokenizer_ =
        std::make_unique<tok::PreTokenizer>(tok::PreTokenizer::from_json(j.value("pre_tokenizer", nlohmann::json()), file_));
    decoder_ = std::make_unique<tok::Decoder>(tok::Decoder::from_json(j.value("decoder", nlohmann::json()), file_));
    added_ = std::make_unique<tok::AddedVocab>();
    const tok::Bpe& model = *model_;
    added_->load(j.value("added_tokens", nlohmann::json()), file_,
                 [&model](const std::string& s) { return model.token_to_id(s); }, model.vocab_entries());
    load_post_processor(j.value("post_processor", nlohmann::json()));
    const fs::path folder = fs::path(tokenizer_json).parent_path();
    try {
        load_config(folder.string());
    } catch (const nlohmann::json::exception& e) {
        throw Error((folder / "tokenizer_config.json").string() + " (or special_tokens_map.json beside it): a value of the wrong type: " + strip_json_tag(e),
                    kExitBadInput);
    }
    apply_transformers_rules();
    const tok::Normalizer& norm = *normalizer_;
    added_->build([&norm](const std::string& s) {
        std::string n = s;
        norm.normalize(n);
        return n;
    });
}

void Tokenizer::load_post_processor(const nlohmann::json& j) {
    if (j.is_null()) return;
    std::string where = file_ + ": post_processor";
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
        throw Error(where + " must be an object with a \"type\"", kExitBadInput);
    std::string type = j["type"];
    if (type == "Sequence") {
        for (const auto& child : j.value("processors", nlohmann::json::array())) load_post_processor(child);
    } else if (type == "ByteLevel") {
        // Only trims offsets; ids are unchanged.
    } else if (type == "TemplateProcessing") {
        if (!post_.empty()) throw Error(where + ": more than one TemplateProcessing", kExitBadInput);
        const nlohmann::json& special = j.value("special_tokens", nlohmann::json::object());
        for (const auto& item : j.value("single", nlohmann::json::array())) {
            tok::PostStep step;
            if (item.contains("Sequence")) {
                step.sequence = true;
            } else if (item.contains("SpecialToken")) {
                std::string name = item["SpecialToken"].value("id", "");
                if (!special.contains(name) || !special[name].contains("ids"))
                    throw Error(where + ": template names special token \"" + name + "\" missing from special_tokens",
                                kExitBadInput);
                for (const auto& id : special[name]["ids"]) {
                    if (!id.is_number_integer() || id.get<int64_t>() < 0 || (size_t)id.get<int64_t>() >= vocab_size())
                        throw Error(where + ": special token \"" + name + "\" has the id " + id.dump() + ", not one of the vocabulary's [0, " +
                                        std::to_string(vocab_size()) + ")",
                                    kExitBadInput);
                    step.ids.push_back((int32_t)id.get<int64_t>());
                }
            } else {
                throw Error(where + ": template item " + item.dump() + " is neither Sequence nor SpecialToken", kExitBadInput);
            }
            post_.push_back(std::move(step));
        }
    } else {
        throw Error(where + " type \"" + type + "\" is not supported (tpx supports TemplateProcessing, ByteLevel, Sequence)",
                    kExitBadInput);
    }
}

void Tokenizer::load_config(const std::string& folder) {
    nlohmann::json config = nlohmann::json::object();
    fs::path config_file = fs::path(folder) / "tokenizer_config.json";
    if (fs::is_regular_file(config_file)) config = read_json(config_file.string());
    if (!config.is_object()) throw Error(config_file.string() + ": not a JSON object", kExitBadInput);
    nlohmann::json map = nlohmann::json::object();
    fs::path map_file = fs::path(folder) / "special_tokens_map.json";
    if (fs::is_regular_file(map_file)) map = read_json(map_file.string());
    auto special = [&](const char* key) {
        std::string s = config.contains(key) ? token_string(config[key]) : "";
        if (s.empty() && map.is_object() && map.contains(key)) s = token_string(map[key]);
        return s;
    };
    bos_ = special("bos_token");
    eos_ = special("eos_token");
    pad_ = special("pad_token");
    unk_ = special("unk_token");
    if (config.contains("chat_template")) chat_template_ = config["chat_template"];
    add_bos_ = opt_bool(config, "add_bos_token");
    add_eos_ = opt_bool(config, "add_eos_token");
    legacy_ = opt_bool(config, "legacy");
    add_prefix_space_ = opt_bool(config, "add_prefix_space");
    clean_up_ = config.value("clean_up_tokenization_spaces", false);  // transformers 5's default is false
    class_ = config.value("tokenizer_class", "TokenizersBackend");
}

// transformers 5 loads tokenizer.json as it is only for TokenizersBackend (and classes without
// their own __init__); LlamaTokenizer (Llama 2, Mistral, Mixtral) keeps the vocab and merges but
// builds its own pipeline (models/llama/tokenization_llama.py):
//   normalizer none; pre-tokenizer Metaspace("▁", prepend_scheme, split=false) where
//   prepend_scheme = "always" if add_prefix_space (default true) and legacy, "first" if
//   add_prefix_space and not legacy (legacy defaults to false), "never" otherwise;
//   decoder Replace("▁"," "), ByteFallback, Fuse, then Strip(" ", 1, 0) if add_prefix_space;
//   post-processor: BOS if add_bos_token (default true), EOS if add_eos_token (default false).
// So "  leading spaces" gets no extra "▁" (Metaspace prepends only to text not already starting
// with "▁"), where the Rust library's Prepend normalizer adds one: [1, 28705, 5374, 10599]
// against [1, 259, 5374, 10599] on Mistral's tokenizer.
void Tokenizer::apply_transformers_rules() {
    if (class_ != "LlamaTokenizer" && class_ != "LlamaTokenizerFast") return;
    bool prefix = add_prefix_space_.value_or(true);
    tok::PrependScheme scheme = !prefix ? tok::PrependScheme::Never
                                : legacy_.value_or(false) ? tok::PrependScheme::Always
                                                          : tok::PrependScheme::First;
    *normalizer_ = tok::Normalizer();
    *pre_tokenizer_ = tok::PreTokenizer::metaspace("\xE2\x96\x81", scheme, false);
    *decoder_ = tok::Decoder::llama(prefix);
    post_.clear();
    auto special_step = [&](const std::string& token) {
        int32_t id = token_to_id(token);
        if (id < 0) throw Error(file_ + ": special token \"" + token + "\" of tokenizer_config.json is not in the vocab", kExitBadInput);
        return tok::PostStep{false, {id}};
    };
    if (add_bos_.value_or(true) && !bos_.empty()) post_.push_back(special_step(bos_));
    post_.push_back(tok::PostStep{true, {}});
    if (add_eos_.value_or(false) && !eos_.empty()) post_.push_back(special_step(eos_));
}

void Tokenizer::encode_text(const std::string& raw, bool at_origin, std::vector<int32_t>& out) const {
    std::string text = raw;
    normalizer_->normalize(text);
    if (text.empty()) return;  // HF drops pieces the normalizer emptied before pre-tokenizing
    for (const tok::Span& span : added_->split(text, true)) {
        if (span.id >= 0) {
            out.push_back(span.id);
            continue;
        }
        std::vector<tok::Piece> pieces;
        pieces.push_back(tok::Piece{text.substr(span.start, span.end - span.start), at_origin && span.start == 0});
        pre_tokenizer_->pre_tokenize(pieces);
        for (const tok::Piece& piece : pieces) model_->tokenize(piece.text, out);
    }
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
    size_t bad = tok::find_invalid_utf8(text);
    if (bad != std::string::npos)
        throw Error("tokenizer: the text is not valid UTF-8 (byte " + std::to_string(bad) + ")", kExitBadInput);
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    for (const tok::Span& span : added_->split(text, false)) {
        if (span.id >= 0) ids.push_back(span.id);
        else encode_text(text.substr(span.start, span.end - span.start), span.start == 0, ids);
    }
    if (!add_special_tokens || post_.empty()) return ids;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const tok::PostStep& step : post_) {
        if (step.sequence) out.insert(out.end(), ids.begin(), ids.end());
        else out.insert(out.end(), step.ids.begin(), step.ids.end());
    }
    return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
        if (const tok::AddedToken* t = added_->by_id(id)) {
            if (!(skip_special_tokens && t->skipped_as_special)) tokens.push_back(t->content);
        } else if (const std::string* s = model_->id_to_token(id)) {
            tokens.push_back(*s);
        }
    }
    std::string text = decoder_->decode(std::move(tokens));
    return clean_up_ ? clean_up_tokenization(std::move(text)) : text;
}

std::string Tokenizer::token_bytes(int32_t id) const {
    std::string text = decode({id});
    if (text.find("\xEF\xBF\xBD") == std::string::npos || added_->by_id(id)) return text;
    const std::string* token = model_->id_to_token(id);
    std::optional<std::string> raw = token ? decoder_->raw_bytes(*token) : std::nullopt;
    return raw ? *raw : text;
}

size_t Tokenizer::vocab_size() const {
    return std::max(model_->vocab_size(), static_cast<size_t>(added_->max_id() + 1));
}

int32_t Tokenizer::token_to_id(const std::string& token) const {
    int32_t id = added_->id_of(token);
    return id >= 0 ? id : model_->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
    if (const tok::AddedToken* t = added_->by_id(id)) return t->content;
    if (const std::string* s = model_->id_to_token(id)) return *s;
    return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const { return added_->is_special(id); }

}  // namespace tpx
