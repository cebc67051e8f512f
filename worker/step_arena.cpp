// StepArena: first fit below the top, else the top grows.
#include "worker/step_arena.h"

#include <algorithm>
#include <string>

#include "common/error.h"

namespace tpx {

size_t StepArena::take(size_t bytes) {
    const size_t size = std::max<size_t>(1, (bytes + kGranule - 1) / kGranule) * kGranule;
    size_t at = top_;
    for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second < size) continue;
        at = it->first;
        if (it->second > size) free_[at + size] = it->second - size;
        free_.erase(it);
        break;
    }
    if (at == top_) {  // (no free range ends at the top: give() lowers the top instead)
        top_ = at + size;
        peak_ = std::max(peak_, top_);
    }
    used_[at] = size;
    return at;
}

void StepArena::give(size_t offset) {
    auto it = used_.find(offset);
    if (it == used_.end()) throw Error("StepArena: offset " + std::to_string(offset) + " was not taken or was given back already");
    size_t at = it->first, size = it->second;
    used_.erase(it);
    auto next = free_.lower_bound(at);
    if (next != free_.end() && at + size == next->first) size += next->second, next = free_.erase(next);
    if (next != free_.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second == at) at = prev->first, size += prev->second, free_.erase(prev);
    }
    if (at + size == top_) top_ = at;  // the top comes down; nothing free above it
    else free_[at] = size;
}

}  // namespace tpx
