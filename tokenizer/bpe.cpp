// BPE merging as HF's Word::merge_all does it: a priority queue of (rank, position) over a
// linked list of symbols, lowest rank first and leftmost among equal ranks; stale queue entries
// are skipped by re-checking the pair they were made for.
#include "tokenizer/bpe.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <queue>
#include <unordered_map>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace tpx::tok {

namespace {

// Pieces up to this many bytes are cached; HF caches short words too (the cache never changes
// a result, it only saves merging again).
constexpr size_t kMaxCachedPiece = 256;
constexpr size_t kMaxCacheEntries = 1 << 20;

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

}  // namespace

Bpe::Bpe(Bpe&& o) noexcept
    : vocab_(std::move(o.vocab_)), id_to_token_(std::move(o.id_to_token_)), has_id_(std::move(o.has_id_)),
      merges_(std::move(o.merges_)), unk_id_(o.unk_id_), fuse_unk_(o.fuse_unk_), byte_fallback_(o.byte_fallback_),
      ignore_merges_(o.ignore_merges_), prefix_(std::move(o.prefix_)), suffix_(std::move(o.suffix_)),
      cache_(std::move(o.cache_)) {
    std::copy(std::begin(o.byte_ids_), std::end(o.byte_ids_), byte_ids_);
}

Bpe Bpe::from_json(const nlohmann::json& m, const std::string& file) {
    std::string where = file + ": model";
    if (!m.is_object()) throw Error(file + ": no \"model\" object", kExitBadInput);
    std::string type = m.value("type", "BPE");
    if (type != "BPE")
        throw Error(where + " type \"" + type + "\" is not supported (tpx supports BPE only)", kExitBadInput);
    if (m.contains("dropout") && m["dropout"].is_number() && m["dropout"].get<double>() != 0.0)
        throw Error(where + ": BPE dropout is not supported (it makes encoding random)", kExitBadInput);
    if (!m.contains("vocab") || !m["vocab"].is_object()) throw Error(where + " has no \"vocab\" object", kExitBadInput);
    Bpe bpe;
    int32_t max_id = -1;
    std::unordered_map<int32_t, std::string> owner;  // the vocab entry of each id seen
    for (const auto& [token, id] : m["vocab"].items()) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
            throw Error(where + ": vocab entry \"" + token + "\" has id " + id.dump() + ", not an integer in [0, 2^31)", kExitBadInput);
        int32_t i = id.get<int32_t>();
        // One token an id: HF decodes an id two entries share as either, from run to run.
        if (const auto [first, fresh] = owner.emplace(i, token); !fresh)
            throw Error(where + ": vocab entries \"" + first->second + "\" and \"" + token + "\" share the id " + std::to_string(i), kExitBadInput);
        bpe.vocab_[token] = i;
        max_id = std::max(max_id, i);
    }
    // The table by id is dense: a vocabulary's ids run from 0 with few gaps, and one id far past
    // them would take its size in memory (10^9: 32 GB) for nothing.
    const int64_t entries = (int64_t)bpe.vocab_.size(), bound = 2 * entries + 65536;
    if (max_id >= bound)
        throw Error(where + ": vocab entry \"" + owner[max_id] + "\" has id " + std::to_string(max_id) + ", far past the vocabulary's " +
                        std::to_string(entries) + " entries (ids run from 0; tpx takes ids below " + std::to_string(bound) + " here)",
                    kExitBadInput);
    bpe.id_to_token_.assign(max_id + 1, std::string());
    bpe.has_id_.assign(max_id + 1, false);
    for (const auto& [token, id] : bpe.vocab_) {
        bpe.id_to_token_[id] = token;
        bpe.has_id_[id] = true;
    }
    auto opt_string = [&](const char* key) {
        return m.contains(key) && m[key].is_string() ? m[key].get<std::string>() : std::string();
    };
    bpe.prefix_ = opt_string("continuing_subword_prefix");
    bpe.suffix_ = opt_string("end_of_word_suffix");
    bpe.fuse_unk_ = m.value("fuse_unk", false);
    bpe.byte_fallback_ = m.value("byte_fallback", false);
    bpe.ignore_merges_ = m.value("ignore_merges", false);
    std::string unk = opt_string("unk_token");
    if (!unk.empty()) {
        auto it = bpe.vocab_.find(unk);
        if (it == bpe.vocab_.end()) throw Error(where + ": unk_token \"" + unk + "\" is not in the vocab", kExitBadInput);
        bpe.unk_id_ = it->second;
    }
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        bpe.byte_ids_[b] = bpe.token_to_id(name);
    }

    const nlohmann::json merges = m.value("merges", nlohmann::json::array());
    if (!merges.is_array()) throw Error(where + ": \"merges\" must be a list", kExitBadInput);
    bpe.merges_.reserve(merges.size() * 2);
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        const auto& e = merges[rank];
        std::string a, b;
        if (e.is_string()) {
            // "a b": the split is at the first space (tokens never contain one in this form).
            const std::string& s = e.get_ref<const std::string&>();
            size_t sp = s.find(' ');
            if (sp == std::string::npos)
                throw Error(where + ": merge " + std::to_string(rank) + " \"" + s + "\" is not \"a b\"", kExitBadInput);
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
            a = e[0];
            b = e[1];
        } else {
            throw Error(where + ": merge " + std::to_string(rank) + " is " + e.dump() + ", not \"a b\" or [a, b]", kExitBadInput);
        }
        int32_t ia = bpe.token_to_id(a), ib = bpe.token_to_id(b);
        // With a continuing_subword_prefix the right half carries it, the merged token once.
        std::string ab = a + b.substr(std::min(bpe.prefix_.size(), b.size()));
        int32_t iab = bpe.token_to_id(ab);
        if (ia < 0 || ib < 0 || iab < 0) {
            std::string missing = ia < 0 ? a : ib < 0 ? b : ab;
            throw Error(where + ": merge " + std::to_string(rank) + " (\"" + a + "\", \"" + b + "\") names \"" + missing +
                            "\", which is not in the vocab", kExitBadInput);
        }
        bpe.merges_[pair_key(ia, ib)] = {static_cast<int32_t>(rank), iab};
    }
    return bpe;
}

int32_t Bpe::token_to_id(std::string_view token) const {
    auto it = vocab_.find(std::string(token));
    return it == vocab_.end() ? -1 : it->second;
}

const std::string* Bpe::id_to_token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
    return &id_to_token_[id];
}

bool Bpe::find_merge(int32_t a, int32_t b, int32_t* rank, int32_t* id) const {
    auto it = merges_.find(pair_key(a, b));
    if (it == merges_.end()) return false;
    *rank = it->second.first;
    *id = it->second.second;
    return true;
}

void Bpe::tokenize(const std::string& piece, std::vector<int32_t>& out) const {
    if (piece.empty()) return;
    if (ignore_merges_) {
        auto it = vocab_.find(piece);
        if (it != vocab_.end()) {
            out.push_back(it->second);
            return;
        }
    }
    bool cacheable = piece.size() <= kMaxCachedPiece;
    if (cacheable) {
        std::lock_guard<std::mutex> lock(cache_mutex_);
        auto it = cache_.find(piece);
        if (it != cache_.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    size_t first = out.size();
    merge_word(piece, out);
    if (cacheable) {
        std::lock_guard<std::mutex> lock(cache_mutex_);
        if (cache_.size() >= kMaxCacheEntries) cache_.clear();
        cache_.emplace(piece, std::vector<int32_t>(out.begin() + first, out.end()));
    }
}

void Bpe::merge_word(const std::string& w, std::vector<int32_t>& out) const {
    std::vector<Symbol> symbols;
    symbols.reserve(w.size());
    auto add = [&](int32_t id, int32_t len) {
        int32_t n = static_cast<int32_t>(symbols.size());
        symbols.push_back(Symbol{id, n - 1, -1, len});
        if (n > 0) symbols[n - 1].next = n;
    };
    int32_t unk_len = -1;  // bytes of a pending (possibly fused) unknown, -1 when none
    std::string s;
    for (size_t i = 0; i < w.size();) {
        size_t start = i;
        i += utf8_length(static_cast<unsigned char>(w[i]));
        s.assign(w, start, i - start);
        if (start > 0) s.insert(0, prefix_);
        if (i == w.size()) s += suffix_;
        int32_t len = static_cast<int32_t>(s.size());
        auto it = vocab_.find(s);
        if (it != vocab_.end()) {
            if (unk_len >= 0) add(unk_id_, unk_len), unk_len = -1;
            add(it->second, len);
            continue;
        }
        if (byte_fallback_) {
            bool all = true;
            for (unsigned char b : s) all = all && byte_ids_[b] >= 0;
            if (all) {
                // HF adds the byte tokens without first flushing a pending unknown.
                for (unsigned char b : s) add(byte_ids_[b], 1);
                continue;
            }
        }
        if (unk_id_ >= 0) {
            if (unk_len >= 0 && fuse_unk_) {
                unk_len += len;
            } else {
                if (unk_len >= 0) add(unk_id_, unk_len);
                unk_len = len;
            }
        }
        // Without an unk_token HF drops a character it cannot encode.
    }
    if (unk_len >= 0) add(unk_id_, unk_len);
    merge_symbols(symbols);
    for (const Symbol& sym : symbols)
        if (sym.len != 0) out.push_back(sym.id);
}

void Bpe::merge_symbols(std::vector<Symbol>& symbols) const {
    struct Candidate {
        int32_t rank, pos, id;
        bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate> queue;
    int32_t rank, id;
    for (size_t i = 0; i + 1 < symbols.size(); ++i)
        if (find_merge(symbols[i].id, symbols[i + 1].id, &rank, &id)) queue.push({rank, static_cast<int32_t>(i), id});
    while (!queue.empty()) {
        Candidate top = queue.top();
        queue.pop();
        Symbol& left = symbols[top.pos];
        if (left.len == 0 || left.next < 0) continue;
        int32_t next_pos = left.next;
        Symbol right = symbols[next_pos];
        if (!find_merge(left.id, right.id, &rank, &id) || id != top.id) continue;
        left.id = top.id;
        left.len += right.len;
        left.next = right.next;
        symbols[next_pos].len = 0;
        if (right.next >= 0) symbols[right.next].prev = top.pos;
        if (left.prev >= 0 && find_merge(symbols[left.prev].id, left.id, &rank, &id)) queue.push({rank, left.prev, id});
        if (left.next >= 0 && find_merge(left.id, symbols[left.next].id, &rank, &id)) queue.push({rank, top.pos, id});
    }
}

}  // namespace tpx::tok
