// Span and read planning for slice reads; pure functions, tested on their own.
#include "loader/slice.h"

namespace tpx {

TensorInfo slice_source(const TensorInfo& t, const Slice& s) {
    if (s.index < 0) return t;
    if (t.shape.empty() || s.index >= t.shape[0])
        throw CheckpointError("tensor '" + t.name + "' " + shape_string(t.shape) + ": entry " + std::to_string(s.index) +
                              " of dim 0 does not exist");
    TensorInfo e = t;
    e.name = t.name + "[" + std::to_string(s.index) + "]";
    e.shape.erase(e.shape.begin());
    uint64_t entry = 1;
    for (int64_t d : e.shape) entry *= (uint64_t)d;
    e.offset = t.offset + (uint64_t)s.index * entry * dtype_size(t.dtype);
    e.nbytes = entry * dtype_size(t.dtype);
    return e;
}

std::vector<int64_t> slice_shape(const TensorInfo& whole, const Slice& s) {
    const TensorInfo t = slice_source(whole, s);
    std::vector<int64_t> shape = t.shape;
    if (s.dim == 0 && s.start == 0 && s.length < 0) return shape;
    if (s.dim < 0 || s.dim >= (int)shape.size())
        throw CheckpointError("tensor '" + t.name + "' " + shape_string(t.shape) + ": slice dim " + std::to_string(s.dim) +
                              " does not exist");
    int64_t extent = shape[s.dim];
    int64_t length = s.length < 0 ? extent - s.start : s.length;
    if (s.start < 0 || length < 0 || s.start + length > extent)
        throw CheckpointError("tensor '" + t.name + "' " + shape_string(t.shape) + ": slice [" + std::to_string(s.start) +
                              ", " + std::to_string(s.start + length) + ") of dim " + std::to_string(s.dim) +
                              " is outside [0, " + std::to_string(extent) + ")");
    shape[s.dim] = length;
    return shape;
}

std::vector<Span> plan_spans(const TensorInfo& whole, const Slice& s) {
    std::vector<int64_t> out = slice_shape(whole, s);
    const TensorInfo t = slice_source(whole, s);
    size_t elem = dtype_size(t.dtype);
    if (t.shape.empty() || (s.dim == 0 && s.start == 0 && s.length < 0))
        return {Span{t.offset, (uint64_t)t.numel(), 0}};
    uint64_t outer = 1, inner = 1;
    for (int d = 0; d < s.dim; ++d) outer *= (uint64_t)t.shape[d];
    for (size_t d = s.dim + 1; d < t.shape.size(); ++d) inner *= (uint64_t)t.shape[d];
    uint64_t extent = (uint64_t)t.shape[s.dim], length = (uint64_t)out[s.dim];
    std::vector<Span> spans;
    if (length == 0 || inner == 0 || outer == 0) return spans;
    if (length == extent || outer == 1) {  // the whole range is one run
        spans.push_back(Span{t.offset + (uint64_t)s.start * inner * elem, outer * length * inner, 0});
        return spans;
    }
    spans.reserve(outer);
    for (uint64_t o = 0; o < outer; ++o)
        spans.push_back(Span{t.offset + ((o * extent + (uint64_t)s.start) * inner) * elem, length * inner, o * length * inner});
    return spans;
}

std::vector<ReadOp> plan_reads(std::vector<Span>& spans, size_t elem_size) {
    // Split long spans so that no read exceeds kMaxReadBytes.
    uint64_t max_elems = kMaxReadBytes / elem_size;
    std::vector<Span> split;
    split.reserve(spans.size());
    for (const Span& s : spans) {
        for (uint64_t done = 0; done < s.elems; done += max_elems) {
            uint64_t n = std::min(max_elems, s.elems - done);
            split.push_back(Span{s.src_offset + done * elem_size, n, s.dst_elem + done});
        }
    }
    spans.swap(split);

    std::vector<ReadOp> reads;
    for (size_t i = 0; i < spans.size(); ++i) {
        uint64_t begin = spans[i].src_offset, end = begin + spans[i].elems * elem_size;
        if (!reads.empty()) {
            ReadOp& last = reads.back();
            uint64_t last_end = last.offset + last.bytes;
            if (begin >= last_end && begin - last_end <= kPageBytes && end - last.offset <= kMaxReadBytes) {
                last.bytes = end - last.offset;
                last.last_span = i + 1;
                continue;
            }
        }
        reads.push_back(ReadOp{begin, end - begin, i, i + 1});
    }
    return reads;
}

}  // namespace tpx
