// Prompts from JSONL, one a line: {"id": ..., "input_ids": [...]}, {"id": ..., "text": "..."}
// (encoded with the tokenizer's special tokens) or {"id": ..., "messages": [...]} (rendered by
// the chat template with the generation prompt, then encoded). Read and checked on rank 0 (each
// error names the file, line and prompt), then broadcast to every rank as ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/text_tools.h"

namespace tpx {

struct Prompt {
    std::string id;  // as written: a JSON string's text, or a number's digits
    bool id_is_number = false;
    std::vector<int32_t> tokens;
};

// Throws Error (exit 2) naming the file and line for a malformed line, a key given twice or not
// one of id, input_ids, text, messages (exactly one of the last three), an id that is not a
// string or an integer or that an earlier line already has, a text or chat line when `text` has
// no tokenizer (or no chat template), a token id outside [0, vocab), an empty prompt, or a
// prompt that with max_new_tokens exceeds max_seq_len. A line without an id gets its place
// among the prompts (0, 1, ...).
std::vector<Prompt> read_prompts(const std::string& path, int64_t vocab, int64_t max_new_tokens, int64_t max_seq_len,
                                 const TextTools& text = TextTools());

// One JSONL line (the prompts file's, `tpx tokenize`'s) as JSON. Throws Error (exit 2) starting
// with `where` ("FILE:LINE: ") for bad JSON, a NUL byte (nlohmann's parser would stop there and
// take the rest as read) and a key given twice in one object (it would keep the last).
nlohmann::ordered_json parse_jsonl_line(const std::string& line, const std::string& where);

// The token ids of every prompt as one flat message, and back (for the broadcast).
std::vector<int32_t> pack_prompts(const std::vector<Prompt>& prompts);
std::vector<Prompt> unpack_prompts(const std::vector<int32_t>& packed);

}  // namespace tpx
