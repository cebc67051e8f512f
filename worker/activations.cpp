// The CUDA executor's activations (see activations.h). Allocation and release order is the
// executor's node order, so an eager step and a captured one get the same StepArena offsets.
#include "worker/activations.h"

#include <algorithm>

#include "common/cuda_check.h"

namespace tpx {

Activations::Activations(const Args& a)
    : weights_(a.weights), last_use_(a.last_use), stream_(a.stream), arena_(a.arena), arena_peak_(a.arena_peak) {}

Activations::bf16* Activations::data(const Value* v) const {
    if (v->producer && v->producer->kind == Op::kParam) {
        auto it = weights_.params.find(v->producer->name);
        if (it != weights_.params.end()) return it->second;
        TPX_CHECK(!weights_.quant.count(v->producer->name),
                  "parameter " + v->producer->name + " is kept quantized: only the quantized linear kernels read it");
        return weights_.params.at(v->producer->name);
    }
    return buf_.at(v);
}

Activations::bf16* Activations::alloc(int64_t n) {
    const size_t bytes = std::max<int64_t>(1, n) * sizeof(bf16);
    bf16* p = nullptr;
    if (arena_) {
        p = reinterpret_cast<bf16*>(arena_ + plan_.take(bytes));
        offset_of_[p] = (size_t)(reinterpret_cast<char*>(p) - arena_);
    } else {
        CUDA_CHECK(cudaMallocAsync((void**)&p, bytes, stream_));
        if (arena_peak_) offset_of_[p] = plan_.take(bytes);
    }
    return p;
}

Activations::bf16* Activations::make(const Value* v, int64_t r) {
    rows_[v] = r;
    return buf_[v] = alloc(r * v->shape.back());
}

void Activations::release(bf16* p) {
    auto it = offset_of_.find(p);
    if (it != offset_of_.end()) plan_.give(it->second), offset_of_.erase(it);
    if (!arena_) CUDA_CHECK(cudaFreeAsync(p, stream_));
}

void Activations::view(const Value* v, const Value* base, bf16* p, int64_t r, int64_t stride) {
    rows_[v] = r;
    buf_[v] = p;
    stride_[v] = stride;
    view_of_[v] = base;
}

int64_t Activations::rows_or(const Value* v, int64_t otherwise) const {
    auto it = rows_.find(v);
    return it == rows_.end() ? otherwise : it->second;
}

int64_t Activations::stride(const Value* v) const {
    auto it = stride_.find(v);
    return it == stride_.end() ? 0 : it->second;
}

void Activations::release_inputs(size_t i, const Node* n) {
    for (Value* v : n->inputs) {
        if (view_of_.count(v)) {  // the view's base may end here too
            const Value* base = view_of_[v];
            if (last_use_[base] == i && buf_.count(base)) {
                release(buf_[base]);
                buf_.erase(base);
            }
        }
        if (last_use_[v] == i && buf_.count(v)) {
            if (!stride_.count(v)) release(buf_[v]);
            buf_.erase(v);
        }
    }
}

// Everything allocated in a forward is freed in it (outputs nobody reads included): a captured
// graph must not leave allocations live between replays.
void Activations::finish() {
    for (auto& [v, p] : buf_)
        if (!stride_.count(v)) release(p);
    if (arena_peak_) *arena_peak_ = plan_.peak();
}

}  // namespace tpx
