// A checkpoint as tpx reads it: an HF model folder (config.json + model.safetensors, or
// model.safetensors.index.json + its shards), a single .safetensors file, an .h5 file
// written by `tpx convert`, or a Meta folder (params.json + consolidated.NN.pth, loader/meta.h). Lists every tensor and reads slices of them, converted to the
// dtype asked for, into host memory or through a caller's staging buffers (the GPU backend's
// pinned buffers), counting every byte it reads.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "loader/dtype.h"
#include "loader/safetensors.h"
#include "loader/slice.h"

namespace tpx {

struct ReadStats {
    uint64_t header_bytes = 0;  // headers, index and config files
    uint64_t data_bytes = 0;    // tensor data read, gaps between coalesced spans included
    uint64_t reads = 0;         // read calls issued
    std::map<std::string, uint64_t> data_bytes_per_file;
};

// One slice of one tensor to read, converted to `dst_type`; `tag` is the caller's (which of its
// buffers the result goes to).
struct ReadRequest {
    std::string tensor;
    Slice slice;
    DType dst_type;
    size_t tag = 0;
};

// Where the converted elements of reads go, in chunks of at most chunk_bytes() of one
// request's result. A batch of requests is read by a pool of threads: acquire() and commit()
// are called from several threads at once, chunks of every request in any order. acquire()
// may block until a staging buffer is free again, which is how the GPU backend overlaps file
// reads with host-to-device copies.
class ReadSink {
public:
    virtual ~ReadSink() = default;
    virtual uint64_t chunk_bytes() const = 0;
    // Memory for bytes [offset, offset + bytes) of request r's result.
    virtual void* acquire(const ReadRequest& r, uint64_t offset, uint64_t bytes) = 0;
    // Those bytes are filled and converted.
    virtual void commit(const ReadRequest& r, void* memory, uint64_t offset, uint64_t bytes) = 0;
};

// The sink for plain host buffers holding whole results: request r lands in dsts[r.tag].
class HostSink : public ReadSink {
public:
    explicit HostSink(std::vector<void*> dsts) : dsts_(std::move(dsts)) {}
    uint64_t chunk_bytes() const override { return UINT64_MAX; }
    void* acquire(const ReadRequest& r, uint64_t offset, uint64_t) override { return static_cast<char*>(dsts_.at(r.tag)) + offset; }
    void commit(const ReadRequest&, void*, uint64_t, uint64_t) override {}

private:
    std::vector<void*> dsts_;
};

// A load's say over its reads, consulted before each chunk of tensor data: `stop` ends the
// batch (the read throws ReadStopped: `tpx serve` asked to stop while it loads), `delay_ms`
// pauses each read (a test aid: a load slow enough to be stopped).
struct ReadControl {
    std::atomic<bool> stop{false};
    int delay_ms = 0;
};

// Thrown by a read begun after its ReadControl's stop was set; not a fault of the checkpoint.
class ReadStopped : public std::runtime_error {
public:
    ReadStopped() : std::runtime_error("the load was asked to stop") {}
};

class Checkpoint {
public:
    virtual ~Checkpoint() = default;

    // Opens PATH (a folder, a .safetensors file or an .h5 file) and validates every header.
    // `threads` = read threads (0 = a default from the machine).
    static std::unique_ptr<Checkpoint> open(const std::string& path, int threads = 0);

    const std::string& path() const { return path_; }
    virtual const char* format() const = 0;
    virtual int read_threads() const { return 1; }  // how many reads a batch runs at once
    const std::vector<TensorInfo>& tensors() const { return tensors_; }  // sorted by name
    const TensorInfo* find(const std::string& name) const;
    const TensorInfo& tensor(const std::string& name) const;  // throws CheckpointError naming it
    virtual std::vector<std::string> files() const;          // the files holding tensor data
    // Where a tensor comes from, for `tpx inspect`, when it is more than one file's bytes (a
    // Meta tensor assembled from several files); "" otherwise.
    virtual std::string source_of(const std::string&) const { return ""; }
    uint64_t total_bytes() const;
    const std::string& config_json() const { return config_json_; }
    const std::string& generation_config_json() const { return generation_config_json_; }

    // Reads `slice` of tensor `name`, converted to `dst_type`, into `dst` (dense, row-major).
    void read(const std::string& name, const Slice& slice, DType dst_type, void* dst);
    void read(const std::string& name, const Slice& slice, DType dst_type, ReadSink& sink);
    // Reads every request into `sink`, in parallel where the format allows, with no barrier
    // between requests. Every request is checked (tensor, slice, conversion) before any byte
    // is read; after a failed read the remaining chunks are skipped and the error is thrown.
    virtual void read(const std::vector<ReadRequest>& requests, ReadSink& sink) = 0;
    // The file bytes that reading `slice` of tensor `name` costs (the planner's read_bytes):
    // the coalesced reads of its spans (loader/slice.h); formats that read exactly the slice
    // override it.
    virtual uint64_t read_bytes(const std::string& name, const Slice& slice) const;

    ReadStats stats() const;
    void reset_stats();
    // Reads from now on consult `control` (nullptr: none); it outlives them.
    virtual void set_control(const ReadControl* control) { control_ = control; }

protected:
    explicit Checkpoint(std::string path) : path_(std::move(path)) {}
    // The request's tensor, after checking that it exists, converts to r.dst_type and fits
    // r.slice; throws CheckpointError naming the file and tensor otherwise.
    const TensorInfo& checked(const ReadRequest& r) const;
    void set_tensors(std::vector<TensorInfo> tensors);
    void count_header(uint64_t bytes) { header_bytes_ += bytes; }
    void count_data(const std::string& file, uint64_t bytes);
    // Before each chunk of tensor data, ahead of the sink's acquire() (so that a stop leaves no
    // staging buffer taken): the control's pause, then its stop (ReadStopped).
    void before_read() const;
    // Reads exactly `bytes` at `offset` of `file` (open as `fd`) into dst, retrying short reads,
    // and counts them; a file that ends early or a failed read is a CheckpointError naming it.
    void pread_counted(int fd, const std::string& file, void* dst, uint64_t bytes, uint64_t offset);

    std::string path_;
    std::string config_json_;
    std::string generation_config_json_;

private:
    const ReadControl* control_ = nullptr;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t> index_;
    std::atomic<uint64_t> header_bytes_{0}, data_bytes_{0}, reads_{0};
    mutable std::mutex stats_mutex_;
    std::map<std::string, uint64_t> per_file_;
};

// Reads a whole small text file (config.json); throws CheckpointError naming it.
std::string read_text_file(const std::string& path);


}  // namespace tpx
