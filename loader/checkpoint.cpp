// Checkpoint: the shared listing and accounting, and the safetensors implementation (HF
// folders with one file or an index of shards). Reads are planned as spans (loader/slice.h)
// and issued with pread from a pool of threads; mmap is not used, since a rank reads each byte
// once and page-faulting a mapping costs more than one large pread into the final buffer.
#include "loader/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/json_object.h"
#include "common/path.h"
#include "common/task_pool.h"
#include "loader/hdf5.h"
#include "loader/meta.h"
#include "loader/quantized.h"
#include "loader/regular_file.h"

namespace fs = std::filesystem;

namespace tpx {

std::string read_text_file(const std::string& path) {
    require_regular_file(path);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw CheckpointError(path + ": cannot open: " + std::strerror(errno));
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& Checkpoint::tensor(const std::string& name) const {
    const TensorInfo* t = find(name);
    if (!t) throw CheckpointError(path_ + ": no tensor named '" + name + "' (" + std::to_string(tensors_.size()) + " tensors)");
    return *t;
}

std::vector<std::string> Checkpoint::files() const {
    std::vector<std::string> out;
    for (const TensorInfo& t : tensors_)
        if (std::find(out.begin(), out.end(), t.file) == out.end()) out.push_back(t.file);
    std::sort(out.begin(), out.end());
    return out;
}

uint64_t Checkpoint::total_bytes() const {
    uint64_t n = 0;
    for (const TensorInfo& t : tensors_) n += t.nbytes;
    return n;
}

void Checkpoint::set_tensors(std::vector<TensorInfo> tensors) {
    std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
    tensors_ = std::move(tensors);
    index_.clear();
    for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

void Checkpoint::read(const std::string& name, const Slice& slice, DType dst_type, void* dst) {
    HostSink sink({dst});
    read(name, slice, dst_type, sink);
}

void Checkpoint::read(const std::string& name, const Slice& slice, DType dst_type, ReadSink& sink) {
    read(std::vector<ReadRequest>{{name, slice, dst_type, 0}}, sink);
}

uint64_t Checkpoint::read_bytes(const std::string& name, const Slice& slice) const {
    const TensorInfo& t = tensor(name);
    std::vector<Span> spans = plan_spans(t, slice);
    uint64_t bytes = 0;
    for (const ReadOp& op : plan_reads(spans, dtype_size(t.dtype))) bytes += op.bytes;
    return bytes;
}

const TensorInfo& Checkpoint::checked(const ReadRequest& r) const {
    const TensorInfo& t = tensor(r.tensor);
    if (!can_convert(t.dtype, r.dst_type))
        throw CheckpointError(t.file + ": tensor '" + r.tensor + "' is " + dtype_name(t.dtype) + " and cannot be read as " +
                              dtype_name(r.dst_type));
    slice_shape(t, r.slice);
    return t;
}

void Checkpoint::before_read() const {
    if (!control_) return;
    // The pause in slices, each ending early once the stop is set.
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(control_->delay_ms);
    while (!control_->stop.load(std::memory_order_relaxed) && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (control_->stop.load(std::memory_order_relaxed)) throw ReadStopped();
}

void Checkpoint::pread_counted(int fd, const std::string& file, void* dst, uint64_t bytes, uint64_t offset) {
    char* p = static_cast<char*>(dst);
    for (uint64_t done = 0; done < bytes;) {
        ssize_t r = ::pread(fd, p + done, bytes - done, (off_t)(offset + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            throw CheckpointError(file + ": read of " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
                                  " failed: " + (r == 0 ? "the file ended early (truncated?)" : std::strerror(errno)));
        done += (uint64_t)r;
    }
    count_data(file, bytes);
}

void Checkpoint::count_data(const std::string& file, uint64_t bytes) {
    data_bytes_ += bytes;
    ++reads_;
    std::lock_guard<std::mutex> lock(stats_mutex_);
    per_file_[file] += bytes;
}

ReadStats Checkpoint::stats() const {
    ReadStats s;
    s.header_bytes = header_bytes_;
    s.data_bytes = data_bytes_;
    s.reads = reads_;
    std::lock_guard<std::mutex> lock(stats_mutex_);
    s.data_bytes_per_file = per_file_;
    return s;
}

void Checkpoint::reset_stats() {
    header_bytes_ = data_bytes_ = reads_ = 0;
    std::lock_guard<std::mutex> lock(stats_mutex_);
    per_file_.clear();
}

namespace {

using json = nlohmann::json;

// The most result bytes one task of a batched read produces, unless the sink's chunk is smaller.
constexpr uint64_t kTaskBytes = 8u << 20;

class SafetensorsCheckpoint : public Checkpoint {
public:
    SafetensorsCheckpoint(const std::string& path, int threads) : Checkpoint(path), pool_(threads) {}
    ~SafetensorsCheckpoint() override {
        for (auto& [file, fd] : fds_) ::close(fd);
    }
    const char* format() const override { return "safetensors"; }
    int read_threads() const override { return pool_.threads(); }

    void open_folder();
    void open_file(const std::string& file);
    using Checkpoint::read;
    void read(const std::vector<ReadRequest>& requests, ReadSink& sink) override;

private:
    int fd_of(const std::string& file);
    void pread_fully(const std::string& file, void* dst, uint64_t bytes, uint64_t offset);

    TaskPool pool_;
    std::mutex fd_mutex_;
    std::map<std::string, int> fds_;
};

void SafetensorsCheckpoint::open_file(const std::string& file) {
    uint64_t header = 0;
    SafetensorsHeader h = read_safetensors_header(file, &header);
    count_header(header);
    set_tensors(std::move(h.tensors));
}

void SafetensorsCheckpoint::open_folder() {
    fs::path dir(path_);
    auto text_if_present = [&](const char* name) {
        fs::path p = dir / name;
        if (!path_exists<CheckpointError>(p)) return std::string();
        std::string text = read_text_file(p.string());
        count_header(text.size());
        return text;
    };
    config_json_ = text_if_present("config.json");
    generation_config_json_ = text_if_present("generation_config.json");

    fs::path index_path = dir / "model.safetensors.index.json";
    const fs::path single = dir / "model.safetensors";
    const bool has_single = path_exists<CheckpointError>(single);
    if (!path_exists<CheckpointError>(index_path)) {
        if (!has_single) throw CheckpointError(path_ + ": neither model.safetensors nor model.safetensors.index.json is here");
        open_file(single.string());
        return;
    }
    // HF transformers reads the single file of such a folder, vLLM the index's shards: which
    // weights are the checkpoint's is not tpx's guess to make.
    if (has_single)
        throw CheckpointError(path_ + ": holds both model.safetensors and model.safetensors.index.json (HF transformers would read the "
                                      "first, vLLM the shards the second names): remove the one that is not this checkpoint");

    std::string index_file = index_path.string();
    std::string text = read_text_file(index_file);
    count_header(text.size());
    json index;
    std::string repeated;
    try {
        index = parse_noting_repeated_key<json>(text, repeated);
    } catch (const json::exception& e) {
        throw CheckpointError(index_file + ": not valid JSON: " + strip_json_tag(e));
    }
    if (!repeated.empty()) throw CheckpointError(index_file + ": the key '" + repeated + "' is given twice (a tensor placed twice?)");
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
        throw CheckpointError(index_file + ": has no \"weight_map\" object");

    // Every shard the index names, read once; each tensor must be where the index says, once.
    std::map<std::string, std::vector<std::string>> names_by_shard;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
        if (!it->is_string())
            throw CheckpointError(index_file + ": weight_map entry for '" + it.key() + "' is " + it->dump() + ", not a file name");
        // A shard is a file of the checkpoint's folder: a name that is absolute or climbs out of
        // the folder would have tpx read files the checkpoint does not own.
        const fs::path shard(it->get<std::string>());
        if (shard.empty() || shard.is_absolute() || std::find(shard.begin(), shard.end(), "..") != shard.end())
            throw CheckpointError(index_file + ": weight_map places tensor '" + it.key() + "' in " + it->dump() +
                                  ", which is not a file inside the checkpoint's folder");
        names_by_shard[shard.string()].push_back(it.key());
    }
    std::map<std::string, TensorInfo> by_name;
    std::map<std::string, std::string> shard_of;
    for (const auto& [shard, names] : names_by_shard) {
        fs::path shard_path = dir / shard;
        if (!path_exists<CheckpointError>(shard_path, index_file + ": weight_map's shard "))
            throw CheckpointError(index_file + ": weight_map places tensor '" + names.front() + "' in " + shard +
                                  ", which does not exist (" + shard_path.string() + ")");
        uint64_t header = 0;
        SafetensorsHeader h = read_safetensors_header(shard_path.string(), &header);
        count_header(header);
        for (TensorInfo& t : h.tensors) {
            auto [it, inserted] = shard_of.emplace(t.name, shard);
            if (!inserted)
                throw CheckpointError(path_ + ": tensor '" + t.name + "' is stored twice, in " + it->second + " and in " + shard);
            by_name[t.name] = t;
        }
        for (const std::string& name : names)
            if (!by_name.count(name) || shard_of[name] != shard)
                throw CheckpointError(index_file + ": weight_map places tensor '" + name + "' in " + shard +
                                      ", whose header lacks it");
    }
    std::vector<TensorInfo> tensors;
    for (auto& [name, t] : by_name) {
        if (!index["weight_map"].contains(name)) continue;  // in a shard but not indexed: HF ignores it too
        tensors.push_back(std::move(t));
    }
    set_tensors(std::move(tensors));
}

int SafetensorsCheckpoint::fd_of(const std::string& file) {
    std::lock_guard<std::mutex> lock(fd_mutex_);
    auto it = fds_.find(file);
    if (it != fds_.end()) return it->second;
    const int fd = open_checkpoint_file(file);
    fds_[file] = fd;
    return fd;
}

void SafetensorsCheckpoint::pread_fully(const std::string& file, void* dst, uint64_t bytes, uint64_t offset) {
    pread_counted(fd_of(file), file, dst, bytes, offset);
}

namespace {

// Reads [first_read, last_read) of a request, filling elements [first_elem, end_elem) of its
// result: at most the sink's chunk and kTaskBytes, so that threads share big tensors.
struct ReadChunk {
    size_t request, first_read, last_read;
    uint64_t first_elem, end_elem;
};

// Request q's reads in chunks of at most `limit` bytes of the result (a read bigger than that
// is a chunk of its own), appended to `chunks` in order.
void add_chunks(size_t q, const std::vector<Span>& spans, const std::vector<ReadOp>& reads, size_t dst_size, uint64_t limit,
                std::vector<ReadChunk>& chunks) {
    size_t first = 0;
    while (first < reads.size()) {
        uint64_t begin = spans[reads[first].first_span].dst_elem, end = begin;
        size_t last = first;
        while (last < reads.size()) {
            const Span& s = spans[reads[last].last_span - 1];
            uint64_t e = s.dst_elem + s.elems;
            if (last > first && (e - begin) * dst_size > limit) break;
            end = e;
            ++last;
        }
        chunks.push_back({q, first, last, begin, end});
        first = last;
    }
}

}  // namespace

void SafetensorsCheckpoint::read(const std::vector<ReadRequest>& requests, ReadSink& sink) {
    // Plan everything first: a bad request fails before any byte is read.
    struct Planned {
        const TensorInfo* t;
        std::vector<Span> spans;
        std::vector<ReadOp> reads;
    };
    std::vector<Planned> plans;
    plans.reserve(requests.size());
    for (const ReadRequest& r : requests) {
        const TensorInfo& t = checked(r);
        Planned p{&t, plan_spans(t, r.slice), {}};
        p.reads = plan_reads(p.spans, dtype_size(t.dtype));
        plans.push_back(std::move(p));
    }

    // Each request's reads are grouped into chunks of its result (ReadChunk); a chunk is one
    // task of one batch on the pool, from acquire to commit.
    std::vector<ReadChunk> chunks;
    for (size_t q = 0; q < requests.size(); ++q) {
        const Planned& p = plans[q];
        size_t src_size = dtype_size(p.t->dtype), dst_size = dtype_size(requests[q].dst_type);
        uint64_t max_op = kMaxReadBytes / src_size * dst_size + kPageBytes * dst_size;
        TPX_CHECK(sink.chunk_bytes() >= max_op, "a read sink's chunk of " + std::to_string(sink.chunk_bytes()) +
                                                    " bytes is below the " + std::to_string(max_op) + " one read may produce");
        add_chunks(q, p.spans, p.reads, dst_size, std::min(sink.chunk_bytes(), std::max(kTaskBytes, max_op)), chunks);
    }

    std::vector<std::function<void()>> tasks;
    tasks.reserve(chunks.size());
    for (const ReadChunk& c : chunks) {
        tasks.push_back([&, c] {
            const ReadRequest& r = requests[c.request];
            const Planned& p = plans[c.request];
            const TensorInfo& t = *p.t;
            size_t dst_size = dtype_size(r.dst_type);
            uint64_t offset = c.first_elem * dst_size, bytes = (c.end_elem - c.first_elem) * dst_size;
            before_read();  // before the sink's buffer is taken: a stop returns none unfilled
            char* memory = static_cast<char*>(sink.acquire(r, offset, bytes));
            std::vector<char> scratch;
            for (size_t k = c.first_read; k < c.last_read; ++k) {
                const ReadOp& op = p.reads[k];
                char* out = memory + (p.spans[op.first_span].dst_elem - c.first_elem) * dst_size;
                if (r.dst_type == t.dtype && op.last_span == op.first_span + 1) {
                    pread_fully(t.file, out, op.bytes, op.offset);  // straight into the result
                    continue;
                }
                scratch.resize(op.bytes);
                pread_fully(t.file, scratch.data(), op.bytes, op.offset);
                for (size_t i = op.first_span; i < op.last_span; ++i) {
                    const Span& s = p.spans[i];
                    convert(scratch.data() + (s.src_offset - op.offset), t.dtype, memory + (s.dst_elem - c.first_elem) * dst_size,
                            r.dst_type, s.elems);
                }
            }
            sink.commit(r, memory, offset, bytes);
        });
    }
    pool_.run(tasks);
}

// The job's model.read_threads overrides it (Checkpoint::open's `threads`).
int default_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return (int)std::max(2u, std::min(n, 16u));
}

}  // namespace

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& path, int threads) {
    if (threads <= 0) threads = default_threads();
    const fs::file_type type = path_type<CheckpointError>(path);
    if (type == fs::file_type::not_found) throw CheckpointError(path + ": no such file or directory");
    if (type == fs::file_type::directory) {
        check_folder_layout(path);
        if (is_meta_folder(path)) return open_meta_checkpoint(path, threads);
        auto c = std::make_unique<SafetensorsCheckpoint>(path, threads);
        c->open_folder();
        return open_quantized(std::move(c));  // config.json's quantization_config, if any
    }
    std::string ext = fs::path(path).extension().string();
    if (ext == ".h5" || ext == ".hdf5") return open_hdf5_checkpoint(path);
    if (ext == ".safetensors") {
        auto c = std::make_unique<SafetensorsCheckpoint>(path, threads);
        c->open_file(path);
        return c;
    }
    throw CheckpointError(path + ": not a model folder, a .safetensors file or an .h5 file");
}

}  // namespace tpx
