// Offsets for one step's activations inside a single device block, so that a captured decode
// graph holds kernel nodes only (no memory nodes between them: programmatic dependent launch
// links kernel to kernel). First fit over the free ranges, neighbours merged, 256-byte granules.
// The same sequence of take/give always gives the same offsets: an eager step measures the
// block (peak) that the captured steps then use.
#pragma once

#include <cstddef>
#include <map>

namespace tpx {

class StepArena {
public:
    static constexpr size_t kGranule = 256;

    // The offset of a new range of at least `bytes` (one granule for 0).
    size_t take(size_t bytes);
    // Returns the range that take() gave at `offset`; throws for any other offset.
    void give(size_t offset);
    // The largest end of all ranges taken so far: the block's size.
    size_t peak() const { return peak_; }
    // No range is out.
    bool idle() const { return used_.empty(); }

private:
    std::map<size_t, size_t> free_;  // offset -> size, below top_
    std::map<size_t, size_t> used_;  // offset -> size
    size_t top_ = 0, peak_ = 0;
};

}  // namespace tpx
