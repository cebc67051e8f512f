// Embedding lookup, residual add, SwiGLU, row gather, dtype conversion: one thread per element
// (or per row for the lookup), bf16 storage, fp32 arithmetic. The add and SwiGLU take eight
// elements a thread in 16-byte loads where widths and pointers allow; SwiGLU can write its
// output in e4m3 (ActFp8) for the w8a8 prefill.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant_act.cuh"

namespace tpx::cuda {
namespace {

__global__ void embedding_kernel(cpu::EmbeddingShape s, const int32_t* ids, const bf16* table, bf16* y) {
    pdl_entry();  // see common.cuh
    int64_t t = blockIdx.x;
    int64_t row = (int64_t)ids[t] - s.start;
    bool inside = row >= 0 && row < s.rows;
    for (int64_t i = threadIdx.x; i < s.width; i += blockDim.x)
        y[t * s.width + i] = inside ? table[row * s.width + i] : __float2bfloat16(0.0f);
}

__global__ void add_kernel(int64_t n, const bf16* a, const bf16* b, bf16* y) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

__global__ void silu_mul_fused_kernel(int64_t tokens, int64_t inter, const bf16* gu, bf16* out) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * inter) return;
    int64_t t = i / inter, j = i % inter;
    float g = __bfloat162float(gu[t * 2 * inter + j]), u = __bfloat162float(gu[t * 2 * inter + inter + j]);
    out[i] = __float2bfloat16(silu(g) * u);
}

// Eight elements a thread: `inter8` = inter / 8 vectors per token; a token's gate and up rows
// are `row8` vectors apart (2 * inter8 for the fused layout, g and u inter8 apart). kFp8 (inter a
// multiple of 128): out's bf16 values written in their e4m3 form y8 instead, a half-warp a block.
template <bool kFp8>
__global__ void silu_mul_vec_kernel(int64_t tokens, int64_t inter8, const uint4* g, const uint4* u, int64_t row8, uint4* out, ActFp8 y8) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * inter8) return;  // (kFp8: whole half-warps, inter8 being a multiple of 16)
    int64_t t = i / inter8, j = i % inter8;
    float gf[8], uf[8];
    unpack8(g[t * row8 + j], gf);
    unpack8(u[t * row8 + j], uf);
#pragma unroll
    for (int k = 0; k < 8; ++k) gf[k] = silu(gf[k]) * uf[k];
    if constexpr (kFp8) {
#pragma unroll
        for (int k = 0; k < 8; ++k) gf[k] = round_bf16(gf[k]);  // out's value, as the unfused route quantizes it
        store_act_block_fp8(gf, y8.q + i * 8, y8.s + j / 16 * tokens + t);
    } else {
        out[i] = pack8(gf);
    }
}

__global__ void add_vec_kernel(int64_t n8, const uint4* a, const uint4* b, uint4* y) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float af[8], bf[8];
    unpack8(a[i], af);
    unpack8(b[i], bf);
#pragma unroll
    for (int k = 0; k < 8; ++k) af[k] += bf[k];
    y[i] = pack8(af);
}

__global__ void silu_mul_kernel(int64_t n, const bf16* g, const bf16* u, bf16* out) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(silu(__bfloat162float(g[i])) * __bfloat162float(u[i]));
}

__global__ void scale_add_kernel(int64_t tokens, int64_t width, const float* w, int64_t stride, const bf16* part, bf16* y) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * width) return;
    float s = w[(i / width) * stride];
    if (s != 0.0f) y[i] = __float2bfloat16(__bfloat162float(y[i]) + s * __bfloat162float(part[i]));
}

__global__ void gather_rows_kernel(int64_t width, const int64_t* rows, const bf16* x, bf16* out) {
    pdl_entry();  // see common.cuh
    int64_t r = blockIdx.x;
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[r * width + i] = x[rows[r] * width + i];
}

__global__ void to_f32_kernel(int64_t n, const bf16* x, float* y) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __bfloat162float(x[i]);
}

__global__ void to_bf16_kernel(int64_t n, const float* x, bf16* y) {
    pdl_entry();  // see common.cuh
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16(x[i]);
}

}  // namespace

void embedding(const cpu::EmbeddingShape& s, const int32_t* ids, const bf16* table, bf16* y, Launch at) {
    if (s.tokens == 0) return;
    launch(embedding_kernel, (unsigned)s.tokens, 256, 0, at, s, ids, table, y);
    TPX_LAUNCH_CHECK();
}

void add(int64_t n, const bf16* a, const bf16* b, bf16* y, Launch at) {
    if (n == 0) return;
    if (n % 8 == 0 && aligned16({a, b, y}))
        launch(add_vec_kernel, blocks_for(n / 8, 256), 256, 0, at, n / 8, reinterpret_cast<const uint4*>(a), reinterpret_cast<const uint4*>(b),
                                                                   reinterpret_cast<uint4*>(y));
    else launch(add_kernel, blocks_for(n, 256), 256, 0, at, n, a, b, y);
    TPX_LAUNCH_CHECK();
}

void silu_mul_fused(int64_t tokens, int64_t inter, const bf16* gate_up, bf16* out, Launch at) {
    if (tokens * inter == 0) return;
    if (inter % 8 == 0 && aligned16({gate_up, out})) {
        const uint4* g = reinterpret_cast<const uint4*>(gate_up);
        launch(silu_mul_vec_kernel<false>, blocks_for(tokens * inter / 8, 256), 256, 0, at, tokens, inter / 8, g, g + inter / 8, 2 * inter / 8,
               reinterpret_cast<uint4*>(out), ActFp8{});
    } else {
        launch(silu_mul_fused_kernel, blocks_for(tokens * inter, 256), 256, 0, at, tokens, inter, gate_up, out);
    }
    TPX_LAUNCH_CHECK();
}

void silu_mul(int64_t tokens, int64_t width, const bf16* gate, const bf16* up, bf16* out, Launch at) {
    if (tokens * width == 0) return;
    if (width % 8 == 0 && aligned16({gate, up, out}))
        launch(silu_mul_vec_kernel<false>, blocks_for(tokens * width / 8, 256), 256, 0, at, tokens, width / 8, reinterpret_cast<const uint4*>(gate),
               reinterpret_cast<const uint4*>(up), width / 8, reinterpret_cast<uint4*>(out), ActFp8{});
    else launch(silu_mul_kernel, blocks_for(tokens * width, 256), 256, 0, at, tokens * width, gate, up, out);
    TPX_LAUNCH_CHECK();
}

bool silu_mul_fp8_applies(int64_t width, const bf16* gate, const bf16* up, const ActFp8& y8) {
    return width % 128 == 0 && aligned16({gate, up, y8.q});
}

void silu_mul_fp8(int64_t tokens, int64_t width, const bf16* gate, const bf16* up, int64_t row, const ActFp8& y8, Launch at) {
    TPX_CHECK(silu_mul_fp8_applies(width, gate, up, y8) && y8.s && row % 8 == 0, "silu_mul_fp8: needs whole 128-column blocks, operands on 16 bytes");
    if (tokens * width == 0) return;
    launch(silu_mul_vec_kernel<true>, blocks_for(tokens * width / 8, 256), 256, 0, at, tokens, width / 8, reinterpret_cast<const uint4*>(gate),
           reinterpret_cast<const uint4*>(up), row / 8, nullptr, y8);
    TPX_LAUNCH_CHECK();
}

void scale_add(const ScaleAddArgs& a, Launch at) {
    const int64_t tokens = a.tokens, width = a.width;
    if (tokens * width == 0) return;
    launch(scale_add_kernel, blocks_for(tokens * width, 256), 256, 0, at, tokens, width, a.weights, a.weight_stride, a.part, a.y);
    TPX_LAUNCH_CHECK();
}

void gather_rows(int64_t n_rows, int64_t width, const int64_t* rows, const bf16* x, bf16* out, Launch at) {
    if (n_rows == 0) return;
    launch(gather_rows_kernel, (unsigned)n_rows, 256, 0, at, width, rows, x, out);
    TPX_LAUNCH_CHECK();
}

void bf16_to_f32(int64_t n, const bf16* x, float* y, Launch at) {
    if (n == 0) return;
    launch(to_f32_kernel, blocks_for(n, 256), 256, 0, at, n, x, y);
    TPX_LAUNCH_CHECK();
}

void f32_to_bf16(int64_t n, const float* x, bf16* y, Launch at) {
    if (n == 0) return;
    launch(to_bf16_kernel, blocks_for(n, 256), 256, 0, at, n, x, y);
    TPX_LAUNCH_CHECK();
}

}  // namespace tpx::cuda
