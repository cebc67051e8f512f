// Per-row argmax of the logits for greedy decoding: only ids leave the device, so a row holding
// NaN or Inf answers -1 and the caller names the prompt (worker/generation.cpp).
#include "kernels/cuda/argmax.cuh"
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

// Greedy decoding's argmax: kArgmaxChunks blocks per row each find their chunk's best (so
// that a 128k vocabulary is read by many SMs, not one), then one warp per row picks among them.
// Ties go to the first index. A chunk holding a NaN or an infinity reports index -1 and the
// row's result is then -1, so that non-finite logits are seen (only ids leave the device).
constexpr int kArgmaxChunks = 32, kArgmaxThreads = 256;

__device__ inline float logit(float v) { return v; }
__device__ inline float logit(bf16 v) { return __bfloat162float(v); }

// `vec`: the row and chunk starts are multiples of 4 elements, so a thread reads 4 at once.
template <typename T>
__global__ void argmax_partial_kernel(int64_t width, const T* logits, bool vec, float* part_v, int64_t* part_i) {
    pdl_entry();  // see common.cuh
    int64_t row = blockIdx.y, chunk = (width + kArgmaxChunks - 1) / kArgmaxChunks;
    int64_t lo = blockIdx.x * chunk, hi = min(width, lo + chunk);
    const T* r = logits + row * width;
    float bv = -INFINITY;
    int64_t bi = width;
    bool bad = false;
    auto take = [&](T x, int64_t i) {
        const float v = logit(x);
        bad = bad || !isfinite(v);
        better(v, i, bv, bi);
    };
    for (int64_t i = lo + 4 * threadIdx.x; i < hi; i += 4 * blockDim.x) {
        if (vec && i + 4 <= hi) {
            alignas(16) T q[4];
            if constexpr (sizeof(T) == 4) *reinterpret_cast<float4*>(q) = *reinterpret_cast<const float4*>(r + i);
            else *reinterpret_cast<uint2*>(q) = *reinterpret_cast<const uint2*>(r + i);
            for (int k = 0; k < 4; ++k) take(q[k], i + k);
        } else {
            for (int64_t k = i; k < min(hi, i + 4); ++k) take(r[k], k);
        }
    }
    warp_argmax(bv, bi);
    bad = __any_sync(0xffffffffu, bad);
    __shared__ float wv[kArgmaxThreads / 32];
    __shared__ int64_t wi[kArgmaxThreads / 32];
    __shared__ bool wbad[kArgmaxThreads / 32];
    if ((threadIdx.x & 31) == 0) wv[threadIdx.x >> 5] = bv, wi[threadIdx.x >> 5] = bi, wbad[threadIdx.x >> 5] = bad;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < kArgmaxThreads / 32; ++w) better(wv[w], wi[w], bv, bi), bad = bad || wbad[w];
        part_v[row * kArgmaxChunks + blockIdx.x] = bv;
        part_i[row * kArgmaxChunks + blockIdx.x] = bad ? -1 : bi;
    }
}

__global__ void argmax_final_kernel(int64_t width, const float* part_v, const int64_t* part_i, int32_t* out) {
    pdl_entry();  // see common.cuh
    int64_t row = blockIdx.x;
    float bv = -INFINITY;
    int64_t bi = width;
    bool bad = false;
    for (int c = threadIdx.x; c < kArgmaxChunks; c += 32) {
        const int64_t i = part_i[row * kArgmaxChunks + c];
        bad = bad || i < 0;
        better(part_v[row * kArgmaxChunks + c], i, bv, bi);
    }
    warp_argmax(bv, bi);
    bad = __any_sync(0xffffffffu, bad);
    if (threadIdx.x == 0) out[row] = bad ? -1 : (int32_t)bi;
}

template <typename T>
void argmax_rows_of(int64_t rows, int64_t width, const T* logits, int32_t* out, Launch at, void* scratch) {
    if (rows == 0) return;
    const cudaStream_t stream = at.stream;
    void* part = scratch;
    if (!part) CUDA_CHECK(cudaMallocAsync(&part, argmax_scratch_bytes(rows), stream));
    int64_t* part_i = static_cast<int64_t*>(part);
    float* part_v = reinterpret_cast<float*>(part_i + rows * kArgmaxChunks);
    const int64_t chunk = (width + kArgmaxChunks - 1) / kArgmaxChunks;
    const bool vec = width % 4 == 0 && chunk % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % (4 * sizeof(T)) == 0;
    launch(argmax_partial_kernel<T>, dim3(kArgmaxChunks, (unsigned)rows), kArgmaxThreads, 0, at, width, logits, vec, part_v, part_i);
    TPX_LAUNCH_CHECK();
    launch(argmax_final_kernel, (unsigned)rows, 32, 0, at, width, part_v, part_i, out);
    TPX_LAUNCH_CHECK();
    if (!scratch) CUDA_CHECK(cudaFreeAsync(part, stream));
}

}  // namespace

size_t argmax_scratch_bytes(int64_t rows) { return (size_t)rows * kArgmaxChunks * (sizeof(int64_t) + sizeof(float)); }

void argmax_rows(int64_t rows, int64_t width, const float* logits, int32_t* out, Launch at, void* scratch) {
    argmax_rows_of(rows, width, logits, out, at, scratch);
}

void argmax_rows(int64_t rows, int64_t width, const bf16* logits, int32_t* out, Launch at, void* scratch) {
    argmax_rows_of(rows, width, logits, out, at, scratch);
}

}  // namespace tpx::cuda
