// Checkpoint reads on the golden HF checkpoints (written by HF transformers' save_pretrained):
// every slice (rows, columns, expert ranges) equals the same slice cut out of the whole tensor;
// a slice read costs at most its bytes plus one page per row span; the HDF5 round trip is
// bit-identical; staged reads deliver the same bytes in bounded chunks; bad indexes are named.
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>

#include <nlohmann/json.hpp>

#include "loader/checkpoint.h"
#include "loader/hdf5.h"
#include "loader/safetensors.h"
#include "process.h"

namespace fs = std::filesystem;
using namespace tpx;

namespace {

const std::string kGolden = std::string(TPX_TEST_DATA) + "/golden";
const std::vector<std::string> kModels = {"llama-gqa", "llama-sharded", "qwen2-bias", "mixtral-moe"};

// The reference: slice `s` cut element by element out of a whole tensor held in memory.
std::vector<float> cut(const std::vector<float>& whole, const std::vector<int64_t>& shape, const Slice& s) {
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < s.dim; ++d) outer *= shape[d];
    for (size_t d = s.dim + 1; d < shape.size(); ++d) inner *= shape[d];
    std::vector<float> out;
    for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = s.start; i < s.start + s.length; ++i)
            for (int64_t k = 0; k < inner; ++k) out.push_back(whole[(o * shape[s.dim] + i) * inner + k]);
    return out;
}

std::vector<float> read_f32(Checkpoint& c, const std::string& name, const Slice& s) {
    std::vector<int64_t> shape = slice_shape(c.tensor(name), s);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> out(n, std::nanf("poison"));  // unwritten elements show as NaN
    c.read(name, s, DType::kF32, out.data());
    return out;
}

// Every slice of every 1-3 dimensional tensor of `c`, cut in 1, 2, 4 and 3 parts along each
// dimension, equals the cut of the whole tensor. Returns the number of slices checked.
int check_all_slices(Checkpoint& c) {
    int checked = 0;
    for (const TensorInfo& t : c.tensors()) {
        std::vector<float> whole = read_f32(c, t.name, Slice::whole());
        for (int dim = 0; dim < (int)t.shape.size(); ++dim)
            for (int parts : {1, 2, 3, 4}) {
                int64_t extent = t.shape[dim];
                for (int p = 0; p < parts; ++p) {
                    int64_t start = extent * p / parts, end = extent * (p + 1) / parts;
                    Slice s = Slice::range(dim, start, end - start);
                    std::vector<float> got = read_f32(c, t.name, s);
                    std::vector<float> want = cut(whole, t.shape, s);
                    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * 4))
                        << c.path() << " " << t.name << " dim " << dim << " [" << start << ", " << end << ")";
                    ++checked;
                }
            }
    }
    return checked;
}

std::string temp_dir() { return tpx_test::temp_dir(); }

}  // namespace

TEST(Loader, GoldenCheckpointsListEveryTensor) {
    for (const std::string& m : kModels) {
        auto c = Checkpoint::open(kGolden + "/" + m);
        EXPECT_GT(c->tensors().size(), 10u) << m;
        EXPECT_FALSE(c->config_json().empty()) << m;
        for (const TensorInfo& t : c->tensors()) EXPECT_EQ(t.dtype, DType::kBF16) << m << " " << t.name;
        ASSERT_NE(c->find("model.embed_tokens.weight"), nullptr) << m;
    }
    auto sharded = Checkpoint::open(kGolden + "/llama-sharded");
    EXPECT_EQ(sharded->files().size(), 17u);
}

TEST(Loader, SlicesEqualTheCutOfTheWholeTensor) {
    for (const std::string& m : kModels) {
        auto c = Checkpoint::open(kGolden + "/" + m);
        EXPECT_GT(check_all_slices(*c), 100) << m;
    }
}

TEST(Loader, Bf16ReadsAreTheCheckpointsBitsAndConvertExactlyToF32) {
    auto c = Checkpoint::open(kGolden + "/llama-gqa");
    const TensorInfo& t = c->tensor("model.layers.0.mlp.gate_proj.weight");
    std::vector<uint16_t> raw(t.numel());
    c->read(t.name, Slice::whole(), DType::kBF16, raw.data());
    std::ifstream in(t.file, std::ios::binary);
    in.seekg((std::streamoff)t.offset);
    std::vector<uint16_t> file(t.numel());
    in.read(reinterpret_cast<char*>(file.data()), (std::streamsize)t.nbytes);
    EXPECT_EQ(raw, file);
    std::vector<float> f = read_f32(*c, t.name, Slice::whole());
    for (size_t i = 0; i < raw.size(); ++i) ASSERT_EQ(f32_to_bf16(f[i]), raw[i]) << i;
}

TEST(Loader, ExpertRangesOfAStackedTensor) {
    // Stack mixtral-moe's per-expert w1 into one [E, out, in] tensor, as stacked-expert
    // checkpoints store it, and read expert ranges from it.
    auto c = Checkpoint::open(kGolden + "/mixtral-moe");
    const int experts = 4;
    std::vector<std::vector<uint16_t>> w(experts);
    std::vector<int64_t> shape;
    for (int e = 0; e < experts; ++e) {
        const TensorInfo& t = c->tensor("model.layers.0.block_sparse_moe.experts." + std::to_string(e) + ".w1.weight");
        shape = t.shape;
        w[e].resize(t.numel());
        c->read(t.name, Slice::whole(), DType::kBF16, w[e].data());
    }
    std::vector<uint16_t> stacked;
    for (auto& v : w) stacked.insert(stacked.end(), v.begin(), v.end());
    std::string dir = temp_dir();
    write_safetensors(dir + "/stacked.safetensors",
                      {{"experts.w1", DType::kBF16, {experts, shape[0], shape[1]}, stacked.data()}});
    auto s = Checkpoint::open(dir + "/stacked.safetensors");
    for (int first = 0; first < experts; ++first)
        for (int count = 1; first + count <= experts; ++count) {
            std::vector<uint16_t> got((size_t)count * w[0].size());
            s->reset_stats();
            s->read("experts.w1", Slice::range(0, first, count), DType::kBF16, got.data());
            for (int e = 0; e < count; ++e)
                EXPECT_EQ(0, std::memcmp(got.data() + e * w[0].size(), w[first + e].data(), w[0].size() * 2)) << first << "+" << e;
            EXPECT_EQ(s->stats().data_bytes, got.size() * 2);  // one contiguous read, nothing more
        }
    EXPECT_GT(check_all_slices(*s), 10);
    fs::remove_all(dir);
}

// Entries of a stacked tensor's dim 0, then a range within the entry (Slice::index): the
// pieces of transformers 5's experts.gate_up_proj [E, 2I, H]. Every entry, every dim, parts of
// 1 to 4, from the safetensors file and from its HDF5 conversion, against the per-expert tensor
// cut the same way; reads of an entry's rows cost their bytes alone; a missing entry is named.
TEST(Loader, RangesWithinOneEntryOfAStackedTensor) {
    auto c = Checkpoint::open(kGolden + "/mixtral-moe");
    const int experts = 4;
    std::vector<std::vector<float>> w(experts);
    std::vector<uint16_t> stacked;
    std::vector<int64_t> shape;
    for (int e = 0; e < experts; ++e) {
        const TensorInfo& t = c->tensor("model.layers.1.block_sparse_moe.experts." + std::to_string(e) + ".w2.weight");
        shape = t.shape;
        w[e] = read_f32(*c, t.name, Slice::whole());
        std::vector<uint16_t> raw(t.numel());
        c->read(t.name, Slice::whole(), DType::kBF16, raw.data());
        stacked.insert(stacked.end(), raw.begin(), raw.end());
    }
    std::string dir = temp_dir();
    write_safetensors(dir + "/stacked.safetensors", {{"experts.down_proj", DType::kBF16, {experts, shape[0], shape[1]}, stacked.data()}});
    convert_to_hdf5(*Checkpoint::open(dir + "/stacked.safetensors"), dir + "/stacked.h5");
    for (const char* file : {"/stacked.safetensors", "/stacked.h5"}) {
        auto s = Checkpoint::open(dir + file);
        for (int e = 0; e < experts; ++e)
            for (int dim = 0; dim < 2; ++dim)
                for (int parts : {1, 2, 3, 4})
                    for (int p = 0; p < parts; ++p) {
                        int64_t start = shape[dim] * p / parts, end = shape[dim] * (p + 1) / parts;
                        Slice slice = Slice::range(dim, start, end - start, e);
                        s->reset_stats();
                        std::vector<float> got = read_f32(*s, "experts.down_proj", slice);
                        std::vector<float> want = cut(w[e], shape, Slice::range(dim, start, end - start));
                        ASSERT_EQ(got, want) << file << " expert " << e << " dim " << dim << " [" << start << ", " << end << ")";
                        if (dim == 0 && std::string(file) == "/stacked.safetensors") {
                            EXPECT_EQ(s->stats().data_bytes, want.size() * 2) << "rows of one entry: one contiguous read";
                        }
                    }
        std::vector<float> out(shape[0] * shape[1]);
        try {
            s->read("experts.down_proj", Slice::range(0, 0, -1, experts), DType::kF32, out.data());
            FAIL() << file;
        } catch (const CheckpointError& e) {
            EXPECT_NE(std::string(e.what()).find("'experts.down_proj' [4, 128, 192]: entry 4 of dim 0 does not exist"), std::string::npos)
                << e.what();
        }
    }
    fs::remove_all(dir);
}

TEST(Loader, ReadCostIsTheSliceBytesPlusAtMostAPagePerRowSpan) {
    for (const std::string& m : kModels) {
        auto c = Checkpoint::open(kGolden + "/" + m);
        for (const TensorInfo& t : c->tensors()) {
            if (t.shape.size() != 2) continue;
            for (int dim : {0, 1})
                for (int tp : {2, 4}) {
                    int64_t len = t.shape[dim] / tp;
                    Slice s = Slice::range(dim, len, len);  // rank 1's part
                    uint64_t slice_bytes = (uint64_t)len * (t.nbytes / t.shape[dim]);
                    uint64_t spans = dim == 0 ? 1 : (uint64_t)t.shape[0];
                    c->reset_stats();
                    read_f32(*c, t.name, s);
                    uint64_t read = c->stats().data_bytes;
                    EXPECT_GE(read, slice_bytes) << t.name;
                    EXPECT_LE(read, slice_bytes + spans * kPageBytes) << m << " " << t.name << " dim " << dim;
                    if (dim == 0) {
                        EXPECT_EQ(read, slice_bytes) << "a row slice is one exact read: " << t.name;
                    }
                }
        }
    }
}

TEST(Loader, ColumnSliceOfWideRowsReadsOnlyItsSpans) {
    // Rows of 32 KiB: a 4 KiB column range leaves 28 KiB gaps, so nothing between spans is read.
    const int64_t rows = 64, cols = 8192;
    std::vector<float> data(rows * cols);
    std::mt19937 rng(7);
    for (float& x : data) x = std::uniform_real_distribution<float>(-1, 1)(rng);
    std::string dir = temp_dir();
    write_safetensors(dir + "/wide.safetensors", {{"w", DType::kF32, {rows, cols}, data.data()}});
    auto c = Checkpoint::open(dir + "/wide.safetensors");
    for (int64_t start : {0ll, 1024ll, 7168ll}) {
        c->reset_stats();
        std::vector<float> got = read_f32(*c, "w", Slice::range(1, start, 1024));
        EXPECT_EQ(got, cut(data, {rows, cols}, Slice::range(1, start, 1024)));
        EXPECT_EQ(c->stats().data_bytes, (uint64_t)rows * 1024 * 4);
        EXPECT_EQ(c->stats().reads, (uint64_t)rows);
    }
    fs::remove_all(dir);
}

namespace {

// A ring of small staging buffers shared by the reading threads, as the GPU backend uses pinned
// ones: a buffer is handed out again only after its chunk was copied to its destination.
class StagingSink : public ReadSink {
public:
    StagingSink(std::vector<std::vector<char>*> dsts, uint64_t chunk, int buffers)
        : dsts_(std::move(dsts)), chunk_(chunk), buffers_(buffers, std::vector<char>(chunk)) {
        for (int i = 0; i < buffers; ++i) free_.push_back(i);
    }
    uint64_t chunk_bytes() const override { return chunk_; }
    void* acquire(const ReadRequest& r, uint64_t offset, uint64_t bytes) override {
        std::unique_lock<std::mutex> lock(mutex_);
        EXPECT_LE(bytes, chunk_);
        EXPECT_LE(offset + bytes, dsts_.at(r.tag)->size());
        available_.wait(lock, [&] { return !free_.empty(); });
        int i = free_.back();
        free_.pop_back();
        ++calls_;
        return buffers_[i].data();
    }
    void commit(const ReadRequest& r, void* memory, uint64_t offset, uint64_t bytes) override {
        std::memcpy(dsts_.at(r.tag)->data() + offset, memory, bytes);
        std::lock_guard<std::mutex> lock(mutex_);
        delivered_ += bytes;
        for (size_t i = 0; i < buffers_.size(); ++i)
            if (buffers_[i].data() == memory) free_.push_back((int)i);
        available_.notify_one();
    }
    int calls_ = 0;
    uint64_t delivered_ = 0;

private:
    std::vector<std::vector<char>*> dsts_;
    uint64_t chunk_;
    std::vector<std::vector<char>> buffers_;
    std::mutex mutex_;
    std::condition_variable available_;
    std::vector<int> free_;
};

}  // namespace

TEST(Loader, StagedReadsDeliverTheSameBytesInBoundedChunks) {
    const int64_t rows = 1024, cols = 8192;  // 16 MiB of bf16, read as 32 MiB of f32
    std::vector<uint16_t> data(rows * cols);
    std::mt19937 rng(11);
    for (uint16_t& x : data) x = f32_to_bf16(std::uniform_real_distribution<float>(-2, 2)(rng));
    std::string dir = temp_dir();
    write_safetensors(dir + "/big.safetensors", {{"w", DType::kBF16, {rows, cols}, data.data()}});
    auto c = Checkpoint::open(dir + "/big.safetensors", 4);
    for (Slice s : {Slice::whole(), Slice::range(0, 256, 512), Slice::range(1, 4096, 4096)}) {
        std::vector<float> want = read_f32(*c, "w", s);
        std::vector<char> got(want.size() * 4);
        StagingSink sink({&got}, 5u << 20, 3);
        c->read("w", s, DType::kF32, sink);
        EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size()));
        EXPECT_EQ(sink.delivered_, got.size());
        if (s.length < 0) {
            EXPECT_GE(sink.calls_, 7) << "32 MiB through 5 MiB buffers takes several chunks";
        }
    }
    fs::remove_all(dir);
}

// The loaders' path: every piece of every parameter in one batch, on several threads, through
// a few shared buffers; each result equals the same slice read alone, and the bytes read are
// the sum of the single reads'.
// Each request read alone into want[r.tag] (and got[r.tag] sized alike, poisoned, for the
// batched read); returns the data bytes those reads counted.
uint64_t read_one_by_one(Checkpoint& c, const std::vector<ReadRequest>& requests, std::vector<std::vector<char>>& want,
                         std::vector<std::vector<char>>& got) {
    want.assign(requests.size(), {});
    got.assign(requests.size(), {});
    uint64_t bytes = 0;
    for (const ReadRequest& r : requests) {
        int64_t n = 1;
        for (int64_t d : slice_shape(c.tensor(r.tensor), r.slice)) n *= d;
        want[r.tag].assign(n * dtype_size(r.dst_type), 0);
        got[r.tag].assign(want[r.tag].size(), 0x55);
        c.reset_stats();
        c.read(r.tensor, r.slice, r.dst_type, want[r.tag].data());
        bytes += c.stats().data_bytes;
    }
    return bytes;
}

TEST(Loader, ABatchOfRequestsEqualsTheSameReadsOneByOne) {
    for (const std::string& m : kModels) {
        auto c = Checkpoint::open(kGolden + "/" + m, 4);
        std::vector<ReadRequest> requests;
        for (const TensorInfo& t : c->tensors())
            for (int parts : {1, 2, 3}) {
                int dim = (int)t.shape.size() - 1 - (parts == 3);  // rows and columns
                if (dim < 0) continue;
                for (int p = 0; p < parts; ++p) {
                    int64_t start = t.shape[dim] * p / parts, end = t.shape[dim] * (p + 1) / parts;
                    DType type = parts == 2 ? t.dtype : DType::kF32;
                    requests.push_back({t.name, Slice::range(dim, start, end - start), type, requests.size()});
                }
            }
        std::vector<std::vector<char>> want, got;
        uint64_t single_bytes = read_one_by_one(*c, requests, want, got);
        std::vector<std::vector<char>*> dsts;
        for (auto& g : got) dsts.push_back(&g);
        StagingSink sink(dsts, 5u << 20, 3);  // fewer buffers than threads: acquire() waits
        c->reset_stats();
        c->read(requests, sink);
        EXPECT_EQ(c->stats().data_bytes, single_bytes) << m;
        for (const ReadRequest& r : requests) EXPECT_EQ(got[r.tag], want[r.tag]) << m << " " << r.tensor;
        EXPECT_GT(requests.size(), 20u) << m;
    }
}

// Whole tensors, row ranges, column cuts and conversions mixed in one batch through the staging
// buffers: the results and the bytes counted are those of plain reads.
TEST(Loader, ABatchOfWholeRowColumnAndConvertedReadsEqualsPlainReads) {
    std::string dir = temp_dir();
    std::vector<uint16_t> a(256 * 4096), b(4096);
    for (size_t i = 0; i < a.size(); ++i) a[i] = (uint16_t)(i * 2654435761u >> 16);
    for (size_t i = 0; i < b.size(); ++i) b[i] = (uint16_t)(i * 40503u);
    write_safetensors(dir + "/w.safetensors", {{"a", DType::kBF16, {256, 4096}, a.data()}, {"b", DType::kBF16, {4096}, b.data()}});
    auto c = Checkpoint::open(dir + "/w.safetensors", 4);
    std::vector<ReadRequest> requests = {{"a", Slice::whole(), DType::kBF16, 0},
                                         {"a", Slice::range(0, 10, 40), DType::kBF16, 1},   // rows
                                         {"a", Slice::range(1, 0, 2048), DType::kBF16, 2},  // columns
                                         {"a", Slice::whole(), DType::kF32, 3},             // converted
                                         {"b", Slice::range(0, 100, 900), DType::kBF16, 4}};
    std::vector<std::vector<char>> want, got;
    uint64_t single_bytes = read_one_by_one(*c, requests, want, got);
    std::vector<std::vector<char>*> dsts;
    for (auto& g : got) dsts.push_back(&g);
    StagingSink sink(dsts, 5u << 20, 3);
    c->reset_stats();
    c->read(requests, sink);
    EXPECT_EQ(c->stats().data_bytes, single_bytes);
    for (const ReadRequest& r : requests) EXPECT_EQ(got[r.tag], want[r.tag]) << r.tag;

    // A file cut short after its header was checked, before its first read: the read straight
    // into a staging buffer that needs the missing bytes names it.
    auto cut = Checkpoint::open(dir + "/w.safetensors", 4);
    fs::resize_file(dir + "/w.safetensors", fs::file_size(dir + "/w.safetensors") - 4096);
    std::vector<char> whole_b(b.size() * 2);
    StagingSink cut_sink({&whole_b}, 5u << 20, 3);
    try {
        cut->read({{"b", Slice::whole(), DType::kBF16, 0}}, cut_sink);
        ADD_FAILURE() << "no error";
    } catch (const CheckpointError& e) {
        EXPECT_NE(std::string(e.what()).find("ended early"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("w.safetensors"), std::string::npos) << e.what();
    }
    fs::remove_all(dir);
}

// A bad request anywhere in a batch fails it before a byte is read; a failed read (a file cut
// short under the loader) is an error naming the file, after which nothing more is read.
TEST(Loader, ABatchFailsWholeAndNamesTheCause) {
    std::string dir = temp_dir();
    std::vector<uint16_t> data(256 * 4096, 0x3f80);
    write_safetensors(dir + "/w.safetensors", {{"a", DType::kBF16, {256, 4096}, data.data()},
                                               {"b", DType::kBF16, {256, 4096}, data.data()}});
    auto c = Checkpoint::open(dir + "/w.safetensors", 4);
    std::vector<char> out(256 * 4096 * 4);
    HostSink sink({out.data(), out.data()});
    try {
        c->read({{"a", Slice::whole(), DType::kBF16, 0}, {"nope", Slice::whole(), DType::kBF16, 1}}, sink);
        ADD_FAILURE() << "no error";
    } catch (const CheckpointError& e) {
        EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos) << e.what();
    }
    EXPECT_EQ(c->stats().data_bytes, 0u);
    try {
        c->read({{"a", Slice::range(0, 0, 300), DType::kBF16, 0}}, sink);
        ADD_FAILURE() << "no error";
    } catch (const CheckpointError& e) {
        EXPECT_NE(std::string(e.what()).find("a"), std::string::npos) << e.what();
    }
    EXPECT_EQ(c->stats().data_bytes, 0u);

    fs::resize_file(dir + "/w.safetensors", fs::file_size(dir + "/w.safetensors") - 256 * 4096 * 2 + 1000);  // "b" cut short
    try {
        c->read({{"a", Slice::whole(), DType::kF32, 0}, {"b", Slice::whole(), DType::kF32, 1}}, sink);
        ADD_FAILURE() << "no error";
    } catch (const CheckpointError& e) {
        EXPECT_NE(std::string(e.what()).find("w.safetensors"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("ended early"), std::string::npos) << e.what();
    }
    fs::remove_all(dir);
}

TEST(Loader, Hdf5RoundTripIsBitIdenticalAndSlicesAgree) {
    std::string dir = temp_dir();
    for (const std::string& m : kModels) {
        auto st = Checkpoint::open(kGolden + "/" + m);
        std::string h5 = dir + "/" + m + ".h5";
        ConvertStats cs = convert_to_hdf5(*st, h5);
        EXPECT_EQ(cs.tensors, st->tensors().size());
        auto h = Checkpoint::open(h5);
        EXPECT_STREQ(h->format(), "hdf5");
        EXPECT_EQ(h->config_json(), st->config_json());
        ASSERT_EQ(h->tensors().size(), st->tensors().size());
        for (const TensorInfo& t : st->tensors()) {
            const TensorInfo& ht = h->tensor(t.name);
            EXPECT_EQ(ht.shape, t.shape);
            EXPECT_EQ(ht.dtype, t.dtype);
            std::vector<char> a(t.nbytes), b(t.nbytes);
            st->read(t.name, Slice::whole(), t.dtype, a.data());
            h->read(t.name, Slice::whole(), t.dtype, b.data());
            EXPECT_EQ(a, b) << m << " " << t.name;
        }
        EXPECT_GT(check_all_slices(*h), 100) << m;
    }
    fs::remove_all(dir);
}

TEST(Loader, Hdf5ChunksAreWholeRowSlices) {
    EXPECT_EQ(hdf5_chunk_rows(4096, 8192), 64);   // 4096 / 64 rows, 512 KiB chunks
    EXPECT_EQ(hdf5_chunk_rows(512, 256), 8);
    EXPECT_EQ(hdf5_chunk_rows(128256, 8192), 501);  // 128256 = 2^8 * 501: / 64, then halved to fit 4 MiB
    EXPECT_EQ(hdf5_chunk_rows(7, 4), 7);
    for (long long rows : {352ll, 14336ll, 28672ll})
        for (int tp : {2, 4, 8}) EXPECT_EQ((rows / tp) % hdf5_chunk_rows(rows, 8192), 0) << rows << " tp " << tp;
}

namespace {

// A copy of llama-sharded whose index or shards are then damaged by the test.
std::string copy_sharded() {
    std::string dir = temp_dir() + "/model";
    fs::copy(kGolden + "/llama-sharded", dir, fs::copy_options::recursive);
    return dir;
}

void replace_in_file(const std::string& path, const std::string& from, const std::string& to) {
    std::string text = tpx_test::read_text(path);
    size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::string open_error(const std::string& path) {
    try {
        Checkpoint::open(path);
    } catch (const CheckpointError& e) {
        return e.what();
    }
    return "(no error)";
}

}  // namespace

TEST(Loader, IndexErrorsNameTheFileAndTensor) {
    {
        std::string dir = copy_sharded();
        fs::remove(dir + "/model-00005-of-00017.safetensors");
        std::string e = open_error(dir);
        EXPECT_NE(e.find("model-00005-of-00017.safetensors, which does not exist"), std::string::npos) << e;
        EXPECT_NE(e.find("model.safetensors.index.json"), std::string::npos) << e;
    }
    {
        // The index places the embedding in a shard whose header lacks it.
        std::string dir = copy_sharded();
        std::string index = tpx_test::read_text(dir + "/model.safetensors.index.json");
        size_t at = index.find("\"model.embed_tokens.weight\": \"");
        ASSERT_NE(at, std::string::npos);
        size_t file_at = at + std::string("\"model.embed_tokens.weight\": \"").size();
        std::string shard = index.substr(file_at, index.find('"', file_at) - file_at);
        std::string other = shard == "model-00017-of-00017.safetensors" ? "model-00016-of-00017.safetensors" : "model-00017-of-00017.safetensors";
        replace_in_file(dir + "/model.safetensors.index.json", "\"model.embed_tokens.weight\": \"" + shard,
                        "\"model.embed_tokens.weight\": \"" + other);
        std::string e = open_error(dir);
        EXPECT_NE(e.find("tensor 'model.embed_tokens.weight'"), std::string::npos) << e;
    }
    {
        // The same tensor stored in two shards.
        std::string dir = copy_sharded();
        auto c = Checkpoint::open(dir);
        const TensorInfo& norm = c->tensor("model.norm.weight");
        std::vector<uint16_t> v(norm.numel());
        c->read(norm.name, Slice::whole(), DType::kBF16, v.data());
        std::string victim = dir + "/model-00001-of-00017.safetensors";
        auto one = Checkpoint::open(victim);
        std::vector<std::vector<char>> keep;
        std::vector<TensorData> tensors;
        for (const TensorInfo& t : one->tensors()) {
            keep.emplace_back(t.nbytes);
            one->read(t.name, Slice::whole(), t.dtype, keep.back().data());
            tensors.push_back({t.name, t.dtype, t.shape, keep.back().data()});
        }
        one.reset();
        tensors.push_back({"model.norm.weight", DType::kBF16, norm.shape, v.data()});
        write_safetensors(victim, tensors);
        std::string e = open_error(dir);
        EXPECT_NE(e.find("tensor 'model.norm.weight' is stored twice"), std::string::npos) << e;
    }
    {
        std::string dir = copy_sharded();
        std::ofstream(dir + "/model.safetensors.index.json", std::ios::trunc) << "{\"weight_map\": [1, 2]}";
        std::string e = open_error(dir);
        EXPECT_NE(e.find("has no \"weight_map\" object"), std::string::npos) << e;
    }
    {
        // A tensor the index places twice (nlohmann would keep the second without a word).
        std::string dir = copy_sharded();
        replace_in_file(dir + "/model.safetensors.index.json", "\"weight_map\": {", "\"weight_map\": {\"model.norm.weight\": \"x.safetensors\", ");
        std::string e = open_error(dir);
        EXPECT_NE(e.find("model.safetensors.index.json: the key 'model.norm.weight' is given twice"), std::string::npos) << e;
    }
    {
        // A single file beside the index: HF reads one, vLLM the other.
        std::string dir = copy_sharded();
        fs::copy_file(kGolden + "/llama-gqa/model.safetensors", dir + "/model.safetensors");
        std::string e = open_error(dir);
        EXPECT_NE(e.find("holds both model.safetensors and model.safetensors.index.json"), std::string::npos) << e;
    }
    for (const char* outside : {"/etc/passwd", "../llama-gqa/model.safetensors", "sub/../../x.safetensors", ""}) {
        // A shard named outside the checkpoint's folder is refused before it is opened.
        std::string dir = copy_sharded();
        nlohmann::json index = nlohmann::json::parse(tpx_test::read_text(dir + "/model.safetensors.index.json"));
        index["weight_map"]["lm_head.weight"] = outside;
        std::ofstream(dir + "/model.safetensors.index.json", std::ios::trunc) << index.dump();
        std::string e = open_error(dir);
        EXPECT_NE(e.find("places tensor 'lm_head.weight' in \"" + std::string(outside) + "\", which is not a file inside the checkpoint's folder"),
                  std::string::npos)
            << e;
    }
}

TEST(Loader, BadSlicesAndNamesAreErrors) {
    auto c = Checkpoint::open(kGolden + "/llama-gqa");
    std::vector<float> out(512 * 128);
    try {
        c->read("model.embed_tokens.weight", Slice::range(0, 256, 512), DType::kF32, out.data());
        FAIL();
    } catch (const CheckpointError& e) {
        EXPECT_NE(std::string(e.what()).find("slice [256, 768) of dim 0 is outside [0, 512)"), std::string::npos) << e.what();
    }
    EXPECT_THROW(c->read("model.embed_tokens.weight", Slice::range(2, 0, 1), DType::kF32, out.data()), CheckpointError);
    EXPECT_THROW(c->read("no.such.tensor", Slice::whole(), DType::kF32, out.data()), CheckpointError);
    EXPECT_THROW(c->read("model.embed_tokens.weight", Slice::whole(), DType::kI32, out.data()), CheckpointError);
}

TEST(Loader, InspectListsShardsAndTotals) {
    auto r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " inspect " + kGolden + "/llama-sharded");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto c = Checkpoint::open(kGolden + "/llama-sharded");
    std::string total = "total: " + std::to_string(c->tensors().size()) + " tensors, " + std::to_string(c->total_bytes()) +
                        " bytes (1.47 MB) in 17 files, format safetensors";
    EXPECT_NE(r.out.find(total), std::string::npos) << r.out;
    for (int i = 1; i <= 17; ++i) {
        char shard[64];
        std::snprintf(shard, sizeof(shard), "model-%05d-of-00017.safetensors", i);
        EXPECT_NE(r.out.find(shard), std::string::npos) << shard;
    }
    auto bad = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " inspect /no/such/model");
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.err.find("/no/such/model: no such file or directory"), std::string::npos) << bad.err;
}

TEST(Loader, ConvertLeavesNothingHalfWritten) {
    std::string dir = temp_dir();
    auto r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " convert " + kGolden + "/llama-gqa " + dir + "/no/such/dir/out.h5");
    EXPECT_NE(r.exit_code, 0);
    EXPECT_FALSE(fs::exists(dir + "/no/such/dir/out.h5"));
    auto ok = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " convert " + kGolden + "/llama-gqa " + dir + "/out.h5");
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
    size_t entries = std::distance(fs::directory_iterator(dir), fs::directory_iterator());
    EXPECT_EQ(entries, 1u) << "only out.h5, no temp file left";
    fs::remove_all(dir);
}
