// The sampled tokens' draw on the device (`tpx serve`'s, `tpx run`'s), a block a row of bf16
// logits: only the ids leave the device (not 33 MB of fp32 logits at batch 64 of a 128k
// vocabulary for the host to sample from). The rule and the arithmetic are kernels/cpu/draw.h's,
// whose twin (draw.cpp) chooses the same ids.
// Thresholds are found by their 16-bit keys (a bf16's order, -0 as +0) in two rounds of
// histograms: the keys' top 12 bits (4096 bins), then the low 4 in the bin the cut falls in. Every
// sum is of integers, so the order atomics add in does not matter.
#include "common/check.h"
#include "kernels/cpu/draw.h"
#include "kernels/cuda/argmax.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace tpx::cuda {
namespace {

constexpr int kThreads = 1024, kWarps = kThreads / 32;
constexpr int kBins = 4096, kLowBins = 16;

__device__ inline uint32_t key_of(uint16_t b) {
    if (b == 0x8000u) b = 0;
    return (b & 0x8000u) ? (~b & 0xFFFFu) : (b | 0x8000u);
}
__device__ inline float value_of(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }

// fn(id, bits) for the ids of [lo, hi), 8 at once where vec (lo and hi multiples of 8 or hi the row's end).
template <typename Fn>
__device__ inline void each_in(const uint16_t* row, int64_t lo, int64_t hi, int64_t stride, bool vec, Fn&& fn) {
    if (vec) {
        for (int64_t i = lo; i < hi; i += 8 * stride) {
            const uint4 q = *reinterpret_cast<const uint4*>(row + i);
            const uint16_t* b = reinterpret_cast<const uint16_t*>(&q);
#pragma unroll
            for (int j = 0; j < 8; ++j) fn(i + j, b[j]);
        }
    } else {
        for (int64_t i = lo; i < hi; i += stride) fn(i, row[i]);
    }
}
// Every id of the row, spread over the block.
template <typename Fn>
__device__ inline void each(const uint16_t* row, int64_t n, bool vec, Fn&& fn) {
    each_in(row, (vec ? 8 : 1) * (int64_t)threadIdx.x, n, kThreads, vec, fn);
}

struct Shared {
    uint64_t hist[kBins];
    uint64_t sums[kWarps];
    float top_v[kWarps];
    int64_t top_i[kWarps];
    int bad[kWarps];
    int cut_bin;
    uint64_t cut_above;
};

// The exclusive prefix of v over the block's threads in order; total: the block's sum.
__device__ uint64_t block_scan(uint64_t v, Shared& s, uint64_t& total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint64_t incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        const uint64_t t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    __syncthreads();  // (sums free: its last readers are past)
    if (lane == 31) s.sums[warp] = incl;
    __syncthreads();
    uint64_t before = 0;
    total = 0;
    for (int w = 0; w < kWarps; ++w) {
        const uint64_t x = s.sums[w];
        before += w < warp ? x : 0;
        total += x;
    }
    return before + incl - v;
}

// Of `bins` bins of hist, walked from the highest down: the bin where the sum reaches need_of(the
// bins' total), and the sum of the bins above it (into s.cut_bin, s.cut_above).
template <typename Need>
__device__ void find_cut(Shared& s, int bins, Need need_of) {
    const int per = (bins + kThreads - 1) / kThreads;  // a thread's bins, highest first from bins - 1 - per x thread
    uint64_t mine = 0;
    for (int j = 0; j < per; ++j) {
        const int pos = (int)threadIdx.x * per + j;
        if (pos < bins) mine += s.hist[bins - 1 - pos];
    }
    uint64_t total;
    uint64_t above = block_scan(mine, s, total);
    const uint64_t need = need_of(total);
    if (above < need && need <= above + mine) {
        for (int j = 0; j < per; ++j) {
            const int bin = bins - 1 - ((int)threadIdx.x * per + j);
            if (need <= above + s.hist[bin]) {
                s.cut_bin = bin, s.cut_above = above;
                break;
            }
            above += s.hist[bin];
        }
    }
    __syncthreads();
}

__device__ void clear(Shared& s, int bins) {
    __syncthreads();  // (every thread past its last read)
    for (int i = threadIdx.x; i < bins; i += kThreads) s.hist[i] = 0;
    __syncthreads();
}

// The largest key k whose ids (key >= max(k, floor)) weigh at least need_of(the total of the ids at
// or above floor) by weight(bits): a histogram of the keys' top 12 bits, then one of the low 4 in
// the bin found.
template <typename Weight, typename Need>
__device__ uint32_t cut_key(Shared& s, const uint16_t* row, int64_t n, bool vec, uint32_t floor, Weight weight, Need need_of) {
    clear(s, kBins);
    each(row, n, vec, [&](int64_t, uint16_t b) {
        const uint32_t k = key_of(b);
        if (k >= floor) {
            const uint64_t w = weight(b);
            if (w) atomicAdd((unsigned long long*)&s.hist[k >> 4], (unsigned long long)w);
        }
    });
    __syncthreads();
    uint64_t need = 0;
    find_cut(s, kBins, [&](uint64_t total) { return need = need_of(total); });
    const int high = s.cut_bin;
    need -= s.cut_above;
    clear(s, kLowBins);
    each(row, n, vec, [&](int64_t, uint16_t b) {
        const uint32_t k = key_of(b);
        if (k >= floor && (int)(k >> 4) == high) {
            const uint64_t w = weight(b);
            if (w) atomicAdd((unsigned long long*)&s.hist[k & 15], (unsigned long long)w);
        }
    });
    __syncthreads();
    find_cut(s, kLowBins, [&](uint64_t) { return need; });
    return ((uint32_t)high << 4) | (uint32_t)s.cut_bin;
}

// The row's largest logit and its first id; whether any logit is NaN or infinite.
__device__ void find_top(Shared& s, const uint16_t* row, int64_t n, bool vec, float& top, int64_t& top_id, bool& bad) {
    float bv = -INFINITY;
    int64_t bi = n;
    int any = 0;
    each(row, n, vec, [&](int64_t i, uint16_t b) {
        const float v = value_of(b);
        any |= !isfinite(v);
        better(v, i, bv, bi);
    });
    warp_argmax(bv, bi);
    any = __any_sync(0xffffffffu, any);
    const int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) s.top_v[warp] = bv, s.top_i[warp] = bi, s.bad[warp] = any;
    __syncthreads();
    top = s.top_v[0], top_id = s.top_i[0], bad = s.bad[0];
    for (int w = 1; w < kWarps; ++w) better(s.top_v[w], s.top_i[w], top, top_id), bad = bad || s.bad[w];
}

__global__ void __launch_bounds__(kThreads) draw_kernel(int64_t n, const bf16* logits, const cpu::DrawParams* params, bool vec, int32_t* out) {
    pdl_entry();  // see common.cuh
    __shared__ Shared s;
    const int64_t r = blockIdx.x;
    const uint16_t* row = reinterpret_cast<const uint16_t*>(logits) + r * n;
    const cpu::DrawParams p = params[r];
    float top;
    int64_t top_id;
    bool bad;
    find_top(s, row, n, vec, top, top_id, bad);
    if (bad || p.temperature <= 0 || n <= 1) {
        if (threadIdx.x == 0) out[r] = bad ? -1 : (int32_t)top_id;
        return;
    }
    const double c = cpu::draw::weight_scale(p.temperature);
    auto weight = [&](uint16_t b) { return cpu::draw::weight(value_of(b), top, c); };
    uint32_t floor = 0;  // the lowest key kept
    if (p.top_k > 0 && p.top_k < n)
        floor = cut_key(s, row, n, vec, 0, [](uint16_t) { return (uint64_t)1; }, [&](uint64_t) { return (uint64_t)p.top_k; });
    if (p.top_p < 1) floor = cut_key(s, row, n, vec, floor, weight, [&](uint64_t kept) { return cpu::draw::top_p_target(p.top_p, kept); });
    // The draw: each thread's run of consecutive ids, their kept weight scanned over the block;
    // the thread whose run holds the drawn point walks it.
    const int64_t per = ((n + kThreads - 1) / kThreads + 7) / 8 * 8;
    const int64_t lo = (int64_t)threadIdx.x * per, hi = min(n, lo + per);
    uint64_t mine = 0;
    each_in(row, lo, hi, 1, vec, [&](int64_t, uint16_t b) {
        if (key_of(b) >= floor) mine += weight(b);
    });
    uint64_t total;
    uint64_t below = block_scan(mine, s, total);
    const uint64_t point = cpu::draw::scale_down(p.random, total);
    if (below <= point && point < below + mine) {
        int32_t id = -1;
        each_in(row, lo, hi, 1, vec, [&](int64_t i, uint16_t b) {
            if (id >= 0 || key_of(b) < floor) return;
            below += weight(b);
            if (below > point) id = (int32_t)i;
        });
        out[r] = id;
    }
}

}  // namespace

void draw_rows(int64_t rows, int64_t vocab, const bf16* logits, const cpu::DrawParams* params, int32_t* out, Launch at) {
    if (rows == 0) return;
    TPX_CHECK(vocab > 0 && vocab < (int64_t)1 << (64 - cpu::draw::kWeightBits), "draw_rows: a vocabulary of " + std::to_string(vocab) + " ids");
    const bool vec = vocab % 8 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0;
    launch(draw_kernel, (unsigned)rows, kThreads, 0, at, vocab, logits, params, vec, out);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
