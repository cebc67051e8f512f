// One forward's activations on the GPU (the buffer planner of the CUDA executor): each value's
// buffer and rows, column views (a split's outputs) with their stride and base, and scratch.
// Buffers are stream-ordered allocations (cudaMallocAsync), or, for a captured decode step,
// StepArena offsets in that step's block; an eager step can record the block the same sequence
// of allocations needs. A value's buffer goes after its last reader (the step program's
// liveness); a view's base lives as long as its views. Everything is freed by the forward's end.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>

#include "sharding/graph.h"
#include "worker/device_weights.h"
#include "worker/step_arena.h"

namespace tpx {

class Activations {
public:
    using bf16 = __nv_bfloat16;
    struct Args {
        const DeviceWeights& weights;
        std::map<const Value*, size_t>& last_use;  // the step program's liveness
        cudaStream_t stream;
        char* arena;        // the captured step's block (offsets only, no allocation), or nullptr
        size_t* arena_peak; // an eager step that measures the block its allocations need (finish() writes it), or nullptr
    };
    explicit Activations(const Args& a);

    // A parameter's buffer, or an activation's.
    bf16* data(const Value* v) const;
    // Scratch of `elements` bf16 (give it back with release()).
    bf16* alloc(int64_t elements);
    // v's buffer, rows x v's width.
    bf16* make(const Value* v, int64_t rows);
    void release(bf16* p);
    // v has no buffer any more (its memory released, or never its own).
    void forget(const Value* v) { buf_.erase(v); }
    // v is columns of base's buffer starting at p, rows `stride` elements apart.
    void view(const Value* v, const Value* base, bf16* p, int64_t rows, int64_t stride);

    // v's rows where known (made this forward), else `otherwise`.
    int64_t rows_or(const Value* v, int64_t otherwise) const;
    int64_t rows(const Value* v) const { return rows_.at(v); }
    // v's row stride as a view, 0 for a packed buffer.
    int64_t stride(const Value* v) const;
    // Whether the allocations follow a block's plan (a captured step, or the eager step sizing it).
    bool planned() const { return arena_ || arena_peak_; }

    // The buffers of n's inputs whose last reader is node i (and of views' bases that end there).
    void release_inputs(size_t i, const Node* n);
    // Releases everything still held (outputs included) and records the block's peak.
    void finish();

private:
    const DeviceWeights& weights_;
    std::map<const Value*, size_t>& last_use_;
    cudaStream_t stream_;
    char* arena_;
    size_t* arena_peak_;
    StepArena plan_;
    std::map<const void*, size_t> offset_of_;
    std::map<const Value*, bf16*> buf_;
    std::map<const Value*, int64_t> rows_;
    std::map<const Value*, int64_t> stride_;         // row stride of column views; others are packed
    std::map<const Value*, const Value*> view_of_;   // a view's base value
};

}  // namespace tpx
