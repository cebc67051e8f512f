// Embedding lookup, residual add, SwiGLU, row gather, dtype conversion: one thread per element
// (or per row for the lookup), bf16 storage, fp32 arithmetic.
#include "kernels/cuda/common.cuh"

namespace tpx::cuda {
namespace {

__global__ void embedding_kernel(cpu::EmbeddingShape s, const int32_t* ids, const bf16* table, bf16* y) {
    int64_t t = blockIdx.x;
    int64_t row = (int64_t)ids[t] - s.start;
    bool inside = row >= 0 && row < s.rows;
    for (int64_t i = threadIdx.x; i < s.width; i += blockDim.x)
        y[t * s.width + i] = inside ? table[row * s.width + i] : __float2bfloat16(0.0f);
}

__global__ void add_kernel(int64_t n, const bf16* a, const bf16* b, bf16* y) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

__device__ inline float silu(float x) { return x / (1.0f + expf(-x)); }

__global__ void silu_mul_fused_kernel(int64_t tokens, int64_t inter, const bf16* gu, bf16* out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * inter) return;
    int64_t t = i / inter, j = i % inter;
    float g = __bfloat162float(gu[t * 2 * inter + j]), u = __bfloat162float(gu[t * 2 * inter + inter + j]);
    out[i] = __float2bfloat16(silu(g) * u);
}

__global__ void silu_mul_kernel(int64_t n, const bf16* g, const bf16* u, bf16* out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(silu(__bfloat162float(g[i])) * __bfloat162float(u[i]));
}

__global__ void scale_add_kernel(int64_t tokens, int64_t width, const float* w, int64_t stride, const bf16* part, bf16* y) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * width) return;
    float s = w[(i / width) * stride];
    if (s != 0.0f) y[i] = __float2bfloat16(__bfloat162float(y[i]) + s * __bfloat162float(part[i]));
}

__global__ void gather_rows_kernel(int64_t width, const int64_t* rows, const bf16* x, bf16* out) {
    int64_t r = blockIdx.x;
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[r * width + i] = x[rows[r] * width + i];
}

__global__ void to_f32_kernel(int64_t n, const bf16* x, float* y) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __bfloat162float(x[i]);
}

__global__ void to_bf16_kernel(int64_t n, const float* x, bf16* y) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16(x[i]);
}

}  // namespace

void embedding(const cpu::EmbeddingShape& s, const int32_t* ids, const bf16* table, bf16* y, cudaStream_t stream) {
    if (s.tokens == 0) return;
    embedding_kernel<<<(unsigned)s.tokens, 256, 0, stream>>>(s, ids, table, y);
    TPX_LAUNCH_CHECK();
}

void add(int64_t n, const bf16* a, const bf16* b, bf16* y, cudaStream_t stream) {
    if (n == 0) return;
    add_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(n, a, b, y);
    TPX_LAUNCH_CHECK();
}

void silu_mul_fused(int64_t tokens, int64_t inter, const bf16* gate_up, bf16* out, cudaStream_t stream) {
    if (tokens * inter == 0) return;
    silu_mul_fused_kernel<<<blocks_for(tokens * inter, 256), 256, 0, stream>>>(tokens, inter, gate_up, out);
    TPX_LAUNCH_CHECK();
}

void silu_mul(int64_t tokens, int64_t width, const bf16* gate, const bf16* up, bf16* out, cudaStream_t stream) {
    if (tokens * width == 0) return;
    silu_mul_kernel<<<blocks_for(tokens * width, 256), 256, 0, stream>>>(tokens * width, gate, up, out);
    TPX_LAUNCH_CHECK();
}

void scale_add(int64_t tokens, int64_t width, const float* weights, int64_t stride, const bf16* part, bf16* y, cudaStream_t stream) {
    if (tokens * width == 0) return;
    scale_add_kernel<<<blocks_for(tokens * width, 256), 256, 0, stream>>>(tokens, width, weights, stride, part, y);
    TPX_LAUNCH_CHECK();
}

void gather_rows(int64_t n_rows, int64_t width, const int64_t* rows, const bf16* x, bf16* out, cudaStream_t stream) {
    if (n_rows == 0) return;
    gather_rows_kernel<<<(unsigned)n_rows, 256, 0, stream>>>(width, rows, x, out);
    TPX_LAUNCH_CHECK();
}

void bf16_to_f32(int64_t n, const bf16* x, float* y, cudaStream_t stream) {
    if (n == 0) return;
    to_f32_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(n, x, y);
    TPX_LAUNCH_CHECK();
}

void f32_to_bf16(int64_t n, const float* x, bf16* y, cudaStream_t stream) {
    if (n == 0) return;
    to_bf16_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(n, x, y);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
