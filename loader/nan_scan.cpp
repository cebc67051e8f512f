// The scan: a ReadSink that hands out a buffer per chunk and counts non-finite elements when
// the chunk is committed. Chunks of one tensor arrive from several read threads in any order,
// so counts are summed and the first index is the least over chunks, under one mutex.
#include "loader/nan_scan.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>

namespace tpx {
namespace {

// Big enough for one read of the safetensors reader (kMaxReadBytes of bf16 as float32) and an
// HDF5 row of a 128k vocabulary; small enough that 16 read threads hold well under 1 GB.
constexpr uint64_t kScanChunkBytes = 32ull << 20;

class ScanSink : public ReadSink {
public:
    explicit ScanSink(std::vector<NonFiniteTensor>& found) : found_(found) {}
    uint64_t chunk_bytes() const override { return kScanChunkBytes; }
    // Buffers live in `live_` until their commit, so that a failed read frees those it took.
    void* acquire(const ReadRequest&, uint64_t, uint64_t bytes) override {
        auto buffer = std::make_unique<float[]>(bytes / sizeof(float));
        float* p = buffer.get();
        std::lock_guard<std::mutex> lock(mutex_);
        live_[p] = std::move(buffer);
        return p;
    }
    void commit(const ReadRequest& r, void* memory, uint64_t offset, uint64_t bytes) override {
        std::unique_ptr<float[]> data;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            auto it = live_.find(memory);
            data = std::move(it->second);
            live_.erase(it);
        }
        int64_t nan = 0, inf = 0, first = -1;
        const int64_t n = (int64_t)(bytes / sizeof(float));
        for (int64_t i = 0; i < n; ++i) {
            if (std::isfinite(data[i])) continue;
            if (first < 0) first = i;
            (std::isnan(data[i]) ? nan : inf) += 1;
        }
        if (first < 0) return;
        std::lock_guard<std::mutex> lock(mutex_);
        NonFiniteTensor& t = found_[r.tag];
        t.nan += nan, t.inf += inf;
        const int64_t at = (int64_t)(offset / sizeof(float)) + first;
        t.first_index = t.first_index < 0 ? at : std::min(t.first_index, at);
    }

private:
    std::vector<NonFiniteTensor>& found_;
    std::mutex mutex_;
    std::map<void*, std::unique_ptr<float[]>> live_;
};

bool is_float(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

}  // namespace

NanScan scan_non_finite(Checkpoint& ckpt) {
    NanScan scan;
    std::vector<ReadRequest> requests;
    std::vector<NonFiniteTensor> found;
    for (const TensorInfo& t : ckpt.tensors()) {
        if (!is_float(t.dtype)) {
            scan.skipped.push_back(t.name);
            continue;
        }
        requests.push_back({t.name, Slice::whole(), DType::kF32, found.size()});
        found.push_back({t.name, 0, 0, -1, t.numel()});
        scan.tensors += 1;
        scan.bytes += t.nbytes;
    }
    ScanSink sink(found);
    ckpt.read(requests, sink);
    for (NonFiniteTensor& t : found)
        if (t.first_index >= 0) scan.bad.push_back(std::move(t));
    return scan;
}

}  // namespace tpx
