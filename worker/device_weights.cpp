// Device weights: each parameter's pieces read from the checkpoint straight into its device
// buffer through a ring of pinned staging buffers (file reads overlap the host-to-device
// copies; host memory stays near the staging size).
#include "worker/device_weights.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "common/cuda_check.h"
#include "common/error.h"
#include "common/log.h"
#include "loader/slice.h"
#include "worker/quant_weights.h"

namespace tpx {

using bf16 = __nv_bfloat16;

// A staging buffer holds one of the loader's reads: kMaxReadBytes of the result plus the page of
// slack a read may carry (loader/checkpoint.cpp's `max_op` for a bf16 result from bf16, fp16 or
// fp32), rounded up to 16 KiB. Two a read thread keep the ring small enough to stay in the
// host's last-level cache, where the reads write it and the copies read it (docs/PERF.md,
// 2026-12-03 sixth session).
constexpr size_t kStagingChunk = kMaxReadBytes + 2 * kPageBytes * sizeof(bf16);
static_assert(kStagingChunk >= kMaxReadBytes + kPageBytes * sizeof(bf16), "a buffer holds the loader's largest read of bf16");

// Pinned staging buffers, an event each (its last copy up), and a stream per read thread.
struct StagingRing {
    StagingRing(int buffers, int threads) : streams(std::max(1, threads)), done(buffers) {
        CUDA_CHECK(cudaGetDevice(&device));
        for (cudaStream_t& s : streams) CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        CUDA_CHECK(cudaHostAlloc(&base, kStagingChunk * buffers, cudaHostAllocDefault));
        for (cudaEvent_t& e : done) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    // While an exception unwinds a copy may still read the buffers: they are left (the job is
    // about to be aborted, or, after a serve's stop, the rank to exit).
    ~StagingRing() {
        if (std::uncaught_exceptions()) return;
        for (cudaStream_t s : streams) {
            cudaStreamSynchronize(s);
            cudaStreamDestroy(s);
        }
        cudaFreeHost(base);
        for (cudaEvent_t e : done) cudaEventDestroy(e);
    }
    StagingRing(const StagingRing&) = delete;
    StagingRing& operator=(const StagingRing&) = delete;

    int device = 0;
    std::vector<cudaStream_t> streams;
    char* base = nullptr;
    std::vector<cudaEvent_t> done;
};

// While an exception unwinds the job is about to be aborted (or, after a serve's stop, the rank
// to exit): freeing (which synchronizes) could wait forever on a kernel stuck in a collective
// with a dead peer, so nothing is freed.
DeviceWeights::DeviceWeights() = default;
DeviceWeights::~DeviceWeights() {
    if (std::uncaught_exceptions()) return;  // (the ring keeps its own buffers then: ~StagingRing)
    for (auto& [name, p] : params) cudaFree(p);
    for (void* p : quant_buffers) cudaFree(p);
}
void DeviceWeights::drop_staging() { staging.reset(); }
DeviceWeights::DeviceWeights(DeviceWeights&& o) noexcept
    : params(std::move(o.params)), quant(std::move(o.quant)), quant_buffers(std::move(o.quant_buffers)), bytes(o.bytes),
      staging(std::move(o.staging)) {
    o.params.clear(), o.quant.clear(), o.quant_buffers.clear();
}
DeviceWeights& DeviceWeights::operator=(DeviceWeights&& o) noexcept {
    std::swap(params, o.params);
    std::swap(quant, o.quant);
    std::swap(quant_buffers, o.quant_buffers);
    std::swap(staging, o.staging);
    bytes = o.bytes;
    return *this;
}

namespace {

// A batched read's sink over a staging ring, shared by the loader's threads: each thread fills
// a buffer with a chunk of a request (file reads straight into pinned memory), then queues its
// copy to the device; the buffer is handed out again once that copy has finished. Each thread
// queues on a stream of its own (threads sharing one stream wait on each other inside the
// driver). Every byte takes this path, pread from the page cache by the checkpoint's threads
// (docs/PERF.md has the paths compared).
class PinnedRingSink : public ReadSink {
public:
    // The copies begin after the work already queued on `after`; they have all finished once
    // the sink is destroyed (its destructor waits for the ring's streams).
    PinnedRingSink(StagingRing& ring, cudaStream_t after, std::vector<char*> targets) : ring_(ring), targets_(std::move(targets)) {
        cudaEvent_t start;
        CUDA_CHECK(cudaEventCreateWithFlags(&start, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventRecord(start, after));
        for (cudaStream_t s : ring_.streams) CUDA_CHECK(cudaStreamWaitEvent(s, start, 0));
        CUDA_CHECK(cudaEventDestroy(start));
        for (int i = 0; i < (int)ring_.done.size(); ++i) free_.push_back(i);
    }
    ~PinnedRingSink() override {
        if (std::uncaught_exceptions()) return;  // the ring is left as it is (StagingRing)
        for (cudaStream_t s : ring_.streams) cudaStreamSynchronize(s);
    }
    uint64_t chunk_bytes() const override { return kStagingChunk; }

    void* acquire(const ReadRequest&, uint64_t, uint64_t) override {
        CUDA_CHECK(cudaSetDevice(ring_.device));  // (the checkpoint's read threads start on device 0)
        auto t0 = std::chrono::steady_clock::now();
        int i;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            available_.wait(lock, [&] { return !free_.empty(); });
            i = free_.front();
            free_.pop_front();
        }
        CUDA_CHECK(cudaEventSynchronize(ring_.done[i]));  // its previous copy has finished
        waited_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
        return ring_.base + (size_t)i * kStagingChunk;
    }
    // Seconds the read threads spent, in all, waiting for a buffer: large when the copies to
    // the device, not the file reads, are the bottleneck.
    double waited_s() const { return waited_ns_ * 1e-9; }
    // Seconds the threads spent, in all, inside the calls that queue the copies (where a
    // driver that stages or encrypts host memory does its work).
    double queue_s() const { return queue_ns_ * 1e-9; }
    void commit(const ReadRequest& r, void* memory, uint64_t offset, uint64_t bytes) override {
        auto t0 = std::chrono::steady_clock::now();
        int i = (int)((static_cast<char*>(memory) - ring_.base) / kStagingChunk);
        const cudaStream_t stream = my_stream();
        CUDA_CHECK(cudaMemcpyAsync(targets_.at(r.tag) + offset, memory, bytes, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaEventRecord(ring_.done[i], stream));
        queue_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
        {
            std::lock_guard<std::mutex> lock(mutex_);
            free_.push_back(i);
        }
        available_.notify_one();
    }

private:
    // The calling thread's stream: the next unused one the first time a thread calls (threads
    // beyond the streams' count share them).
    cudaStream_t my_stream() {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = slots_.try_emplace(std::this_thread::get_id(), slots_.size()).first;
        return ring_.streams[it->second % ring_.streams.size()];
    }
    StagingRing& ring_;
    std::vector<char*> targets_;
    std::mutex mutex_;
    std::condition_variable available_;
    std::deque<int> free_;
    std::unordered_map<std::thread::id, size_t> slots_;  // my_stream()'s
    std::atomic<int64_t> waited_ns_{0}, queue_ns_{0};
};

// The reads that fill every bf16 parameter's device buffer from the plan's pieces of `rank`;
// pieces the plan leaves empty (padding) are zeroed on `stream`. Quantized parameters are left
// out (named in `quantized`: upload_quant_params packs them). `allocate`: cudaMalloc each buffer
// into `w`; else each must be there already (a refit: same addresses, so captured graphs stay valid).
void plan_device_reads(const Graph& graph, int rank, Checkpoint& ckpt, DeviceWeights& w, bool allocate, cudaStream_t stream,
                       std::vector<ReadRequest>& requests, std::vector<char*>& targets, std::set<std::string>& quantized) {
    for (Node* n : graph.nodes()) {
        if (!n->param) continue;
        if (is_quantized_param(n, rank, ckpt)) {
            quantized.insert(n->name);
            continue;
        }
        if (n->out()->dtype != "bfloat16")
            throw Error("the CUDA backend holds bf16 weights, but " + n->name + " is planned as " + n->out()->dtype +
                            " (set model.dtype = \"bfloat16\")",
                        kExitBadInput);
        int64_t elements = shape_numel(n->out()->shape);
        bf16* dst = nullptr;
        if (allocate) {
            CUDA_CHECK(cudaMalloc(&dst, std::max<int64_t>(1, elements) * sizeof(bf16)));
            w.params[n->name] = dst;
            w.bytes += elements * (int64_t)sizeof(bf16);
        } else {
            auto it = w.params.find(n->name);
            if (it == w.params.end()) throw Error("refit: rank " + std::to_string(rank) + " holds no device buffer for " + n->name);
            dst = it->second;
        }
        int64_t at = 0;
        for (const Piece& p : n->param->by_rank.at(rank)) {
            if (p.tensor.empty()) {
                CUDA_CHECK(cudaMemsetAsync(dst + at, 0, p.elements * sizeof(bf16), stream));
            } else {
                requests.push_back({p.tensor, p.slice, DType::kBF16, targets.size()});
                targets.push_back(reinterpret_cast<char*>(dst + at));
            }
            at += p.elements;
        }
        if (at != elements) throw Error("plan for " + n->name + " fills " + std::to_string(at) + " of " + std::to_string(elements) + " elements");
    }
}

// Two buffers per read thread (one being filled, one whose copy is queued), at most
// `staging_bytes` in all.
std::unique_ptr<StagingRing> make_ring(int threads, size_t staging_bytes) {
    const int buffers = (int)std::max<size_t>(4, std::min<size_t>(2 * (size_t)threads, staging_bytes / kStagingChunk));
    return std::make_unique<StagingRing>(buffers, threads);
}

// One batched read of `requests` into device memory at `targets`, through `ring`; returns when
// every copy has landed.
void read_to_device(Checkpoint& ckpt, const std::vector<ReadRequest>& requests, std::vector<char*> targets, cudaStream_t stream,
                    StagingRing& ring) {
    {
        PinnedRingSink sink(ring, stream, std::move(targets));
        auto r0 = std::chrono::steady_clock::now();
        try {
            ckpt.read(requests, sink);
        } catch (const ReadStopped&) {
            // A serve's stop (worker/load_stop.h): no copy is left in flight behind it.
            for (cudaStream_t s : ring.streams) cudaStreamSynchronize(s);
            throw;
        }
        log_info("weights: ", requests.size(), " reads on ", ckpt.read_threads(), " threads in ",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count(), " s through ", ring.done.size(),
                 " pinned buffers (the threads waited ", sink.waited_s(), " s in all for a free one and spent ", sink.queue_s(),
                 " s queueing copies)");
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace

DeviceWeights upload_weights(const Graph& graph, int rank, Checkpoint& ckpt, cudaStream_t stream, bool fp8_row_scales, size_t staging_bytes) {
    DeviceWeights w;
    // Every parameter's memory first, then all pieces in one batched read.
    std::vector<ReadRequest> requests;
    std::vector<char*> targets;
    std::set<std::string> quantized;  // kept packed: upload_quant_params
    plan_device_reads(graph, rank, ckpt, w, /*allocate=*/true, stream, requests, targets, quantized);
    w.staging = make_ring(ckpt.read_threads(), staging_bytes);
    read_to_device(ckpt, requests, std::move(targets), stream, *w.staging);
    upload_quant_params(graph, rank, ckpt, quantized, fp8_row_scales, stream, w);
    return w;
}

void reload_weights(const Graph& graph, int rank, Checkpoint& ckpt, DeviceWeights& w, cudaStream_t stream, size_t staging_bytes) {
    // Checked before any write: quantized weights are packed at load (upload_quant_params), and
    // a refit does not repack them in place.
    for (Node* n : graph.nodes())
        if (n->param && is_quantized_param(n, rank, ckpt))
            throw Error("refit: " + n->name + " is quantized; the GPU backend refits bf16 weights only", kExitBadInput);
    std::vector<ReadRequest> requests;
    std::vector<char*> targets;
    std::set<std::string> quantized;
    plan_device_reads(graph, rank, ckpt, w, /*allocate=*/false, stream, requests, targets, quantized);
    // The load's ring, unless it has fewer streams than this checkpoint's read threads (a load
    // of one HDF5 file takes one thread; a refit from a safetensors folder takes many).
    if (!w.staging || (int)w.staging->streams.size() < ckpt.read_threads()) w.staging = make_ring(ckpt.read_threads(), staging_bytes);
    read_to_device(ckpt, requests, std::move(targets), stream, *w.staging);
}

}  // namespace tpx
