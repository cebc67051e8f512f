// Meta-format checkpoints against HF's own: the mp1/mp2 folders were written by torch.save from
// llama-gqa's weights with HF's q/k permutation inverted (/work/shared/golden/make_refs.py), the
// mp4 folder by tests/data/meta/make_meta_fixtures.py in Llama 2's split; read back they must
// equal llama-gqa's model.safetensors (save_pretrained) bit for bit, whole and in every slice
// the planner can ask for, each slice costing exactly what read_bytes() promised. Bad folders
// are refused by name before any tensor byte is read; a pickle naming another global runs nothing.
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>

#include <nlohmann/json.hpp>

#include "loader/checkpoint.h"
#include "loader/hf_folder.h"
#include "loader/meta_params.h"
#include "loader/torch_pickle.h"
#include "process.h"

namespace fs = std::filesystem;
using namespace tpx;

namespace {

const std::string kData = std::string(TPX_TEST_DATA);
const std::string kMeta = kData + "/meta";
const std::string kHf = kData + "/golden/llama-gqa";
const std::vector<std::string> kFolders = {"meta-llama-gqa-mp1", "meta-llama-gqa-mp2", "meta-llama2-mp4"};

std::vector<uint16_t> read_bf16(Checkpoint& c, const std::string& name, const Slice& s) {
    int64_t n = 1;
    for (int64_t d : slice_shape(c.tensor(name), s)) n *= d;
    std::vector<uint16_t> out(n, 0xffff);  // poison: a NaN pattern no weight here has
    c.read(name, s, DType::kBF16, out.data());
    return out;
}

std::string open_error(const std::string& path) {
    try {
        Checkpoint::open(path);
    } catch (const CheckpointError& e) {
        EXPECT_EQ(e.exit_code(), 2) << e.what();
        return e.what();
    }
    return "(opened without an error)";
}

// A copy of a fixture folder to damage.
std::string copy_of(const std::string& folder) {
    std::string dir = tpx_test::temp_dir() + "/" + folder;
    fs::copy(kMeta + "/" + folder, dir);
    for (const auto& e : fs::directory_iterator(dir)) fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
    return dir;
}

// A ring of staging buffers shared by the reading threads, as the GPU backend's pinned ones: a
// buffer is handed out again only once its chunk was copied to its destination.
class StagingSink : public ReadSink {
public:
    StagingSink(std::vector<std::vector<char>>& dsts, uint64_t chunk, int buffers)
        : dsts_(dsts), chunk_(chunk), buffers_(buffers, std::vector<char>(chunk)) {
        for (int i = 0; i < buffers; ++i) free_.push_back(i);
    }
    uint64_t chunk_bytes() const override { return chunk_; }
    void* acquire(const ReadRequest& r, uint64_t offset, uint64_t bytes) override {
        std::unique_lock<std::mutex> lock(mutex_);
        EXPECT_LE(offset + bytes, dsts_.at(r.tag).size());
        available_.wait(lock, [&] { return !free_.empty(); });
        const int i = free_.back();
        free_.pop_back();
        ++calls_;
        max_bytes_ = std::max(max_bytes_, bytes);
        std::fill(buffers_[i].begin(), buffers_[i].end(), (char)0x7f);  // poison: unwritten bytes show
        return buffers_[i].data();
    }
    void commit(const ReadRequest& r, void* memory, uint64_t offset, uint64_t bytes) override {
        std::memcpy(dsts_.at(r.tag).data() + offset, memory, bytes);
        std::lock_guard<std::mutex> lock(mutex_);
        for (size_t i = 0; i < buffers_.size(); ++i)
            if (buffers_[i].data() == memory) free_.push_back((int)i);
        available_.notify_one();
    }
    size_t calls_ = 0;
    uint64_t max_bytes_ = 0;

private:
    std::vector<std::vector<char>>& dsts_;
    uint64_t chunk_;
    std::vector<std::vector<char>> buffers_;
    std::mutex mutex_;
    std::condition_variable available_;
    std::vector<int> free_;
};

}  // namespace

// A model too large to commit (python3 writes it at test time, random weights in HF's layout
// and, unpermuted and split over 2 files, in Meta's): q's 4 Mi elements and the embedding's
// 1.2 Mi are read in several chunks of whole heads and rows. Every slice the planner cuts at tp
// 1-8, in one batch on 4 threads through 3 staging buffers of 4 MiB and converted to f32,
// equals HF's, and the batch reads exactly the sum of read_bytes().
TEST(Meta, ReadsOfSeveralChunksMatchThroughStagingBuffers) {
    if (tpx_test::run_process("python3 -c 'import json'").exit_code != 0) GTEST_SKIP() << "python3 writes this test's checkpoint";
    const std::string dir = tpx_test::temp_dir();
    auto made = tpx_test::run_process("python3 " + kMeta + "/make_meta_fixtures.py --large " + dir);
    ASSERT_EQ(made.exit_code, 0) << made.err;
    auto hf = Checkpoint::open(dir + "/hf"), meta = Checkpoint::open(dir + "/meta", 4);
    std::vector<ReadRequest> requests;
    uint64_t promised = 0;
    for (const TensorInfo& t : hf->tensors())
        for (int dim = 0; dim < (int)t.shape.size(); ++dim)
            for (int parts : {1, 2, 4, 8})
                for (int p = 0; p < parts && t.shape[dim] % parts == 0; ++p) {
                    const int64_t len = t.shape[dim] / parts;
                    requests.push_back({t.name, Slice::range(dim, p * len, len), DType::kF32, requests.size()});
                    promised += meta->read_bytes(t.name, requests.back().slice);
                }
    std::vector<std::vector<char>> got(requests.size());
    for (const ReadRequest& r : requests) {
        int64_t n = 1;
        for (int64_t d : slice_shape(meta->tensor(r.tensor), r.slice)) n *= d;
        got[r.tag].assign(n * 4, 0);
    }
    StagingSink sink(got, 4u << 20, 3);
    meta->reset_stats();
    meta->read(requests, sink);
    EXPECT_EQ(meta->stats().data_bytes, promised);
    EXPECT_GT(sink.calls_, requests.size()) << "some requests take several chunks";
    EXPECT_LE(sink.max_bytes_, 4u << 20);
    for (const ReadRequest& r : requests) {
        std::vector<char> want(got[r.tag].size());
        hf->read(r.tensor, r.slice, DType::kF32, want.data());
        EXPECT_EQ(got[r.tag], want) << r.tensor << " dim " << r.slice.dim << " [" << r.slice.start << ", +" << r.slice.length << ")";
    }
    fs::remove_all(dir);
}

// The three folders read as stored (bf16), in one batch on 4 threads through 3 staging buffers
// of 1 MiB: every tensor and every slice of 1, 2 or 4 parts, and q/k row ranges that cut a head,
// equal HF's bytes, and the batch reads exactly the sum of read_bytes().
TEST(Meta, BatchedReadsMatchAndCostWhatTheyPromise) {
    auto hf = Checkpoint::open(kHf);
    for (const std::string& folder : kFolders) {
        auto meta = Checkpoint::open(kMeta + "/" + folder, 4);
        std::vector<ReadRequest> requests;
        uint64_t promised = 0;
        for (const TensorInfo& t : hf->tensors())
            for (int dim = 0; dim < (int)t.shape.size(); ++dim)
                for (int parts : {1, 2, 4})
                    for (int p = 0; p < parts && t.shape[dim] % parts == 0; ++p) {
                        const int64_t len = t.shape[dim] / parts;
                        requests.push_back({t.name, Slice::range(dim, p * len, len), DType::kBF16, requests.size()});
                        promised += meta->read_bytes(t.name, requests.back().slice);
                    }
        for (const char* qk : {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"}) {
            requests.push_back({qk, Slice::range(0, 8, 16), DType::kBF16, requests.size()});  // half of each of two heads
            promised += meta->read_bytes(qk, requests.back().slice);
        }
        std::vector<std::vector<char>> got(requests.size());
        for (const ReadRequest& r : requests) {
            int64_t n = 1;
            for (int64_t d : slice_shape(meta->tensor(r.tensor), r.slice)) n *= d;
            got[r.tag].assign(n * 2, (char)0x7f);  // poison: unwritten bytes show
        }
        StagingSink sink(got, 1u << 20, 3);
        meta->reset_stats();
        meta->read(requests, sink);
        EXPECT_EQ(meta->stats().data_bytes, promised) << folder;
        EXPECT_LE(sink.max_bytes_, 1u << 20) << folder << ": no chunk past the sink's";
        for (const ReadRequest& r : requests) {
            std::vector<char> want(got[r.tag].size());
            hf->read(r.tensor, r.slice, DType::kBF16, want.data());
            EXPECT_EQ(got[r.tag], want) << folder << " " << r.tensor << " dim " << r.slice.dim << " [" << r.slice.start << ", +"
                                        << r.slice.length << ")";
        }
    }
}

// Every tensor, and every slice of 1-4 equal parts along either dim (whole heads of q/k among
// them), equals the same cut of HF's tensor: names mapped, rows permuted, files joined.
TEST(Meta, TensorsAndSlicesEqualHfsCheckpointBitForBit) {
    auto hf = Checkpoint::open(kHf);
    for (const std::string& folder : kFolders) {
        auto meta = Checkpoint::open(kMeta + "/" + folder);
        EXPECT_STREQ(meta->format(), "meta");
        ASSERT_EQ(meta->tensors().size(), hf->tensors().size()) << folder << " (rope.freqs is dropped)";
        int slices = 0;
        for (const TensorInfo& t : hf->tensors()) {
            ASSERT_EQ(meta->tensor(t.name).shape, t.shape) << folder << " " << t.name;
            for (int dim = 0; dim < (int)t.shape.size(); ++dim)
                for (int parts : {1, 2, 4}) {
                    if (t.shape[dim] % parts) continue;
                    for (int p = 0; p < parts; ++p) {
                        const int64_t len = t.shape[dim] / parts;
                        const Slice s = Slice::range(dim, p * len, len);
                        meta->reset_stats();
                        EXPECT_EQ(read_bf16(*meta, t.name, s), read_bf16(*hf, t.name, s))
                            << folder << " " << t.name << " dim " << dim << " part " << p << "/" << parts;
                        EXPECT_EQ(meta->stats().data_bytes, meta->read_bytes(t.name, s)) << folder << " " << t.name;
                        ++slices;
                    }
                }
        }
        EXPECT_GT(slices, 150) << folder;
    }
}

// Past 4 GiB torch's writer gives an entry's local-header offset in a zip64 extra field of the
// central directory (8B's files are 16 GB); mp2's files rewritten so (make_meta_fixtures.py
// --zip64, at test time) read the same tensors.
TEST(Meta, Zip64OffsetsOfTheCentralDirectoryAreFollowed) {
    if (tpx_test::run_process("python3 -c 'import json'").exit_code != 0) GTEST_SKIP() << "python3 rewrites this test's files";
    const std::string dir = tpx_test::temp_dir();
    fs::copy(kMeta + "/meta-llama-gqa-mp2/params.json", dir + "/params.json");
    for (const char* f : {"consolidated.00.pth", "consolidated.01.pth"}) {
        auto r = tpx_test::run_process("python3 " + kMeta + "/make_meta_fixtures.py --zip64 " + kMeta + "/meta-llama-gqa-mp2/" + f + " " + dir +
                                       "/" + f);
        ASSERT_EQ(r.exit_code, 0) << r.err;
        const std::string bytes = tpx_test::read_text(dir + "/" + f);
        ASSERT_NE(bytes.find(std::string("PK\x06\x06")), std::string::npos) << "a zip64 end record";
    }
    auto hf = Checkpoint::open(kHf), meta = Checkpoint::open(dir);
    for (const TensorInfo& t : hf->tensors())
        EXPECT_EQ(read_bf16(*meta, t.name, Slice::whole()), read_bf16(*hf, t.name, Slice::whole())) << t.name;
    fs::remove_all(dir);
}

// With as many files as ranks, a rank's rows of a dim-0 split tensor (and its columns of a dim-1
// one) are its own file's bytes, exactly; a row range of q is whole heads, read as one range.
TEST(Meta, ARanksSliceReadsOnlyTheFilesHoldingIt) {
    auto meta = Checkpoint::open(kMeta + "/meta-llama-gqa-mp2");
    struct {
        const char* tensor;
        Slice slice;
        uint64_t bytes;
    } cases[] = {{"model.layers.0.self_attn.q_proj.weight", Slice::range(0, 64, 64), 64 * 128 * 2},
                 {"model.layers.0.self_attn.k_proj.weight", Slice::range(0, 32, 32), 32 * 128 * 2},
                 {"model.layers.1.self_attn.o_proj.weight", Slice::range(1, 64, 64), 128 * 64 * 2},
                 {"model.layers.1.mlp.down_proj.weight", Slice::range(1, 176, 176), 128 * 176 * 2},
                 {"model.embed_tokens.weight", Slice::range(0, 256, 256), 256 * 128 * 2}};
    for (const auto& c : cases) {
        meta->reset_stats();
        read_bf16(*meta, c.tensor, c.slice);
        const ReadStats s = meta->stats();
        EXPECT_EQ(s.data_bytes, c.bytes) << c.tensor;
        EXPECT_EQ(meta->read_bytes(c.tensor, c.slice), c.bytes) << c.tensor;
        ASSERT_EQ(s.data_bytes_per_file.size(), 1u) << c.tensor;
        EXPECT_EQ(fs::path(s.data_bytes_per_file.begin()->first).filename(), "consolidated.01.pth") << c.tensor;
    }
    EXPECT_EQ(meta->files().size(), 2u);
    EXPECT_NE(meta->source_of("model.layers.0.self_attn.q_proj.weight").find("attention.wq.weight in 2 file(s), split on dim 0, rows permuted"),
              std::string::npos);
}

// params.json becomes the config.json HF's conversion writes for llama-gqa (its fields tpx reads),
// the FFN width and the vocabulary (Llama 2 writes -1) taken from the tensors.
TEST(Meta, ParamsBecomeAnHfConfig) {
    const nlohmann::json hf = nlohmann::json::parse(tpx_test::read_text(kHf + "/config.json"));
    for (const std::string& folder : kFolders) {
        const nlohmann::json c = nlohmann::json::parse(Checkpoint::open(kMeta + "/" + folder)->config_json());
        for (const char* key : {"architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings"})
            EXPECT_EQ(c[key], hf[key]) << folder << " " << key;
        EXPECT_EQ(c["rope_theta"], hf["rope_parameters"]["rope_theta"]) << folder;
        EXPECT_FALSE(c.contains("rope_scaling")) << folder;
    }
    // Llama 3.1's use_scaled_rope: HF's llama3 rope type with Meta's constants.
    std::string dir = copy_of("meta-llama-gqa-mp1");
    std::ofstream(dir + "/params.json") << R"({"dim": 128, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4, "vocab_size": 512,
        "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": true})";
    const nlohmann::json c = nlohmann::json::parse(Checkpoint::open(dir)->config_json());
    EXPECT_EQ(c["rope_theta"], 500000.0);
    EXPECT_EQ(c["rope_scaling"], (nlohmann::json{{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                                 {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}));
    fs::remove_all(fs::path(dir).parent_path());
}

// Meta's FFN rule against the widths of the published models (their HF configs' intermediate_size).
TEST(Meta, FfnWidthFollowsMetasRule) {
    struct Case {
        int64_t dim, multiple_of;
        double multiplier;  // 0: null
        int64_t width;
    };
    for (const Case& c : {Case{4096, 256, 0, 11008},      // Llama 2 7B
                          Case{8192, 4096, 1.3, 28672},   // Llama 2 70B, Llama 3 70B
                          Case{4096, 1024, 1.3, 14336},   // Llama 3 8B
                          Case{16384, 4096, 1.2, 53248},  // Llama 3.1 405B
                          Case{128, 32, 0, 352}}) {       // the test checkpoints
        MetaParams p;
        p.dim = c.dim;
        p.multiple_of = c.multiple_of;
        p.ffn_dim_multiplier = c.multiplier;
        EXPECT_EQ(meta_ffn_width(p), c.width) << c.dim;
    }
    EXPECT_EQ(meta_ffn_width(MetaParams{}), -1);  // no multiple_of: the width is w1's
}

// `tpx convert` of the Llama 2 layout writes llama-gqa's model.safetensors back: HF's names, HF's
// q/k order, every byte (the reference is save_pretrained's own file).
TEST(Meta, ConvertWritesHfsFolder) {
    std::string dir = tpx_test::temp_dir();
    auto r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " convert " + kMeta + "/meta-llama2-mp4 " + dir + "/hf --hf");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto hf = Checkpoint::open(kHf), out = Checkpoint::open(dir + "/hf");
    EXPECT_STREQ(out->format(), "safetensors");
    ASSERT_EQ(out->tensors().size(), hf->tensors().size());
    for (const TensorInfo& t : hf->tensors())
        EXPECT_EQ(read_bf16(*out, t.name, Slice::whole()), read_bf16(*hf, t.name, Slice::whole())) << t.name;
    r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " convert " + kMeta + "/meta-llama2-mp4 " + dir + "/hf --hf");
    EXPECT_EQ(r.exit_code, 2) << "an existing folder is not written over";
    EXPECT_NE(r.err.find("already exists"), std::string::npos) << r.err;
    fs::remove_all(dir);
}

// A pickle naming os.system or builtins.eval (then REDUCE, which would run it) is refused at the
// GLOBAL, naming it, with exit 2; nothing ran: no marker file where the command would write it.
// Python's own unpickler, where there is one, shows that each pickle does run when unpickled.
TEST(Meta, APickleNamingAnyOtherGlobalIsRefusedAndRunsNothing) {
    for (const auto& [folder, global] : {std::pair<std::string, std::string>{"bad-global-os-system", "os.system"},
                                         {"bad-global-eval", "builtins.eval"}}) {
        std::string dir = tpx_test::temp_dir();
        auto r = tpx_test::run_process("cd " + dir + " && " + tpx_test::tpx_bin("tpx") + " inspect " + kMeta + "/" + folder);
        EXPECT_EQ(r.exit_code, 2) << r.err;
        EXPECT_NE(r.err.find("consolidated.00.pth: data.pkl at byte 2: names the global '" + global + "'"), std::string::npos) << r.err;
        EXPECT_NE(r.err.find("refused without running anything"), std::string::npos) << r.err;
        EXPECT_FALSE(fs::exists(dir + "/tpx-meta-marker")) << "the pickle ran";
        if (tpx_test::run_process("python3 -c 'import pickle'").exit_code == 0) {
            auto py = tpx_test::run_process("cd " + dir + " && python3 -c \"import pickle, zipfile; pickle.loads(zipfile.ZipFile('" + kMeta +
                                            "/" + folder + "/consolidated.00.pth').read('consolidated.00/data.pkl'))\"");
            EXPECT_TRUE(fs::exists(dir + "/tpx-meta-marker")) << "the fixture's pickle would not have run anything: " << py.err;
        }
        fs::remove_all(dir);
    }
    // The unpickler on its own: no opcode outside torch.save's, no stream cut short.
    auto error_of = [](const std::string& bytes) {
        try {
            parse_torch_pickle("x.pth", bytes);
        } catch (const CheckpointError& e) {
            return std::string(e.what());
        }
        return std::string("(parsed)");
    };
    EXPECT_NE(error_of(std::string("\x80\x02}q\x00", 5)).find("the pickle ends early"), std::string::npos);
    EXPECT_NE(error_of(std::string("\x80\x02}b.", 5)).find("opcode 0x62 ('b')"), std::string::npos);  // BUILD
    EXPECT_NE(error_of(std::string("\x80\x04}.", 4)).find("pickle protocol 4"), std::string::npos);
    EXPECT_NE(error_of(std::string("\x80\x02h\x07.", 5)).find("memo entry 7"), std::string::npos);
    EXPECT_NE(error_of(std::string("\x80\x02]N\x61.", 6)).find("something other than a dict of tensors"), std::string::npos);
}

// The unpickler on every prefix of a real torch.save pickle (mp2's second file) and on 3000
// copies with one byte changed: a CheckpointError or the dict, never another failure or a crash.
TEST(Meta, CutOrCorruptedPicklesAreErrorsNeverCrashes) {
    const std::string file = tpx_test::read_text(kMeta + "/meta-llama-gqa-mp2/consolidated.01.pth");
    ASSERT_GT(file.size(), 30u);
    auto u16 = [&](size_t at) { return (size_t)(unsigned char)file[at] | (size_t)(unsigned char)file[at + 1] << 8; };
    const std::string data = file.substr(30 + u16(26) + u16(28));  // data.pkl is the first entry, stored
    size_t length = 0;
    for (size_t n = 0; n <= data.size() && length == 0; ++n) {
        try {
            EXPECT_EQ(parse_torch_pickle("x.pth", data.substr(0, n)).size(), 21u);
            length = n;
        } catch (const CheckpointError&) {
        }
    }
    ASSERT_GT(length, 1000u) << "the whole pickle parses, and no prefix of it does";
    std::mt19937 rng(std::random_device{}());
    int parsed = 0, refused = 0;
    for (int i = 0; i < 3000; ++i) {
        std::string bad = data.substr(0, length);
        bad[rng() % length] = (char)(rng() % 256);
        try {
            parse_torch_pickle("x.pth", bad);
            ++parsed;
        } catch (const CheckpointError&) {
            ++refused;
        }
    }
    EXPECT_EQ(parsed + refused, 3000);
    EXPECT_GT(refused, 0);
    // Lists a million deep in a dict (2 MB): an error, released without overflowing the stack.
    const size_t deep = 1000000;
    const std::string nested = std::string("\x80\x02}X\x01\x00\x00\x00", 8) + "a" + std::string(deep, ']') + std::string(deep - 1, 'a') + "s.";
    try {
        parse_torch_pickle("x.pth", nested);
        ADD_FAILURE() << "a dict of nested lists parsed as tensors";
    } catch (const CheckpointError& e) {
        EXPECT_NE(std::string(e.what()).find("x.pth: data.pkl entry 'a' is not a tensor"), std::string::npos) << e.what();
    }
}

// Each defect is a CheckpointError (exit 2) that names the file, the entry or tensor, the key.
TEST(Meta, DamagedFoldersAreRefusedByName) {
    for (const char* folder : {"bad-missing-entry", "bad-compressed-entry", "bad-shapes-disagree", "bad-replicated-disagrees", "bad-layer-index"}) {
        auto r = tpx_test::run_process(tpx_test::tpx_bin("tpx") + " inspect " + kMeta + "/" + folder);
        EXPECT_EQ(r.exit_code, 2) << folder << ": " << r.err;
        EXPECT_NE(r.err.find(kMeta + "/" + folder), std::string::npos) << r.err;
    }
    EXPECT_NE(open_error(kMeta + "/bad-missing-entry").find("consolidated.00.pth: tensor 'norm.weight' is stored in consolidated.00/data/1, "
                                                              "which the archive does not have"),
              std::string::npos);
    EXPECT_NE(open_error(kMeta + "/bad-compressed-entry").find("entry consolidated.00/data/0 (tensor 'layers.0.attention.wq.weight') is compressed"),
              std::string::npos);
    EXPECT_NE(open_error(kMeta + "/bad-shapes-disagree").find("tensor 'layers.0.attention.wq.weight' is BF16 [4, 8] in consolidated.00.pth "
                                                                "but BF16 [4, 6] in consolidated.01.pth"),
              std::string::npos);
    EXPECT_NE(open_error(kMeta + "/bad-replicated-disagrees").find("tensor 'norm.weight' is BF16 [8] in consolidated.00.pth but F16 [8] in "
                                                                   "consolidated.01.pth (a replicated tensor: every file holds it whole)"),
              std::string::npos);
    // A layer index past int64, named.
    EXPECT_NE(open_error(kMeta + "/bad-layer-index").find("params.json: \"n_layers\" = 1 but the files hold "
                                                            "layers.99999999999999999999.attention_norm.weight"),
              std::string::npos);
    {  // Meta's and HF's files in one folder (which to load is ambiguous), and Meta's files
       // without their pair, named as such.
        std::string dir = copy_of("meta-llama-gqa-mp2");
        std::ofstream(dir + "/config.json") << "{}";
        EXPECT_NE(open_error(dir).find("holds both Meta's checkpoint (params.json, consolidated.*.pth) and Hugging Face's (config.json)"),
                  std::string::npos);
        fs::remove(dir + "/config.json");
        fs::remove(dir + "/consolidated.00.pth");
        EXPECT_NE(open_error(dir).find("has params.json but no consolidated.00.pth (Meta's checkpoint) and no config.json"),
                  std::string::npos);
        fs::remove(dir + "/params.json");
        EXPECT_NE(open_error(dir).find("has consolidated.01.pth but no consolidated.00.pth and no params.json"), std::string::npos);
        fs::remove_all(fs::path(dir).parent_path());
    }
    {  // A copy of the first file as the second (read as the second half of every tensor).
        std::string dir = copy_of("meta-llama-gqa-mp2");
        fs::copy_file(dir + "/consolidated.00.pth", dir + "/consolidated.01.pth", fs::copy_options::overwrite_existing);
        EXPECT_NE(open_error(dir).find("consolidated.01.pth: holds the archive consolidated.00/ as consolidated.00.pth does: a copy of it"),
                  std::string::npos);
        fs::copy_file(kMeta + "/meta-llama-gqa-mp2/consolidated.01.pth", dir + "/consolidated.00.pth", fs::copy_options::overwrite_existing);
        fs::copy_file(kMeta + "/meta-llama-gqa-mp2/consolidated.01.pth", dir + "/consolidated.01.pth", fs::copy_options::overwrite_existing);
        EXPECT_NE(open_error(dir).find("consolidated.00.pth: holds the archive consolidated.01/ as consolidated.01.pth does: a copy of it"),
                  std::string::npos);
        fs::remove_all(fs::path(dir).parent_path());
    }
    {  // The two files swapped (each archive named after the other): parts out of order.
        std::string dir = copy_of("meta-llama-gqa-mp2");
        fs::rename(dir + "/consolidated.00.pth", dir + "/x.pth");
        fs::rename(dir + "/consolidated.01.pth", dir + "/consolidated.00.pth");
        fs::rename(dir + "/x.pth", dir + "/consolidated.01.pth");
        std::string e = open_error(dir);
        EXPECT_NE(e.find("consolidated.00.pth: holds the archive consolidated.01/, torch.save's name for consolidated.01.pth: the files "
                         "were renamed or swapped"),
                  std::string::npos) << e;
        fs::remove_all(fs::path(dir).parent_path());
    }
    if (tpx_test::run_process("python3 -c 'import zipfile'").exit_code == 0) {  // big-endian data (torch.load would swap it)
        std::string dir = copy_of("meta-llama-gqa-mp1");
        const std::string f = dir + "/consolidated.00.pth";
        auto py = tpx_test::run_process("python3 -c \"import zipfile, sys; src = zipfile.ZipFile(sys.argv[1]); "
                                        "out = zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_STORED); "
                                        "[out.writestr(i, b'big' if i.filename.endswith('/byteorder') else src.read(i)) for i in src.infolist()]; "
                                        "out.close()\" " + f + " " + dir + "/big.pth && mv " + dir + "/big.pth " + f);
        ASSERT_EQ(py.exit_code, 0) << py.err;
        std::string e = open_error(dir);
        EXPECT_NE(e.find("consolidated.00.pth: consolidated.00/byteorder says 'big': tpx reads little-endian archives only"), std::string::npos) << e;
        fs::remove_all(fs::path(dir).parent_path());
    }
    {  // Cut short: the zip's directory is gone.
        std::string dir = copy_of("meta-llama-gqa-mp2");
        fs::resize_file(dir + "/consolidated.01.pth", fs::file_size(dir + "/consolidated.01.pth") / 2);
        std::string e = open_error(dir);
        EXPECT_NE(e.find("consolidated.01.pth: not a zip archive as torch.save writes"), std::string::npos) << e;
        fs::remove(dir + "/consolidated.01.pth");
        fs::copy(kMeta + "/meta-llama-gqa-mp2/consolidated.01.pth", dir + "/consolidated.02.pth");
        e = open_error(dir);
        EXPECT_NE(e.find("not consolidated.01.pth (found consolidated.02.pth in its place)"), std::string::npos) << e;
        fs::remove_all(fs::path(dir).parent_path());
    }
    // params.json against the tensors, each key by name.
    struct {
        const char* params;
        const char* message;
    } cases[] = {
        {R"({"dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "vocab_size": 512})",
         "params.json: \"dim\" = 128 and \"n_heads\" = 4 and \"n_kv_heads\" = 4 implies layers.0.attention.wk.weight [128, 128], but the "
         "files hold [64, 128]"},
        {R"({"dim": 128, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2, "vocab_size": 512})",
         "\"n_kv_heads\" = 2 implies layers.0.attention.wk.weight [32, 128], but the files hold [64, 128]"},
        {R"({"dim": 128, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4, "vocab_size": 0})",
         "params.json: \"vocab_size\" = 0 must be positive, or -1"},
        {R"({"dim": 128, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4, "vocab_size": 18446744073709551615})",
         "params.json: \"vocab_size\" = 18446744073709551615 is out of range"},
        {R"({"dim": 128, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4, "vocab_size": 500})",
         "params.json: \"vocab_size\" = 500 but tok_embeddings.weight has 512 rows"},
        {R"({"dim": 128, "n_layers": 1, "n_heads": 8, "n_kv_heads": 4, "vocab_size": 512})",
         "params.json: \"n_layers\" = 1 but the files hold layers.1."},
        {R"({"dim": 128, "n_layers": 3, "n_heads": 8, "n_kv_heads": 4, "vocab_size": 512})",
         "has no tensor 'layers.2.attention.wq.weight', which params.json"},
        {R"({"dim": 128, "n_layers": 2, "n_heads": "8"})", "params.json: \"n_heads\" is \"8\", not an integer"},
        // Meta's FFN rule: int(2 * 512 / 3) = 341, rounded up to 32 is the files' 352; to 64, 384; x 1.3 = 443 -> 448.
        {R"({"dim": 128, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4, "vocab_size": 512, "multiple_of": 64})",
         "params.json: \"dim\" = 128 and \"multiple_of\" = 64 and \"ffn_dim_multiplier\" = null imply layers.0.feed_forward.w1.weight "
         "[384, 128], but the files hold [352, 128]"},
        {R"({"dim": 128, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4, "vocab_size": 512, "multiple_of": 32, "ffn_dim_multiplier": 1.3})",
         "\"multiple_of\" = 32 and \"ffn_dim_multiplier\" = 1.3 imply layers.0.feed_forward.w1.weight [448, 128]"},
        {R"({"dim": 128, "n_layers": 2, "n_heads": 8, "multiple_of": 0})", "params.json: \"multiple_of\" = 0 must be positive"},
    };
    std::string dir = copy_of("meta-llama-gqa-mp2");
    for (const auto& c : cases) {
        std::ofstream(dir + "/params.json") << c.params;
        std::string e = open_error(dir);
        EXPECT_NE(e.find(c.message), std::string::npos) << c.params << "\n" << e;
    }
    fs::remove_all(fs::path(dir).parent_path());
}
