// Sparse MoE experts for few tokens (decode): each local expert's weights are read once, by the
// tokens routed to it, and not at all when no token is. The dense form (cuda_executor.cpp) runs
// every local expert over every token through cuBLAS, so a decode step reads all the experts'
// weights where top_k of them would do (Mixtral: 8 experts, 2 chosen, 4x the bytes).
//
// Three kernels, all reading the routing weights on the device (no host round trip, so they can
// be captured in the decode step's CUDA graph):
//   gate_up: a block per (8 rows, chosen expert): the grid's rows of blocks are the experts some
//            token chose, found on the device (at most tokens x top_k of them). A warp takes
//            row j of gate and of up and every routed token (8 a pass), 16-byte loads, and writes
//            act[e, t, j] = silu(g) * u, g and u rounded to bf16 first, as the dense form's
//            GEMM output is.
//   down:    the same over w2's hidden rows, part[e, t, h] in bf16.
//   combine: y[t, h] = the parts weighted, added expert by expert in index order with y rounded
//            to bf16 after each add: the dense form's scale_add sequence, so the two differ only
//            by the GEMMs' accumulation order.
// The token lists are built with atomics, so their order varies, but each token's sums are its
// own: the results do not.
//
// moe_grouped (prompts, outside a graph) is the other form that skips unchosen experts: each
// chosen expert's tokens gathered and run through cuBLAS, at top_k experts' FLOPs a token.
#include <algorithm>
#include <functional>
#include <string>

#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

constexpr int kWarps = 8;           // rows a block: a warp a row
constexpr int kTokensAPass = 8;     // accumulators a lane
constexpr int kMaxListed = 1024;    // tokens listed a block (shared memory); more: passes over the list
constexpr int kMaxLocalExperts = 256;  // as moe_routing


// The local expert that this block works on: the blockIdx.y-th of those some token chose (the
// grid has min(local experts, tokens x top_k) rows of blocks, so that at batch 1 no block is
// launched for an expert nobody chose); -1 when fewer were chosen.
__device__ int64_t chosen_expert(const cpu::MoeShape& s, const float* weights) {
    __shared__ uint8_t used[kMaxLocalExperts];
    __shared__ int64_t chosen;
    for (int64_t e = threadIdx.x; e < s.local_experts; e += blockDim.x) used[e] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < s.tokens * s.local_experts; i += blockDim.x)
        if (weights[i] != 0.0f) used[i % s.local_experts] = 1;
    __syncthreads();
    if (threadIdx.x == 0) {
        chosen = -1;
        for (int64_t e = 0, k = blockIdx.y; e < s.local_experts; ++e)
            if (used[e] && k-- == 0) {
                chosen = e;
                break;
            }
    }
    __syncthreads();
    return chosen;
}

// The tokens with a non-zero weight for expert e among [t0, t0 + kMaxListed), into list; their count.
__device__ int list_tokens(int64_t tokens, int64_t local, int64_t e, const float* weights, int64_t t0, int32_t* list) {
    __shared__ int count;
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    for (int64_t t = t0 + threadIdx.x; t < min(tokens, t0 + kMaxListed); t += blockDim.x)
        if (weights[t * local + e] != 0.0f) list[atomicAdd(&count, 1)] = (int32_t)t;
    __syncthreads();
    int n = count;
    __syncthreads();  // count is reused by the next call
    return n;
}

// acc[i] += w . x[list[i]] over one row of K / 8 vectors, for n <= kTokensAPass tokens; with
// w2 (a second row, the gate's up), acc2[i] += w2 . x[list[i]] in the same pass, so that both
// rows' loads are in flight together.
template <bool kTwo>
__device__ inline void dot_rows(const uint4* __restrict__ w, const uint4* __restrict__ w2, const uint4* __restrict__ x, int64_t x_row8,
                                int64_t k8, const int32_t* list, int n, float* acc, float* acc2, int lane) {
#pragma unroll 4
    for (int64_t c = lane; c < k8; c += 32) {
        float wf[8], wf2[8];
        unpack8(__ldg(w + c), wf);
        if (kTwo) unpack8(__ldg(w2 + c), wf2);
#pragma unroll
        for (int i = 0; i < kTokensAPass; ++i) {
            if (i >= n) break;
            float xf[8];
            unpack8(__ldg(x + list[i] * x_row8 + c), xf);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                acc[i] = fmaf(wf[k], xf[k], acc[i]);
                if (kTwo) acc2[i] = fmaf(wf2[k], xf[k], acc2[i]);
            }
        }
    }
}

// (The two kernels below begin alike: the chosen expert, then its tokens kMaxListed at a time.
// The few lines stay twice: a shared helper was slower, docs/PERF.md.)
__global__ void __launch_bounds__(32 * kWarps) moe_gate_up_kernel(cpu::MoeShape s, const float* weights, const uint4* x, const uint4* w_gate,
                                                                  const uint4* w_up, int64_t expert_stride8, bf16* act) {
    pdl_entry();  // see common.cuh
    __shared__ int32_t list[kMaxListed];
    const int64_t e = chosen_expert(s, weights), j = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32, k8 = s.hidden / 8;
    const int lane = threadIdx.x % 32;
    if (e < 0) return;
    for (int64_t t0 = 0; t0 < s.tokens; t0 += kMaxListed) {
        const int n = list_tokens(s.tokens, s.local_experts, e, weights, t0, list);
        if (j >= s.inter_local) continue;
        const uint4* g = w_gate + e * expert_stride8 + j * k8;
        const uint4* u = w_up + e * expert_stride8 + j * k8;
        for (int p = 0; p < n; p += kTokensAPass) {
            const int m = min(kTokensAPass, n - p);
            float ga[kTokensAPass] = {}, ua[kTokensAPass] = {};
            dot_rows<true>(g, u, x, k8, k8, list + p, m, ga, ua, lane);
            for (int i = 0; i < m; ++i) {
                const float gs = warp_sum(ga[i]), us = warp_sum(ua[i]);
                if (lane == 0) act[(e * s.tokens + list[p + i]) * s.inter_local + j] = __float2bfloat16(silu(round_bf16(gs)) * round_bf16(us));
            }
        }
    }
}

__global__ void __launch_bounds__(32 * kWarps) moe_down_kernel(cpu::MoeShape s, const float* weights, const uint4* act, const uint4* w2, bf16* part) {
    pdl_entry();  // see common.cuh
    __shared__ int32_t list[kMaxListed];
    const int64_t e = chosen_expert(s, weights), h = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32, k8 = s.inter_local / 8;
    const int lane = threadIdx.x % 32;
    if (e < 0) return;
    for (int64_t t0 = 0; t0 < s.tokens; t0 += kMaxListed) {
        const int n = list_tokens(s.tokens, s.local_experts, e, weights, t0, list);
        if (h >= s.hidden) continue;
        const uint4* w = w2 + (e * s.hidden + h) * k8;
        const uint4* a = act + e * s.tokens * k8;  // this expert's rows of act
        for (int p = 0; p < n; p += kTokensAPass) {
            const int m = min(kTokensAPass, n - p);
            float acc[kTokensAPass] = {};
            dot_rows<false>(w, nullptr, a, k8, k8, list + p, m, acc, nullptr, lane);
            for (int i = 0; i < m; ++i) {
                const float sum = warp_sum(acc[i]);
                if (lane == 0) part[(e * s.tokens + list[p + i]) * s.hidden + h] = __float2bfloat16(sum);
            }
        }
    }
}

__global__ void moe_combine_kernel(cpu::MoeShape s, const float* weights, const bf16* part, bf16* y) {
    pdl_entry();  // see common.cuh
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= s.tokens * s.hidden) return;
    const int64_t t = i / s.hidden, h = i % s.hidden;
    float acc = 0.0f;
    for (int64_t e = 0; e < s.local_experts; ++e) {
        const float w = weights[t * s.local_experts + e];
        if (w != 0.0f) acc = round_bf16(acc + w * __bfloat162float(part[(e * s.tokens + t) * s.hidden + h]));
    }
    y[i] = __float2bfloat16(acc);
}

// y[rows[i], :] += w[rows[i] * stride] * part[i, :], y rounded to bf16 (scale_add's step, for
// the tokens of one expert: each appears once, so no two threads write one element).
__global__ void scale_add_rows_kernel(int64_t n, int64_t width, const int64_t* rows, const float* w, int64_t stride, const bf16* part,
                                      bf16* y) {
    pdl_entry();  // see common.cuh
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * width) return;
    const int64_t t = rows[i / width], h = i % width;
    const float s = w[t * stride];
    y[t * width + h] = __float2bfloat16(__bfloat162float(y[t * width + h]) + s * __bfloat162float(part[i]));
}

}  // namespace

void moe_grouped(cublasHandle_t cublas, const MoeArgs& a, Launch at, const std::function<void()>& wait) {
    const cpu::MoeShape& s = a.shape;
    const float* weights = a.weights;
    const bf16* x = a.x;
    const MoeExperts& w = a.experts;
    bf16* y = a.y;
    const cudaStream_t stream = at.stream;
    if (s.tokens == 0) return;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    TPX_CHECK(capture == cudaStreamCaptureStatusNone, "moe_grouped: waits for the routing on the host, so it cannot be captured");
    const int64_t T = s.tokens, E = s.local_experts, H = s.hidden, I = s.inter_local;
    // Each local expert's tokens, in token order, from the routing weights.
    std::vector<float> routed(T * E);
    CUDA_CHECK(cudaMemcpyAsync(routed.data(), weights, routed.size() * sizeof(float), cudaMemcpyDeviceToHost, stream));
    if (wait) wait();
    else CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<int64_t> rows, first(E + 1, 0);
    int64_t most = 0;
    for (int64_t e = 0; e < E; ++e) {
        first[e] = (int64_t)rows.size();
        for (int64_t t = 0; t < T; ++t)
            if (routed[t * E + e] != 0.0f) rows.push_back(t);
        most = std::max(most, (int64_t)rows.size() - first[e]);
    }
    first[E] = (int64_t)rows.size();
    CUDA_CHECK(cudaMemsetAsync(y, 0, T * H * sizeof(bf16), stream));
    if (rows.empty()) return;
    const bool fused = w.up == w.gate + I * H;  // gate and up rows of an expert adjacent: one GEMM
    int64_t* d_rows = nullptr;
    bf16 *xe = nullptr, *gu = nullptr, *act = nullptr, *part = nullptr;
    CUDA_CHECK(cudaMallocAsync(&d_rows, rows.size() * sizeof(int64_t), stream));
    CUDA_CHECK(cudaMallocAsync(&xe, most * H * sizeof(bf16), stream));
    CUDA_CHECK(cudaMallocAsync(&gu, most * 2 * I * sizeof(bf16), stream));
    CUDA_CHECK(cudaMallocAsync(&act, most * I * sizeof(bf16), stream));
    CUDA_CHECK(cudaMallocAsync(&part, most * H * sizeof(bf16), stream));
    // (from pageable memory: staged before the call returns, so `rows` may go after it)
    CUDA_CHECK(cudaMemcpyAsync(d_rows, rows.data(), rows.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream));
    for (int64_t e = 0; e < E; ++e) {
        const int64_t n = first[e + 1] - first[e];
        if (n == 0) continue;  // an expert no token chose: not read
        gather_rows(n, H, d_rows + first[e], x, xe, at);
        if (fused) {
            linear(cublas, {{n, H, 2 * I}, xe, w.gate + e * w.stride, nullptr, gu}, at);
            silu_mul_fused(n, I, gu, act, at);
        } else {
            linear(cublas, {{n, H, I}, xe, w.gate + e * w.stride, nullptr, gu}, at);
            linear(cublas, {{n, H, I}, xe, w.up + e * w.stride, nullptr, gu + n * I}, at);
            silu_mul(n, I, gu, gu + n * I, act, at);
        }
        linear(cublas, {{n, I, H}, act, w.down + e * H * I, nullptr, part}, at);
        launch(scale_add_rows_kernel, blocks_for(n * H, 256), 256, 0, at, n, H, (const int64_t*)(d_rows + first[e]), weights + e, E,
               (const bf16*)part, y);
        TPX_LAUNCH_CHECK();
    }
    for (void* p : {(void*)d_rows, (void*)xe, (void*)gu, (void*)act, (void*)part}) CUDA_CHECK(cudaFreeAsync(p, stream));
}

bool moe_sparse_supported(const cpu::MoeShape& s, const bf16* x, const MoeExperts& w) {
    return s.hidden % 8 == 0 && s.inter_local % 8 == 0 && w.stride % 8 == 0 && aligned16({x, w.gate, w.up, w.down});
}

void moe_sparse(const MoeArgs& a, bf16* act, bf16* part, Launch at) {
    const cpu::MoeShape& s = a.shape;
    const float* weights = a.weights;
    const bf16* x = a.x;
    const MoeExperts& w = a.experts;
    bf16* y = a.y;
    if (s.tokens == 0) return;
    TPX_CHECK(moe_sparse_supported(s, x, w) && aligned16({act, part}),
              "moe_sparse: hidden and inter must be multiples of 8 and every pointer 16-byte aligned");
    TPX_CHECK(s.local_experts <= kMaxLocalExperts, "moe_sparse: at most " + std::to_string(kMaxLocalExperts) + " local experts");
    auto v = [](const bf16* p) { return reinterpret_cast<const uint4*>(p); };
    // A row of blocks for each expert that may be chosen: no more than the tokens' choices.
    const unsigned experts = (unsigned)std::min(s.local_experts, s.tokens * s.top_k);
    launch(moe_gate_up_kernel, dim3(blocks_for(s.inter_local, kWarps), experts), 32 * kWarps, 0, at, s, weights, v(x), v(w.gate),
           v(w.up), w.stride / 8, act);
    TPX_LAUNCH_CHECK();
    launch(moe_down_kernel, dim3(blocks_for(s.hidden, kWarps), experts), 32 * kWarps, 0, at, s, weights, v(act), v(w.down), part);
    TPX_LAUNCH_CHECK();
    launch(moe_combine_kernel, blocks_for(s.tokens * s.hidden, 256), 256, 0, at, s, weights, part, y);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
