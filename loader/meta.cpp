// The Meta-format reader. Each HF tensor is assembled from one part per file (Meta's split:
// wq/wk/wv/w1/w3/output on dim 0, wo/w2 on dim 1, tok_embeddings on dim 0 or 1, 1-D tensors
// replicated); a read maps every result row to its file part(s) and, for q/k, to its Meta row.
// Reads are cut into chunks of whole rows (whole heads for q/k) fixed by the tensor's geometry
// alone, so that read_bytes() -- what the planner promises -- is exactly what read() reads.
#include "loader/meta.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>

#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/path.h"
#include "common/task_pool.h"
#include "loader/checkpoint.h"
#include "loader/meta_params.h"
#include "loader/regular_file.h"
#include "loader/torch_zip.h"

namespace fs = std::filesystem;

namespace tpx {
namespace {

using json = nlohmann::json;

// Result elements per chunk: 4 MiB of f32, 2 MiB of bf16 (the GPU backend's staging buffers
// hold one loader read, kMaxReadBytes, and two pages more), and a Llama head (128 rows of up to
// 8192) fits one.
constexpr uint64_t kChunkElems = 1u << 20;

std::string file_name(const std::string& path) { return fs::path(path).filename().string(); }

const char* dtype_config_name(DType t) {
    switch (t) {
        case DType::kBF16: return "bfloat16";
        case DType::kF16: return "float16";
        default: return "float32";
    }
}

class MetaCheckpoint : public Checkpoint {
public:
    MetaCheckpoint(const std::string& path, int threads) : Checkpoint(path), pool_(threads) {}
    ~MetaCheckpoint() override {
        for (auto& [file, fd] : fds_) ::close(fd);
    }
    const char* format() const override { return "meta"; }
    int read_threads() const override { return pool_.threads(); }
    void open();
    uint64_t read_bytes(const std::string& name, const Slice& slice) const override;
    std::vector<std::string> files() const override {
        std::vector<std::string> out;
        for (const auto& [file, fd] : fds_) out.push_back(file);
        return out;
    }
    std::string source_of(const std::string& name) const override {
        const Layout& L = layouts_.at(tensor(name).name);
        std::string s = L.meta_name + (L.split < 0 ? " (replicated; read from " + file_name(L.parts.front().file) + ")"
                                                   : " in " + std::to_string(L.parts.size()) + " file(s), split on dim " + std::to_string(L.split));
        if (L.group) s += ", rows permuted";
        return s;
    }
    using Checkpoint::read;
    void read(const std::vector<ReadRequest>& requests, ReadSink& sink) override;

private:
    struct Part {
        std::string file;
        uint64_t offset = 0;          // absolute offset of its first element
        std::vector<int64_t> shape;
        int64_t begin = 0;            // its first index along the split dim
    };
    struct Layout {
        std::string meta_name;
        int split = -1;               // the dim the parts are concatenated on; -1 replicated
        int64_t group = 0;            // q/k: rows per head (permuted within); 0 = no permutation
        std::vector<Part> parts;
    };
    // The reads of one chunk of a result: whole result rows [first, end) (in elements).
    struct FileReads {
        const std::string* file;
        std::vector<Span> spans;      // sorted by file offset
        std::vector<ReadOp> reads;
    };
    struct Chunk {
        uint64_t first = 0, end = 0;
        std::vector<FileReads> files;
    };

    void assemble(const MetaParams& p, const std::map<std::string, std::vector<std::pair<std::string, PickledTensor>>>& by_name,
                  const std::map<std::string, TorchArchive>& archives);
    void check_params(const MetaParams& p);
    std::vector<Chunk> plan_chunks(const TensorInfo& t, const Slice& s) const;
    void pread_fully(const std::string& file, void* dst, uint64_t bytes, uint64_t offset);
    void read_staged(const ReadRequest& r, const Chunk& c, ReadSink& sink);

    TaskPool pool_;
    std::map<std::string, Layout> layouts_;  // by HF name
    std::map<std::string, int> fds_;         // opened in open(), read-only afterwards
};

void MetaCheckpoint::open() {
    const fs::path dir(path_);
    const std::string params_file = (dir / "params.json").string();
    const std::string params_text = read_text_file(params_file);
    count_header(params_text.size());
    const MetaParams p = parse_meta_params(params_file, params_text);

    // consolidated.00.pth ... consolidated.NN.pth, none missing.
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (n.rfind("consolidated.", 0) == 0 && e.path().extension() == ".pth") files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    for (size_t i = 0; i < files.size(); ++i) {
        char want[64];
        std::snprintf(want, sizeof(want), "consolidated.%02zu.pth", i);
        if (file_name(files[i]) != want)
            throw CheckpointError(path_ + ": holds " + std::to_string(files.size()) + " consolidated.*.pth files but not " + want +
                                  " (found " + file_name(files[i]) + " in its place)");
    }

    // Every archive (each pickle parsed before any data is read), then each tensor's parts.
    std::map<std::string, TorchArchive> archives;
    std::map<std::string, std::vector<std::pair<std::string, PickledTensor>>> by_name;
    for (const std::string& f : files) {
        TorchArchive a = open_torch_archive(f);
        // torch.save names each archive after its file (saved through a buffer: "archive/"): an
        // archive named after another of the files is that file copied (a copy of
        // consolidated.00.pth as .01 would be read as the second part of every tensor).
        for (const auto& [g, b] : archives) {
            if (b.prefix != a.prefix) continue;
            const bool g_named = a.prefix == fs::path(g).stem().string() + "/", f_named = a.prefix == fs::path(f).stem().string() + "/";
            if (g_named || f_named) {
                const std::string& copy = g_named ? f : g;
                throw CheckpointError(copy + ": holds the archive " + a.prefix + " as " + file_name(copy == f ? g : f) +
                                      " does: a copy of it, not another part");
            }
        }
        count_header(a.header_bytes);
        for (const PickledTensor& t : a.tensors) by_name[t.name].push_back({f, t});
        archives.emplace(f, std::move(a));
        fds_[f] = open_checkpoint_file(f);
    }
    // An archive named after another of the files, none of them a copy (above): the files were
    // renamed or swapped, and their parts would be assembled out of order.
    for (const auto& [f, a] : archives)
        if (a.prefix != fs::path(f).stem().string() + "/" && a.prefix.rfind("consolidated.", 0) == 0)
            throw CheckpointError(f + ": holds the archive " + a.prefix + ", torch.save's name for " + a.prefix.substr(0, a.prefix.size() - 1) +
                                  ".pth: the files were renamed or swapped");
    assemble(p, by_name, archives);
    check_params(p);
}

void MetaCheckpoint::assemble(const MetaParams& p, const std::map<std::string, std::vector<std::pair<std::string, PickledTensor>>>& by_name,
                              const std::map<std::string, TorchArchive>& archives) {
    const size_t nfiles = archives.size();
    std::vector<TensorInfo> tensors;
    for (const auto& [meta, parts] : by_name) {
        const std::string& first = parts.front().first;
        const PickledTensor& t0 = parts.front().second;
        if (parts.size() != nfiles) {
            std::string missing;
            for (const auto& [f, a] : archives)
                if (std::none_of(parts.begin(), parts.end(), [&](const auto& x) { return x.first == f; })) missing = file_name(f);
            throw CheckpointError(path_ + ": tensor '" + meta + "' is in " + file_name(first) + " but not in " + missing +
                                  " (each of Meta's files holds its part of every tensor)");
        }
        if (meta == "rope.freqs") continue;  // recomputed from rope_theta, as HF's conversion drops it
        MetaNameRule rule;
        if (!map_meta_name(meta, p, rule))
            throw CheckpointError(first + ": tensor '" + meta + "' is not one of Meta's Llama tensors (tok_embeddings, norm, output, "
                                  "layers.N.attention.wq/wk/wv/wo, feed_forward.w1/w2/w3, attention_norm, ffn_norm, rope.freqs)");
        if (t0.shape.empty() || t0.shape.size() > 2 || (rule.split >= 0) != (t0.shape.size() == 2))
            throw CheckpointError(first + ": tensor '" + meta + "' has shape " + shape_string(t0.shape) + ", not the " +
                                  (rule.split >= 0 ? "2-D" : "1-D") + " tensor Meta's Llama has");
        if (rule.split == 2) {  // Llama 3 splits the vocabulary (dim 0), Llama 1/2 the embedding (dim 1)
            if (nfiles == 1 || t0.shape[1] == p.dim) rule.split = 0;
            else if (t0.shape[1] * (int64_t)nfiles == p.dim) rule.split = 1;
            else
                throw CheckpointError(first + ": tensor '" + meta + "' part " + shape_string(t0.shape) + " is neither split on dim 0 (" +
                                      std::to_string(p.dim) + " columns, params.json \"dim\") nor on dim 1 (" + std::to_string(p.dim) +
                                      " / " + std::to_string(nfiles) + " files)");
        }
        Layout L;
        L.meta_name = meta;
        L.split = rule.split;
        TensorInfo info;
        info.name = rule.hf;
        info.dtype = t0.dtype;
        info.shape = t0.shape;
        info.file = first;
        int64_t at = 0;
        for (const auto& [f, t] : parts) {
            // Same dtype, and the same extent on every dim Meta does not split.
            bool agree = t.dtype == t0.dtype && t.shape.size() == t0.shape.size();
            for (size_t d = 0; agree && d < t.shape.size(); ++d) agree = (int)d == L.split || t.shape[d] == t0.shape[d];
            if (!agree)
                throw CheckpointError(path_ + ": tensor '" + meta + "' is " + dtype_name(t0.dtype) + " " + shape_string(t0.shape) + " in " +
                                      file_name(first) + " but " + dtype_name(t.dtype) + " " + shape_string(t.shape) + " in " + file_name(f) +
                                      (L.split < 0 ? " (a replicated tensor: every file holds it whole)"
                                                   : " (Meta splits it on dim " + std::to_string(L.split) + "; the other dim must agree)"));
            // A row-major view, wherever it starts in its storage.
            int64_t want = 1;
            for (size_t d = t.shape.size(); d-- > 0;) {
                if (t.shape[d] > 1 && t.stride[d] != want)
                    throw CheckpointError(f + ": tensor '" + meta + "' " + shape_string(t.shape) + " has strides that are not row-major; "
                                          "tpx reads contiguous tensors only");
                want *= t.shape[d];
            }
            if (L.split < 0 && !L.parts.empty()) continue;  // replicated: every copy checked, the first file's read
            Part part{f, archives.at(f).storages.at(t.storage_key).offset + (uint64_t)t.storage_offset * dtype_size(t.dtype), t.shape, at};
            if (L.split >= 0) at += t.shape[L.split];
            L.parts.push_back(std::move(part));
        }
        if (L.split >= 0) info.shape[L.split] = at;
        if (rule.permute) {
            L.group = info.shape[0] / rule.heads;
            if (info.shape[0] % rule.heads != 0 || L.group % 2 != 0)
                throw CheckpointError(path_ + ": tensor '" + meta + "' has " + std::to_string(info.shape[0]) + " rows, not " +
                                      std::to_string(rule.heads) + " heads of an even head dim (params.json " + p.file + ")");
        }
        info.nbytes = (uint64_t)info.numel() * dtype_size(info.dtype);
        info.offset = L.parts.front().offset;
        layouts_[info.name] = std::move(L);
        tensors.push_back(std::move(info));
    }
    set_tensors(std::move(tensors));
}

// params.json against the tensors: the shapes it implies, the layer count, the vocabulary; and
// the config.json the rest of tpx reads, with the FFN width taken from w1.
void MetaCheckpoint::check_params(const MetaParams& p) {
    auto get = [&](const std::string& meta, const std::string& hf, const std::string& because) -> const TensorInfo& {
        const TensorInfo* t = find(hf);
        if (!t) throw CheckpointError(path_ + ": has no tensor '" + meta + "', which " + because + " implies");
        return *t;
    };
    const TensorInfo& embed = get("tok_embeddings.weight", "model.embed_tokens.weight", "a Meta Llama checkpoint");
    const TensorInfo& w1 = get("layers.0.feed_forward.w1.weight", "model.layers.0.mlp.gate_proj.weight", "params.json \"n_layers\"");
    const int64_t vocab = embed.shape[0], ffn = w1.shape[0], hd = p.dim / p.n_heads, D = p.dim;
    if (p.vocab_size > 0 && p.vocab_size != vocab)
        throw CheckpointError(p.file + ": \"vocab_size\" = " + std::to_string(p.vocab_size) + " but tok_embeddings.weight has " +
                              std::to_string(vocab) + " rows");
    auto expect = [&](const std::string& meta, const std::string& hf, std::vector<int64_t> shape, const std::string& because) {
        const TensorInfo& t = get(meta, hf, "params.json " + because);
        if (t.shape != shape)
            throw CheckpointError(p.file + ": " + because + " implies " + meta + " " + shape_string(shape) + ", but the files hold " +
                                  shape_string(t.shape));
    };
    const std::string dim = "\"dim\" = " + std::to_string(D);
    const std::string q = dim + " and \"n_heads\" = " + std::to_string(p.n_heads);
    const std::string kv = q + " and \"n_kv_heads\" = " + std::to_string(p.n_kv_heads);
    const std::string f = dim + " (with layers.0.feed_forward.w1's " + std::to_string(ffn) + " rows)";
    if (const int64_t want = meta_ffn_width(p); want > 0 && want != ffn) {
        char mult[32] = "null";
        if (p.ffn_dim_multiplier > 0) std::snprintf(mult, sizeof(mult), "%g", p.ffn_dim_multiplier);
        throw CheckpointError(p.file + ": " + dim + " and \"multiple_of\" = " + std::to_string(p.multiple_of) + " and \"ffn_dim_multiplier\" = " +
                              mult + " imply layers.0.feed_forward.w1.weight [" + std::to_string(want) + ", " + std::to_string(D) +
                              "], but the files hold " + shape_string(w1.shape));
    }
    expect("tok_embeddings.weight", embed.name, {vocab, D}, dim);
    expect("norm.weight", "model.norm.weight", {D}, dim);
    const bool has_output = find("lm_head.weight") != nullptr;
    if (has_output) expect("output.weight", "lm_head.weight", {vocab, D}, dim + " (with tok_embeddings' " + std::to_string(vocab) + " rows)");
    for (int64_t l = 0; l < p.n_layers; ++l) {
        const std::string M = "layers." + std::to_string(l) + ".", H = "model.layers." + std::to_string(l) + ".";
        expect(M + "attention.wq.weight", H + "self_attn.q_proj.weight", {p.n_heads * hd, D}, q);
        expect(M + "attention.wk.weight", H + "self_attn.k_proj.weight", {p.n_kv_heads * hd, D}, kv);
        expect(M + "attention.wv.weight", H + "self_attn.v_proj.weight", {p.n_kv_heads * hd, D}, kv);
        expect(M + "attention.wo.weight", H + "self_attn.o_proj.weight", {D, p.n_heads * hd}, q);
        expect(M + "feed_forward.w1.weight", H + "mlp.gate_proj.weight", {ffn, D}, f);
        expect(M + "feed_forward.w2.weight", H + "mlp.down_proj.weight", {D, ffn}, f);
        expect(M + "feed_forward.w3.weight", H + "mlp.up_proj.weight", {ffn, D}, f);
        expect(M + "attention_norm.weight", H + "input_layernorm.weight", {D}, dim);
        expect(M + "ffn_norm.weight", H + "post_attention_layernorm.weight", {D}, dim);
    }
    if (tensors().size() != 2 + (size_t)has_output + 9 * (size_t)p.n_layers)
        for (const auto& [hf, L] : layouts_) {
            if (L.meta_name.rfind("layers.", 0) != 0) continue;
            const std::string digits = L.meta_name.substr(7, L.meta_name.find('.', 7) - 7);  // (map_meta_name's: digits only)
            if (digits.size() > 18 || std::stoll(digits) >= p.n_layers)
                throw CheckpointError(p.file + ": \"n_layers\" = " + std::to_string(p.n_layers) + " but the files hold " + L.meta_name);
        }

    json c = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", vocab}, {"hidden_size", D},
              {"intermediate_size", ffn}, {"num_hidden_layers", p.n_layers}, {"num_attention_heads", p.n_heads},
              {"num_key_value_heads", p.n_kv_heads}, {"head_dim", hd}, {"rms_norm_eps", p.norm_eps}, {"rope_theta", p.rope_theta},
              {"max_position_embeddings", p.max_seq_len}, {"hidden_act", "silu"}, {"tie_word_embeddings", !has_output},
              {"torch_dtype", dtype_config_name(embed.dtype)}};
    // Llama 3.1's apply_scaling: factor 8 (rope_scaling_factor where given), 1 and 4, over 8192.
    if (p.use_scaled_rope)
        c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", p.rope_scaling_factor}, {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
    config_json_ = c.dump(2);
}

std::vector<MetaCheckpoint::Chunk> MetaCheckpoint::plan_chunks(const TensorInfo& t, const Slice& s) const {
    if (s.index >= 0) throw CheckpointError(path_ + ": tensor '" + t.name + "' has no stacked entries to index");
    const std::vector<int64_t> out = slice_shape(t, s);
    const Layout& L = layouts_.at(t.name);
    // As a [rows, cols] matrix: a 1-D tensor is one row, its slice a column range.
    const bool flat = t.shape.size() == 1;
    const int64_t cols = flat ? t.shape[0] : t.shape[1];
    const bool whole = s.dim == 0 && s.start == 0 && s.length < 0;
    const int64_t r0 = flat || whole || s.dim == 1 ? 0 : s.start, rows = flat ? 1 : out[0];
    const int64_t c0 = whole || (!flat && s.dim == 0) ? 0 : s.start, width = flat ? out[0] : out[1];
    const size_t esize = dtype_size(t.dtype);
    std::vector<Chunk> chunks;
    if (rows == 0 || width == 0) return chunks;
    int64_t per_chunk = std::max<int64_t>(1, (int64_t)kChunkElems / width);
    if (L.group > 0 && per_chunk >= L.group) per_chunk -= per_chunk % L.group;  // whole heads
    const int64_t half = L.group / 2;
    for (int64_t a = 0; a < rows; a += per_chunk) {
        const int64_t b = std::min(rows, a + per_chunk);
        Chunk c{(uint64_t)(a * width), (uint64_t)(b * width), {}};
        std::vector<std::pair<const Part*, Span>> spans;
        auto emit = [&](const Part* part, uint64_t src, uint64_t elems, uint64_t dst) {
            if (!spans.empty()) {  // one run where the file and the result are both contiguous
                auto& [pp, last] = spans.back();
                if (pp == part && last.src_offset + last.elems * esize == src && last.dst_elem + last.elems == dst) {
                    last.elems += elems;
                    return;
                }
            }
            spans.push_back({part, Span{src, elems, dst}});
        };
        for (int64_t i = a; i < b; ++i) {
            const int64_t r = r0 + i;
            // HF row r of head h is Meta row h*hd + 2p + s, where r = h*hd + s*hd/2 + p.
            const int64_t m = L.group ? r - r % L.group + 2 * (r % half) + (r % L.group) / half : r;
            const uint64_t dst = (uint64_t)(i * width);
            if (L.split <= 0) {  // the row lies in one part, all its columns
                const Part* part = &L.parts.front();
                for (const Part& q : L.parts)
                    if (!flat && m >= q.begin && m < q.begin + q.shape[0]) part = &q;
                const int64_t local = flat ? 0 : m - part->begin;
                emit(part, part->offset + (uint64_t)(local * cols + c0) * esize, (uint64_t)width, dst);
                continue;
            }
            for (const Part& q : L.parts) {  // columns split over the parts
                const int64_t lo = std::max(c0, q.begin), hi = std::min(c0 + width, q.begin + q.shape[1]);
                if (lo >= hi) continue;
                emit(&q, q.offset + (uint64_t)(m * q.shape[1] + lo - q.begin) * esize, (uint64_t)(hi - lo), dst + (uint64_t)(lo - c0));
            }
        }
        for (const Part& q : L.parts) {
            FileReads fr{&q.file, {}, {}};
            for (const auto& [pp, span] : spans)
                if (pp == &q) fr.spans.push_back(span);
            if (fr.spans.empty()) continue;
            std::sort(fr.spans.begin(), fr.spans.end(), [](const Span& x, const Span& y) { return x.src_offset < y.src_offset; });
            fr.reads = plan_reads(fr.spans, esize);
            c.files.push_back(std::move(fr));
        }
        chunks.push_back(std::move(c));
    }
    return chunks;
}

uint64_t MetaCheckpoint::read_bytes(const std::string& name, const Slice& slice) const {
    uint64_t bytes = 0;
    for (const Chunk& c : plan_chunks(tensor(name), slice))
        for (const FileReads& f : c.files)
            for (const ReadOp& op : f.reads) bytes += op.bytes;
    return bytes;
}

void MetaCheckpoint::pread_fully(const std::string& file, void* dst, uint64_t bytes, uint64_t offset) {
    pread_counted(fds_.at(file), file, dst, bytes, offset);
}

// One chunk through the sink's staging buffers: pread straight into it where a read is one span
// copied as stored, else into scratch and converted span by span.
void MetaCheckpoint::read_staged(const ReadRequest& r, const Chunk& c, ReadSink& sink) {
    const DType src_type = tensor(r.tensor).dtype;
    const size_t dst_size = dtype_size(r.dst_type);
    before_read();  // before the sink's buffer is taken: a stop returns none unfilled
    char* memory = static_cast<char*>(sink.acquire(r, c.first * dst_size, (c.end - c.first) * dst_size));
    std::vector<char> scratch;
    for (const FileReads& f : c.files)
        for (const ReadOp& op : f.reads) {
            const Span& one = f.spans[op.first_span];
            if (op.last_span == op.first_span + 1 && r.dst_type == src_type) {  // straight into the result
                pread_fully(*f.file, memory + (one.dst_elem - c.first) * dst_size, op.bytes, op.offset);
                continue;
            }
            scratch.resize(op.bytes);
            pread_fully(*f.file, scratch.data(), op.bytes, op.offset);
            for (size_t i = op.first_span; i < op.last_span; ++i) {
                const Span& s = f.spans[i];
                convert(scratch.data() + (s.src_offset - op.offset), src_type, memory + (s.dst_elem - c.first) * dst_size, r.dst_type,
                        s.elems);
            }
        }
    sink.commit(r, memory, c.first * dst_size, (c.end - c.first) * dst_size);
}

void MetaCheckpoint::read(const std::vector<ReadRequest>& requests, ReadSink& sink) {
    // Every request planned (and checked) before any byte is read.
    std::vector<std::vector<Chunk>> plans(requests.size());
    for (size_t q = 0; q < requests.size(); ++q) {
        const ReadRequest& r = requests[q];
        plans[q] = plan_chunks(checked(r), r.slice);
        for (const Chunk& c : plans[q])
            TPX_CHECK((c.end - c.first) * dtype_size(r.dst_type) <= sink.chunk_bytes(),
                      "a read sink's chunk of " + std::to_string(sink.chunk_bytes()) + " bytes is below the " +
                          std::to_string((c.end - c.first) * dtype_size(r.dst_type)) + " one chunk of '" + r.tensor + "' produces");
    }
    std::vector<std::function<void()>> tasks;
    for (size_t q = 0; q < requests.size(); ++q)
        for (const Chunk& c : plans[q]) tasks.push_back([&, q, c = &c] { read_staged(requests[q], *c, sink); });
    pool_.run(tasks);
}

}  // namespace

bool is_meta_folder(const std::string& path) {
    const fs::path dir(path);
    return is_folder<CheckpointError>(dir) && path_exists<CheckpointError>(dir / "params.json") &&
           path_exists<CheckpointError>(dir / "consolidated.00.pth");
}

void check_folder_layout(const std::string& path) {
    const fs::path dir(path);
    const bool params = path_exists<CheckpointError>(dir / "params.json"), first = path_exists<CheckpointError>(dir / "consolidated.00.pth");
    std::string hf;  // Hugging Face's files here
    for (const char* name : {"config.json", "model.safetensors", "model.safetensors.index.json"})
        if (path_exists<CheckpointError>(dir / name)) hf += (hf.empty() ? "" : ", ") + std::string(name);
    if (params && first && !hf.empty())
        throw CheckpointError(path + ": holds both Meta's checkpoint (params.json, consolidated.*.pth) and Hugging Face's (" + hf +
                              "): which to load is ambiguous; give a folder holding one");
    if ((params && first) || !hf.empty()) return;
    std::string shard;  // any consolidated.NN.pth
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end && shard.empty(); it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.rfind("consolidated.", 0) == 0 && it->path().extension() == ".pth") shard = name;
    }
    if (ec) throw CheckpointError(path + ": cannot be listed: " + ec.message());
    if (params)
        throw CheckpointError(path + ": has params.json but no consolidated.00.pth (Meta's checkpoint) and no config.json (Hugging Face's)");
    if (!shard.empty())
        throw CheckpointError(path + ": has " + shard + " but " + (first ? "" : "no consolidated.00.pth and ") +
                              "no params.json (Meta's checkpoint needs both)");
}

std::unique_ptr<Checkpoint> open_meta_checkpoint(const std::string& path, int threads) {
    auto c = std::make_unique<MetaCheckpoint>(path, threads);
    c->open();
    return c;
}

}  // namespace tpx
