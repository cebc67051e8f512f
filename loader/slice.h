// Which bytes of a tensor a slice needs. A slice is a contiguous range along one dimension
// (rows of [out, in], columns, experts of a stacked [E, out, in]), optionally within one entry
// of a stacked tensor's dim 0 (rows of expert e of [E, out, in]); its elements in the source
// file are `outer` runs ("spans") of `length * inner` elements, one per index of the leading
// dimensions. Spans are coalesced into reads when the gap between them is at most a page, so
// a read costs at most the slice's bytes plus one page per span.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loader/safetensors.h"

namespace tpx {

struct Slice {
    int dim = 0;             // the dimension cut
    int64_t start = 0;       // first index along `dim`
    int64_t length = -1;     // indices along `dim`; -1 = to the end (a whole tensor is Slice{})
    // >= 0: entry `index` of the tensor's dim 0 first (one expert of a stacked [E, rows, cols]
    // tensor, as transformers 5 writes experts); dim, start and length then count within it.
    int64_t index = -1;

    static Slice whole() { return Slice{}; }
    static Slice range(int dim, int64_t start, int64_t length, int64_t index = -1) { return Slice{dim, start, length, index}; }
};

// The tensor that a slice cuts: `t` itself, or its entry `s.index` along dim 0 (the shape
// without dim 0, the offset of that entry, the name "name[index]"); throws CheckpointError
// naming the tensor if there is no such entry.
TensorInfo slice_source(const TensorInfo& t, const Slice& s);

// The slice's shape; throws CheckpointError naming the tensor if the slice does not fit it.
std::vector<int64_t> slice_shape(const TensorInfo& t, const Slice& s);

// A contiguous run of source elements and where it lands in the sliced (dense) result.
struct Span {
    uint64_t src_offset;  // absolute byte offset in the file
    uint64_t elems;       // elements in the run
    uint64_t dst_elem;    // first element of the run in the result
};

std::vector<Span> plan_spans(const TensorInfo& t, const Slice& s);

// One pread covering one or more consecutive spans (or a piece of one).
struct ReadOp {
    uint64_t offset;      // file offset of the first byte read
    uint64_t bytes;       // bytes read, gaps included
    size_t first_span;    // spans [first_span, last_span) of the span list land from this read
    size_t last_span;
};

constexpr uint64_t kPageBytes = 4096;
constexpr uint64_t kMaxReadBytes = 2u << 20;  // a read never exceeds this, so threads share big tensors (8 MB K/V shards too)

// Splits spans longer than kMaxReadBytes (keeping whole elements) and merges neighbours whose
// gap is at most kPageBytes, up to kMaxReadBytes per read.
std::vector<ReadOp> plan_reads(std::vector<Span>& spans, size_t elem_size);

}  // namespace tpx
