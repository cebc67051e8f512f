// libtpx_trace.so: a GPU timeline for machines without Nsight Systems. Preloaded into a process
// (LD_PRELOAD=libtpx_trace.so TPX_TRACE=out_%r.csv), it records every kernel and copy through
// CUPTI's activity API (kernels inside CUDA graphs included, start and end on the GPU clock)
// and writes them as CSV when the process exits; %r becomes the MPI rank.
// bench/timeline.py summarises one decode step from it.
#include <cupti.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr size_t kBufferBytes = 8u << 20;

struct Record {
    char kind;  // K kernel, M copy
    uint64_t start, end;
    int32_t grid;
    uint32_t stream;
    std::string name;
};

std::mutex mu;
std::vector<Record> records;

void CUPTIAPI on_request(uint8_t** buffer, size_t* size, size_t* max_records) {
    *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
    *size = kBufferBytes;
    *max_records = 0;
}

void CUPTIAPI on_complete(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
    CUpti_Activity* r = nullptr;
    std::lock_guard<std::mutex> lock(mu);
    while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
        if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(r);
            records.push_back({'K', k->start, k->end, k->gridX, k->streamId, k->name ? k->name : "?"});
        } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            auto* m = reinterpret_cast<CUpti_ActivityMemcpy6*>(r);
            records.push_back({'M', m->start, m->end, 0, m->streamId, "memcpy kind " + std::to_string(m->copyKind)});
        }
    }
    std::free(buffer);
}

struct Tracer {
    std::string path;
    Tracer() {
        const char* out = std::getenv("TPX_TRACE");
        if (!out) return;
        path = out;
        const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
        if (auto at = path.find("%r"); at != std::string::npos) path.replace(at, 2, rank ? rank : "0");
        cuptiActivityRegisterCallbacks(on_request, on_complete);
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
    }
    ~Tracer() {
        if (path.empty()) return;
        cuptiActivityFlushAll(1);
        std::lock_guard<std::mutex> lock(mu);
        if (records.empty()) return;  // a process without GPU work (the launcher, mpirun) leaves the file alone
        FILE* f = std::fopen(path.c_str(), "w");
        if (!f) return;
        std::fprintf(f, "kind,start_ns,end_ns,grid_x,stream,name\n");
        for (const Record& r : records)
            std::fprintf(f, "%c,%llu,%llu,%d,%u,%s\n", r.kind, (unsigned long long)r.start, (unsigned long long)r.end, r.grid, r.stream,
                         r.name.c_str());
        std::fclose(f);
    }
} tracer;

}  // namespace
