// The draw `tpx serve` and `tpx run` sample with: the device (kernels/cuda/draw.cu) and this CPU
// twin (draw.cpp) choose the same id from the same logits bit for bit, as weights are integers
// made by the same IEEE operations on both, the cuts thresholds on the logit, and the walk in the
// ids' order.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define TPX_HD __host__ __device__
#else
#define TPX_HD
#endif

namespace tpx::cpu {

// A row's draw. temperature <= 0: the argmax (first on ties). top_k: ids whose logit is at least
// the k-th largest (ties at it all kept, as HF's and vLLM's top-k); 0 or >= vocab: every id.
// top_p: of those, the ids whose logit is at least tau, the largest logit value for which the
// ids at or above it hold at least top_p of the kept weight (ties at tau all kept); >= 1: no cut.
// random: uniform over 64 bits (draw_random).
struct DrawParams {
    double temperature = 0;
    int64_t top_k = 0;
    double top_p = 1;
    uint64_t random = 0;
};

namespace draw {

// A weight is exp((logit - top) / temperature) x 2^40, truncated to an integer: sums of a 2^24-id
// row stay below 2^64 whatever order adds them, and an id below 2^-40 of the top's weight (a
// logit 27.7 temperatures down) is never drawn.
constexpr int kWeightBits = 40;
constexpr uint64_t kTopWeight = 1ull << kWeightBits;

// log2(e) / temperature: the host computes it once a row (the device is handed it).
TPX_HD inline double weight_scale(double temperature) { return 1.4426950408889634 / temperature; }

// IEEE single operations the device compiler may not fuse (an FMA rounds once, the host twice).
TPX_HD inline float mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
TPX_HD inline float add(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

// The integer weight of `logit` in a row whose largest is `top`, at scale c = weight_scale(T):
// x = (logit - top) c in double (a float difference of logits 6e38 apart overflows), split into
// n = floor(x) and f = x - n (exact); 2^f by its Taylor series to degree 8 in float (within 1e-7),
// times 2^(40 + n).
TPX_HD inline uint64_t weight(float logit, float top, double c) {
    if (logit == top) return kTopWeight;  // (c may be infinite: 0 x inf)
    const double x = ((double)logit - (double)top) * c;
    if (!(x > -(double)kWeightBits)) return 0;
    const double t = (double)(int64_t)x, n = t > x ? t - 1.0 : t;  // floor(x) (x in (-40, 0]; floor() is a call on the host)
    const float f = (float)(x - n);                                  // in [0, 1]
    constexpr float kC[9] = {1.0f, 6.931471806e-1f, 2.402265070e-1f, 5.550410866e-2f, 9.618129108e-3f,
                             1.333355815e-3f, 1.540353039e-4f, 1.525273380e-5f, 1.321548679e-6f};  // (ln 2)^i / i!
    float p = kC[8];
    for (int i = 7; i >= 0; --i) p = add(mul(p, f), kC[i]);
    const int e = kWeightBits + (int)n;  // 0 .. 40
    return (uint64_t)mul(p, (float)(1ull << e));
}

// floor(a x m / 2^64): a uniform 64-bit a onto [0, m).
TPX_HD inline uint64_t scale_down(uint64_t a, uint64_t m) {
#ifdef __CUDA_ARCH__
    return __umul64hi(a, m);
#else
    return (uint64_t)(((unsigned __int128)a * m) >> 64);
#endif
}

// The target mass of top_p over `kept` (at least 1, at most kept).
TPX_HD inline uint64_t top_p_target(double top_p, uint64_t kept) {
    const double t = ceil(top_p * (double)kept);
    return t >= (double)kept ? kept : (t < 1.0 ? 1 : (uint64_t)t);
}

}  // namespace draw

// The draw's random number for a call's `counter`-th token, from its key (drawn once from the
// call's seeded generator): a splitmix64 step, so consecutive counters give unrelated numbers.
uint64_t draw_random(uint64_t key, uint64_t counter);

// The id DrawParams defines, drawn from a row of n logits; -1 for a row holding a NaN or an
// infinity. Any finite floats (the device's rows are bf16 values; a penalised row need not be).
int64_t draw_token(const float* logits, int64_t n, const DrawParams& p);

// The ids a draw keeps (finite row, temperature > 0), in the ids' order, and each one's weight:
// what draw_token walks (tests check the thresholds through it).
struct KeptWeights {
    std::vector<int32_t> ids;
    std::vector<uint64_t> weights;
};
KeptWeights draw_kept(const float* logits, int64_t n, const DrawParams& p);

}  // namespace tpx::cpu
