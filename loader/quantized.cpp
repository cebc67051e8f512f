// The quantized reader (quantization_config itself: quant_config.cpp): packed tensors grouped into
// linears and validated, and each read of a virtual X.weight turned into reads of exactly the
// packed slices it needs, then dequantized (loader/dequant.h). read() and read_bytes() plan the
// packed reads with one function, so a rank's bytes read equal its plan's.
#include "loader/quantized.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>

#include "common/task_pool.h"
#include "loader/dequant.h"

namespace tpx {
namespace {

using Method = QuantConfig::Method;

[[noreturn]] void fail(const std::string& where, const std::string& message) { throw CheckpointError(where + ": " + message); }

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
std::string strip(const std::string& s, const std::string& suffix) { return s.substr(0, s.size() - suffix.size()); }
int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }  // a >= 0, b > 0: no a + b to overflow
bool is_float(DType t) { return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32; }

// One quantized linear of the checkpoint, presented as the F32 tensor X.weight [out, in].
struct QuantLinear {
    Method method = Method::kNone;
    int64_t out = 0, in = 0;
    std::string qweight, qzeros, scales, g_idx;  // GPTQ (g_idx empty: implicit i / group_size)
    int64_t groups = 0;
    std::string weight, scale_inv;               // FP8
};

// The part of the [out, in] weight a request reads.
struct Cut {
    int64_t out_begin = 0, out_len = 0, in_begin = 0, in_len = 0;
};

// One packed read of a request, landing at row `row` of buffer `part` of its tile.
enum Part { kQweight, kScales, kQzeros, kFp8Weight, kScaleInv, kParts };
struct PackedRead {
    std::string tensor;
    Slice slice;
    DType dtype;
    Part part;
    int64_t row;
};

// One request of a quantized linear being read: its cut, the rows' groups (GPTQ), the packed
// pieces read for it (dense, by part) and which held row of scales and zeros a group is.
struct Tile {
    const ReadRequest* r;
    const QuantLinear* l;
    Cut c;
    std::vector<int32_t> g_idx;
    std::vector<char> parts[kParts];
    std::vector<int32_t> row_of_group;
};

// Consecutive runs [begin, begin + len) of the groups the rows use.
std::vector<std::pair<int64_t, int64_t>> group_runs(const int32_t* g_idx, int64_t n, int64_t groups) {
    std::vector<char> used(groups, 0);
    for (int64_t i = 0; i < n; ++i) used[g_idx[i]] = 1;
    std::vector<std::pair<int64_t, int64_t>> runs;
    for (int64_t g = 0; g < groups; ++g) {
        if (!used[g]) continue;
        if (!runs.empty() && runs.back().first + runs.back().second == g) ++runs.back().second;
        else runs.push_back({g, 1});
    }
    return runs;
}

class QuantizedCheckpoint : public Checkpoint {
public:
    QuantizedCheckpoint(std::unique_ptr<Checkpoint> inner, const QuantConfig& q);
    const char* format() const override { return format_.c_str(); }
    int read_threads() const override { return inner_->read_threads(); }
    using Checkpoint::read;
    void read(const std::vector<ReadRequest>& requests, ReadSink& sink) override;
    uint64_t read_bytes(const std::string& name, const Slice& slice) const override;
    void set_control(const ReadControl* control) override { inner_->set_control(control); }  // the inner reader's reads
    const QuantConfig& quant() const { return q_; }
    bool has_linear(const std::string& name) const { return linears_.count(name) > 0; }
    std::vector<std::unique_ptr<PackedSlice>> read_packed_slices(const std::vector<ReadRequest>& requests);

private:
    void index_gptq(std::set<std::string>& hidden);
    void index_fp8(std::set<std::string>& hidden);
    Cut cut_of(const TensorInfo& t, const Slice& s) const;
    // Every row's group checked: inside [0, groups), and i / group_size without act-order.
    void check_g_idx(const QuantLinear& l, const int32_t* g_idx, int64_t begin, int64_t n) const;
    // The implicit or read g_idx of rows [begin, begin + n) for planning (the whole tensor is
    // read and checked once, outside any rank's accounting).
    std::vector<int32_t> planned_g_idx(const QuantLinear& l, int64_t begin, int64_t n) const;
    // The packed reads of a cut; `g_idx` holds the cut's rows' groups (GPTQ).
    std::vector<PackedRead> packed_reads(const QuantLinear& l, const Cut& c, const int32_t* g_idx) const;
    // The tiles' packed pieces: the rows' groups first (GPTQ), since they decide which scales
    // and zeros rows to read, then everything else in one batch.
    void read_packed(std::vector<Tile>& tiles);
    // The tile dequantized into the sink (straight into its memory when it takes F32 whole).
    void deliver(Tile& tile, ReadSink& sink) const;
    void add_inner_stats();

    std::unique_ptr<Checkpoint> inner_;
    TaskPool pool_;  // dequantization, as many threads as the inner reader has
    QuantConfig q_;
    std::string format_;
    std::map<std::string, QuantLinear> linears_;  // by virtual tensor name
    mutable std::mutex g_idx_mutex_;
    mutable std::map<std::string, std::vector<int32_t>> g_idx_cache_;
};

QuantizedCheckpoint::QuantizedCheckpoint(std::unique_ptr<Checkpoint> inner, const QuantConfig& q)
    : Checkpoint(inner->path()), inner_(std::move(inner)), pool_(inner_->read_threads()), q_(q) {
    config_json_ = inner_->config_json();
    generation_config_json_ = inner_->generation_config_json();
    format_ = std::string(inner_->format()) + ", " + q_.describe();
    std::set<std::string> hidden;  // packed tensors the virtual ones stand for
    if (q_.method == Method::kGptq) index_gptq(hidden);
    else index_fp8(hidden);
    std::vector<TensorInfo> tensors;
    for (const TensorInfo& t : inner_->tensors())
        if (!hidden.count(t.name)) tensors.push_back(t);
    for (const auto& [name, l] : linears_) {
        TensorInfo v;
        v.name = name;
        v.dtype = DType::kF32;
        v.shape = {l.out, l.in};
        const std::string& first = l.method == Method::kGptq ? l.qweight : l.weight;
        v.file = inner_->tensor(first).file;
        for (const std::string* part : {&l.qweight, &l.qzeros, &l.scales, &l.g_idx, &l.scale_inv})
            if (!part->empty() && *part != name) v.nbytes += inner_->tensor(*part).nbytes;
        if (l.method == Method::kFp8) v.nbytes += inner_->tensor(l.weight).nbytes;
        tensors.push_back(std::move(v));
    }
    set_tensors(std::move(tensors));
    count_header(inner_->stats().header_bytes);
    inner_->reset_stats();
}

void QuantizedCheckpoint::index_gptq(std::set<std::string>& hidden) {
    auto need = [&](const std::string& name, const std::string& of) -> const TensorInfo& {
        const TensorInfo* t = inner_->find(name);
        if (!t) fail(inner_->tensor(of).file, "tensor '" + of + "' has no '" + name + "' (a GPTQ linear is qweight, qzeros, scales and g_idx)");
        return *t;
    };
    for (const TensorInfo& t : inner_->tensors()) {
        if (!ends_with(t.name, ".qweight")) continue;
        const std::string prefix = strip(t.name, ".qweight");
        QuantLinear l;
        l.method = Method::kGptq;
        l.qweight = t.name;
        if (t.dtype != DType::kI32 || t.shape.size() != 2)
            fail(t.file, "tensor '" + t.name + "' is " + dtype_name(t.dtype) + " " + shape_string(t.shape) +
                             ", not I32 [in/8, out] (eight 4-bit values a word)");
        l.in = t.shape[0] * 8, l.out = t.shape[1];
        l.groups = q_.group_size > 0 ? ceil_div(l.in, q_.group_size) : 1;
        const std::string group_text = " (qweight " + shape_string(t.shape) + ": in = " + std::to_string(l.in) + ", out = " +
                                       std::to_string(l.out) + "; group_size " + std::to_string(q_.group_size) + ": " +
                                       std::to_string(l.groups) + " groups)";
        const TensorInfo& scales = need(prefix + ".scales", t.name);
        if (!is_float(scales.dtype) || scales.shape != std::vector<int64_t>{l.groups, l.out})
            fail(scales.file, "tensor '" + scales.name + "' is " + dtype_name(scales.dtype) + " " + shape_string(scales.shape) +
                                  ", expected F16 " + shape_string({l.groups, l.out}) + group_text);
        const TensorInfo& qzeros = need(prefix + ".qzeros", t.name);
        if (qzeros.dtype != DType::kI32 || qzeros.shape != std::vector<int64_t>{l.groups, ceil_div(l.out, 8)})
            fail(qzeros.file, "tensor '" + qzeros.name + "' is " + dtype_name(qzeros.dtype) + " " + shape_string(qzeros.shape) +
                                  ", expected I32 " + shape_string({l.groups, ceil_div(l.out, 8)}) + group_text);
        l.scales = scales.name, l.qzeros = qzeros.name;
        if (const TensorInfo* g = inner_->find(prefix + ".g_idx")) {
            if (g->dtype != DType::kI32 || g->shape != std::vector<int64_t>{l.in})
                fail(g->file, "tensor '" + g->name + "' is " + dtype_name(g->dtype) + " " + shape_string(g->shape) + ", expected I32 [" +
                                  std::to_string(l.in) + "]" + group_text);
            l.g_idx = g->name;
        } else if (q_.desc_act) {
            need(prefix + ".g_idx", t.name);
        }
        if (inner_->find(prefix + ".weight"))
            fail(t.file, "both '" + prefix + ".weight' and '" + t.name + "' are present: the linear is stored twice");
        for (const std::string* part : {&l.qweight, &l.scales, &l.qzeros, &l.g_idx})
            if (!part->empty()) hidden.insert(*part);
        linears_[prefix + ".weight"] = l;
    }
    for (const TensorInfo& t : inner_->tensors())
        for (const char* part : {".qzeros", ".scales", ".g_idx"})
            if (ends_with(t.name, part) && !inner_->find(strip(t.name, part) + ".qweight"))
                fail(t.file, "tensor '" + t.name + "' has no '" + strip(t.name, part) + ".qweight'");
    if (linears_.empty()) fail(path_, "config.json's quantization_config is GPTQ, but no tensor ends in .qweight");
}

void QuantizedCheckpoint::index_fp8(std::set<std::string>& hidden) {
    for (const TensorInfo& t : inner_->tensors()) {
        if (ends_with(t.name, ".input_scale") || ends_with(t.name, ".weight_scale") || ends_with(t.name, ".activation_scale"))
            fail(t.file, "tensor '" + t.name + "': static or per-tensor FP8 scales are not supported (fine-grained FP8 with "
                             "weight_scale_inv per block and dynamic activations only)");
        if (t.dtype == DType::kF8E5M2) fail(t.file, "tensor '" + t.name + "' is F8_E5M2: only float8_e4m3fn weights are supported");
        if (!ends_with(t.name, ".weight_scale_inv")) continue;
        const std::string weight = strip(t.name, "_scale_inv");
        const TensorInfo* w = inner_->find(weight);
        if (!w) fail(t.file, "tensor '" + t.name + "' has no '" + weight + "'");
        if (w->dtype != DType::kF8E4M3 || w->shape.size() != 2)
            fail(w->file, "tensor '" + weight + "' is " + dtype_name(w->dtype) + " " + shape_string(w->shape) +
                              ", but has a weight_scale_inv: expected F8_E4M3 [out, in]");
        QuantLinear l;
        l.method = Method::kFp8;
        l.out = w->shape[0], l.in = w->shape[1];
        l.weight = weight, l.scale_inv = t.name;
        const std::vector<int64_t> blocks = {ceil_div(l.out, q_.block_out), ceil_div(l.in, q_.block_in)};
        if (!is_float(t.dtype) || t.shape != blocks)
            fail(t.file, "tensor '" + t.name + "' is " + dtype_name(t.dtype) + " " + shape_string(t.shape) + ", expected F32 " +
                             shape_string(blocks) + ": one scale per " + std::to_string(q_.block_out) + "x" + std::to_string(q_.block_in) +
                             " block of '" + weight + "' " + shape_string(w->shape));
        hidden.insert(t.name), hidden.insert(weight);  // the virtual weight takes the F8 one's name
        linears_[weight] = l;
    }
    for (const TensorInfo& t : inner_->tensors())
        if (t.dtype == DType::kF8E4M3 && !linears_.count(t.name))
            fail(t.file, "tensor '" + t.name + "' is F8_E4M3 but has no '" + t.name + "_scale_inv'");
    if (linears_.empty()) fail(path_, "config.json's quantization_config is FP8, but no tensor has a weight_scale_inv");
}

Cut QuantizedCheckpoint::cut_of(const TensorInfo& t, const Slice& s) const {
    if (s.index >= 0) fail(t.file, "tensor '" + t.name + "' is quantized and 2-D: entry " + std::to_string(s.index) + " of it cannot be read");
    std::vector<int64_t> shape = slice_shape(t, s);
    Cut c{0, t.shape[0], 0, t.shape[1]};
    if (s.dim == 0) c.out_begin = s.start, c.out_len = shape[0];
    else c.in_begin = s.start, c.in_len = shape[1];
    return c;
}

void QuantizedCheckpoint::check_g_idx(const QuantLinear& l, const int32_t* g_idx, int64_t begin, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) {
        const int64_t g = g_idx[i], row = begin + i;
        if (g < 0 || g >= l.groups)
            fail(inner_->tensor(l.g_idx).file, "tensor '" + l.g_idx + "': g_idx[" + std::to_string(row) + "] = " + std::to_string(g) +
                                                   " is outside the " + std::to_string(l.groups) + " groups of '" + l.scales + "'");
        const int64_t want = q_.group_size > 0 ? row / q_.group_size : 0;
        if (!q_.desc_act && g != want)
            fail(inner_->tensor(l.g_idx).file, "tensor '" + l.g_idx + "': g_idx[" + std::to_string(row) + "] = " + std::to_string(g) +
                                                   ", but desc_act is false, which means row / group_size = " + std::to_string(want));
    }
}

std::vector<int32_t> QuantizedCheckpoint::planned_g_idx(const QuantLinear& l, int64_t begin, int64_t n) const {
    std::vector<int32_t> g(n);
    if (l.g_idx.empty()) {
        for (int64_t i = 0; i < n; ++i) g[i] = q_.group_size > 0 ? (int32_t)((begin + i) / q_.group_size) : 0;
        return g;
    }
    std::lock_guard<std::mutex> lock(g_idx_mutex_);
    auto it = g_idx_cache_.find(l.g_idx);
    if (it == g_idx_cache_.end()) {
        std::vector<int32_t> whole(l.in);
        inner_->read(l.g_idx, Slice::whole(), DType::kI32, whole.data());
        check_g_idx(l, whole.data(), 0, l.in);
        it = g_idx_cache_.emplace(l.g_idx, std::move(whole)).first;
    }
    std::copy(it->second.begin() + begin, it->second.begin() + begin + n, g.begin());
    return g;
}

std::vector<PackedRead> QuantizedCheckpoint::packed_reads(const QuantLinear& l, const Cut& c, const int32_t* g_idx) const {
    std::vector<PackedRead> reads;
    const bool out_cut = c.out_len != l.out;
    if (l.method == Method::kFp8) {
        const Slice w = out_cut ? Slice::range(0, c.out_begin, c.out_len)
                                : (c.in_len != l.in ? Slice::range(1, c.in_begin, c.in_len) : Slice::whole());
        reads.push_back({l.weight, w, DType::kF8E4M3, kFp8Weight, 0});
        const int64_t r0 = c.out_begin / q_.block_out, c0 = c.in_begin / q_.block_in;
        const Slice s = out_cut ? Slice::range(0, r0, ceil_div(c.out_begin + c.out_len, q_.block_out) - r0)
                                : (c.in_len != l.in ? Slice::range(1, c0, ceil_div(c.in_begin + c.in_len, q_.block_in) - c0) : Slice::whole());
        reads.push_back({l.scale_inv, s, DType::kF32, kScaleInv, 0});
        return reads;
    }
    if (out_cut) {  // every row: all groups, the cut's columns (qzeros: the packed words that hold them)
        const int64_t z0 = c.out_begin / 8;
        reads.push_back({l.qweight, Slice::range(1, c.out_begin, c.out_len), DType::kI32, kQweight, 0});
        reads.push_back({l.scales, Slice::range(1, c.out_begin, c.out_len), DType::kF32, kScales, 0});
        reads.push_back({l.qzeros, Slice::range(1, z0, ceil_div(c.out_begin + c.out_len, 8) - z0), DType::kI32, kQzeros, 0});
        return reads;
    }
    const int64_t p0 = c.in_begin / 8;
    reads.push_back({l.qweight, Slice::range(0, p0, ceil_div(c.in_begin + c.in_len, 8) - p0), DType::kI32, kQweight, 0});
    int64_t row = 0;  // whole rows of the groups the cut's rows use (with act-order, scattered)
    for (auto [g0, n] : group_runs(g_idx, c.in_len, l.groups)) {
        reads.push_back({l.scales, Slice::range(0, g0, n), DType::kF32, kScales, row});
        reads.push_back({l.qzeros, Slice::range(0, g0, n), DType::kI32, kQzeros, row});
        row += n;
    }
    return reads;
}

uint64_t QuantizedCheckpoint::read_bytes(const std::string& name, const Slice& slice) const {
    auto it = linears_.find(name);
    if (it == linears_.end()) return inner_->read_bytes(name, slice);
    const QuantLinear& l = it->second;
    const Cut c = cut_of(tensor(name), slice);
    uint64_t bytes = 0;
    std::vector<int32_t> g_idx;
    if (l.method == Method::kGptq) {
        planned_g_idx(l, 0, 0);  // the whole g_idx checked at planning, before any rank starts
        g_idx = planned_g_idx(l, c.in_begin, c.in_len);
        if (!l.g_idx.empty()) bytes += inner_->read_bytes(l.g_idx, Slice::range(0, c.in_begin, c.in_len));
    }
    for (const PackedRead& p : packed_reads(l, c, g_idx.data())) bytes += inner_->read_bytes(p.tensor, p.slice);
    return bytes;
}

void QuantizedCheckpoint::add_inner_stats() {
    ReadStats s = inner_->stats();
    inner_->reset_stats();
    for (const auto& [file, bytes] : s.data_bytes_per_file) count_data(file, bytes);
}

void QuantizedCheckpoint::read(const std::vector<ReadRequest>& requests, ReadSink& sink) {
    // One tile per request of a quantized linear; every request is checked before any read (the
    // g_idx values, data, when they are read: the planner has checked them all already).
    std::vector<ReadRequest> plain;
    std::vector<Tile> tiles;
    for (const ReadRequest& r : requests) {
        auto it = linears_.find(r.tensor);
        if (it == linears_.end()) {
            plain.push_back(r);
            continue;
        }
        const TensorInfo& t = checked(r);
        tiles.push_back(Tile{&r, &it->second, cut_of(t, r.slice), {}, {}, {}});
    }
    inner_->reset_stats();
    struct Count {
        QuantizedCheckpoint* self;
        ~Count() { self->add_inner_stats(); }
    } count{this};
    if (!plain.empty()) inner_->read(plain, sink);

    read_packed(tiles);
    // Dequantized and delivered a tile per task: tiles are many (seven linears a layer), and the
    // sink takes chunks from several threads at once.
    std::vector<std::function<void()>> tasks;
    for (Tile& tile : tiles) tasks.push_back([this, &tile, &sink] { deliver(tile, sink); });
    pool_.run(tasks);
}

std::vector<std::unique_ptr<PackedSlice>> QuantizedCheckpoint::read_packed_slices(const std::vector<ReadRequest>& requests) {
    std::vector<Tile> tiles;
    for (const ReadRequest& r : requests) {
        auto it = linears_.find(r.tensor);
        if (it == linears_.end()) fail(path_, "tensor '" + r.tensor + "' is not a quantized linear (its packed data was asked for)");
        ReadRequest as_f32 = r;
        as_f32.dst_type = DType::kF32;
        const TensorInfo& t = checked(as_f32);
        tiles.push_back(Tile{&r, &it->second, cut_of(t, r.slice), {}, {}, {}});
    }
    inner_->reset_stats();
    struct Count {
        QuantizedCheckpoint* self;
        ~Count() { self->add_inner_stats(); }
    } count{this};
    read_packed(tiles);
    std::vector<std::unique_ptr<PackedSlice>> out;
    for (Tile& tile : tiles) {
        const QuantLinear& l = *tile.l;
        const Cut& c = tile.c;
        auto p = std::make_unique<PackedSlice>();
        p->method = l.method;
        p->out_begin = c.out_begin, p->out_len = c.out_len, p->in_begin = c.in_begin, p->in_len = c.in_len;
        p->g_idx = std::move(tile.g_idx), p->row_of_group = std::move(tile.row_of_group);
        p->qweight = std::move(tile.parts[kQweight]), p->scales = std::move(tile.parts[kScales]);
        p->qzeros = std::move(tile.parts[kQzeros]), p->fp8_weight = std::move(tile.parts[kFp8Weight]);
        p->scale_inv = std::move(tile.parts[kScaleInv]);
        p->qzeros_cols = c.out_len != l.out ? ceil_div(c.out_begin + c.out_len, 8) - c.out_begin / 8 : ceil_div(l.out, 8);
        p->scale_cols = c.in_len != l.in ? ceil_div(c.in_begin + c.in_len, q_.block_in) - c.in_begin / q_.block_in : ceil_div(l.in, q_.block_in);
        p->block_out = q_.block_out, p->block_in = q_.block_in;
        p->zero_offset = q_.v2 ? 0 : 1;
        out.push_back(std::move(p));
    }
    return out;
}

void QuantizedCheckpoint::read_packed(std::vector<Tile>& tiles) {
    std::vector<ReadRequest> reads;
    std::vector<void*> targets;
    for (Tile& tile : tiles) {
        const QuantLinear& l = *tile.l;
        if (l.method != Method::kGptq) continue;
        tile.g_idx.resize(tile.c.in_len);
        if (l.g_idx.empty()) {
            tile.g_idx = planned_g_idx(l, tile.c.in_begin, tile.c.in_len);
            continue;
        }
        reads.push_back({l.g_idx, Slice::range(0, tile.c.in_begin, tile.c.in_len), DType::kI32, targets.size()});
        targets.push_back(tile.g_idx.data());
    }
    if (!reads.empty()) {
        HostSink to_g_idx(targets);
        inner_->read(reads, to_g_idx);
    }
    reads.clear(), targets.clear();
    for (Tile& tile : tiles) {
        const QuantLinear& l = *tile.l;
        if (l.method == Method::kGptq) check_g_idx(l, tile.g_idx.data(), tile.c.in_begin, tile.c.in_len);
        const std::vector<PackedRead> packed = packed_reads(l, tile.c, tile.g_idx.data());
        // Sizes first (a part's rows land at offsets), then the targets.
        uint64_t size[kParts] = {};
        for (const PackedRead& p : packed) {
            const TensorInfo& src = inner_->tensor(p.tensor);
            std::vector<int64_t> shape = slice_shape(src, p.slice);
            const uint64_t row_bytes = (uint64_t)shape[1] * dtype_size(p.dtype);
            size[p.part] = std::max<uint64_t>(size[p.part], (uint64_t)(p.row + shape[0]) * row_bytes);
        }
        for (int k = 0; k < kParts; ++k) tile.parts[k].resize(size[k]);
        for (const PackedRead& p : packed) {
            const uint64_t row_bytes = (uint64_t)slice_shape(inner_->tensor(p.tensor), p.slice)[1] * dtype_size(p.dtype);
            reads.push_back({p.tensor, p.slice, p.dtype, targets.size()});
            targets.push_back(tile.parts[p.part].data() + p.row * row_bytes);
        }
        if (l.method == Method::kGptq) {  // which row of the held scales and zeros a group is
            tile.row_of_group.assign(l.groups, -1);
            int32_t row = 0;
            if (tile.c.out_len != l.out) {
                for (int64_t g = 0; g < l.groups; ++g) tile.row_of_group[g] = (int32_t)g;
            } else {
                for (auto [g0, n] : group_runs(tile.g_idx.data(), tile.c.in_len, l.groups))
                    for (int64_t g = g0; g < g0 + n; ++g) tile.row_of_group[g] = row++;
            }
        }
    }
    if (!reads.empty()) {
        HostSink to_parts(targets);
        inner_->read(reads, to_parts);
    }
}

void QuantizedCheckpoint::deliver(Tile& tile, ReadSink& sink) const {
    const ReadRequest& r = *tile.r;
    const QuantLinear& l = *tile.l;
    const Cut& c = tile.c;
    const uint64_t n = (uint64_t)(c.out_len * c.in_len), dst_size = dtype_size(r.dst_type), bytes = n * dst_size;
    std::vector<float> scratch;
    float* out = nullptr;
    const bool direct = r.dst_type == DType::kF32 && sink.chunk_bytes() >= bytes && bytes > 0;
    if (direct) out = static_cast<float*>(sink.acquire(r, 0, bytes));
    else scratch.resize(n), out = scratch.data();
    if (l.method == Method::kGptq) {
        GptqTile t;
        t.in_begin = c.in_begin, t.in_len = c.in_len, t.out_begin = c.out_begin, t.out_len = c.out_len;
        t.qweight = reinterpret_cast<const int32_t*>(tile.parts[kQweight].data());
        t.g_idx = tile.g_idx.data();
        t.scales = reinterpret_cast<const float*>(tile.parts[kScales].data());
        t.qzeros = reinterpret_cast<const int32_t*>(tile.parts[kQzeros].data());
        t.qzeros_cols = c.out_len != l.out ? ceil_div(c.out_begin + c.out_len, 8) - c.out_begin / 8 : ceil_div(l.out, 8);
        t.row_of_group = &tile.row_of_group;
        t.zero_offset = q_.v2 ? 0 : 1;
        dequantize_gptq(t, out);
    } else {
        Fp8Tile t;
        t.out_begin = c.out_begin, t.out_len = c.out_len, t.in_begin = c.in_begin, t.in_len = c.in_len;
        t.block_out = q_.block_out, t.block_in = q_.block_in;
        t.weight = reinterpret_cast<const uint8_t*>(tile.parts[kFp8Weight].data());
        t.scale_inv = reinterpret_cast<const float*>(tile.parts[kScaleInv].data());
        t.scale_cols = c.in_len != l.in ? ceil_div(c.in_begin + c.in_len, q_.block_in) - c.in_begin / q_.block_in : ceil_div(l.in, q_.block_in);
        dequantize_fp8(t, out);
    }
    if (direct) {
        sink.commit(r, out, 0, bytes);
        return;
    }
    const uint64_t chunk = std::max<uint64_t>(dst_size, std::min(sink.chunk_bytes(), bytes) / dst_size * dst_size);
    for (uint64_t at = 0; at < bytes; at += chunk) {
        const uint64_t len = std::min(chunk, bytes - at);
        void* m = sink.acquire(r, at, len);
        convert(scratch.data() + at / dst_size, DType::kF32, m, r.dst_type, len / dst_size);
        sink.commit(r, m, at, len);
    }
}

}  // namespace

std::unique_ptr<Checkpoint> open_quantized(std::unique_ptr<Checkpoint> ckpt) {
    QuantConfig q = parse_quant_config(ckpt->config_json(), ckpt->path() + "/config.json");
    if (!q.quantized()) return ckpt;
    return std::make_unique<QuantizedCheckpoint>(std::move(ckpt), q);
}

QuantConfig quantization_of(const Checkpoint& ckpt) {
    const auto* q = dynamic_cast<const QuantizedCheckpoint*>(&ckpt);
    return q ? q->quant() : QuantConfig{};
}

bool is_quantized_linear(const Checkpoint& ckpt, const std::string& name) {
    const auto* q = dynamic_cast<const QuantizedCheckpoint*>(&ckpt);
    return q && q->has_linear(name);
}

std::vector<std::unique_ptr<PackedSlice>> read_packed_slices(Checkpoint& ckpt, const std::vector<ReadRequest>& requests) {
    auto* q = dynamic_cast<QuantizedCheckpoint*>(&ckpt);
    if (!q) throw CheckpointError(ckpt.path() + ": not a quantized checkpoint (packed slices were asked for)");
    return q->read_packed_slices(requests);
}

}  // namespace tpx
