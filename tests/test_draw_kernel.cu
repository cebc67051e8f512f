// The device's draw (cuda::draw_rows) against its CPU twin (cpu::draw_token) on the same bf16 rows:
// the same id for every row, bit for bit, over vocabularies with and without 16-byte rows (and
// rows of a multiple of 8 off a 16-byte boundary), every cut, ties, -0, flat and non-finite rows.
// Skips on a machine without a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "common/cuda_check.h"
#include "kernels/cpu/draw.h"
#include "kernels/cuda/ops.h"

using namespace tpx;

namespace {

bool have_gpu() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::mt19937_64 rng(2026);

uint16_t bf16_bits(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
float bf16_value(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
}

// Rows of one kind each: normal at several spreads, peaked, flat, few distinct values (ties),
// zeros of both signs, and one holding a NaN, one an infinity.
std::vector<uint16_t> make_rows(int64_t rows, int64_t n) {
    std::vector<uint16_t> out((size_t)(rows * n));
    for (int64_t r = 0; r < rows; ++r) {
        std::normal_distribution<float> d(0.0f, r % 3 == 0 ? 0.5f : r % 3 == 1 ? 3.0f : 12.0f);
        std::uniform_int_distribution<int> few(-3, 3);
        for (int64_t i = 0; i < n; ++i) {
            float v = d(rng);
            switch (r % 8) {
            case 4: v = i == n / 3 ? 40.0f : v; break;                 // peaked
            case 5: v = 1.5f; break;                                   // flat
            case 6: v = (float)few(rng) * 0.75f; break;               // ties
            case 7: v = i % 3 == 0 ? -0.0f : (i % 3 == 1 ? 0.0f : -v * v); break;  // zeros
            default: break;
            }
            out[r * n + i] = bf16_bits(v);
        }
        if (r == 9) out[r * n + n / 2] = 0x7fc0;  // NaN
        if (r == 10) out[r * n + n - 1] = 0xff80;  // -inf
    }
    return out;
}

const cpu::DrawParams kCuts[] = {{0.0, 0, 1.0}, {1.0, 0, 1.0}, {0.7, 50, 1.0}, {1.0, 0, 0.9}, {0.7, 50, 0.9}, {1.5, 1, 1.0},
                                 {1.0, 0, 1e-9}, {0.3, 1000, 0.5}, {2.0, 3, 0.95}, {1e-30, 0, 0.9}, {1e30, 10, 0.5}, {1.0, 4097, 0.999}};

TEST(DrawKernel, DrawsTheIdsOfItsCpuTwin) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device on this machine: GPU kernel tests skipped";
    KernelConfig tuning;
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreate(&stream));
    for (int64_t n : {128256, 50001, 4096, 4096 + 1, 9}) {
        const bool offset = n == 4096 + 1;  // 4096 ids a row, one bf16 past the allocation's start
        if (offset) --n;
        const int64_t rows = 48;
        const std::vector<uint16_t> bits = make_rows(rows, n);
        std::vector<float> values(bits.size());
        for (size_t i = 0; i < bits.size(); ++i) values[i] = bf16_value(bits[i]);
        uint16_t* block = nullptr;
        cpu::DrawParams* params = nullptr;
        int32_t* ids = nullptr;
        CUDA_CHECK(cudaMalloc(&block, (bits.size() + 1) * 2));
        CUDA_CHECK(cudaMalloc(&params, rows * sizeof(cpu::DrawParams)));
        CUDA_CHECK(cudaMalloc(&ids, rows * sizeof(int32_t)));
        uint16_t* logits = block + (offset ? 1 : 0);
        CUDA_CHECK(cudaMemcpy(logits, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
        for (int round = 0; round < 6; ++round) {
            std::vector<cpu::DrawParams> p(rows);
            for (int64_t r = 0; r < rows; ++r) {
                p[r] = kCuts[(r + round * 5) % (sizeof(kCuts) / sizeof(kCuts[0]))];
                p[r].random = round == 0 ? 0 : round == 1 ? ~0ull : rng();
            }
            CUDA_CHECK(cudaMemcpy(params, p.data(), rows * sizeof(cpu::DrawParams), cudaMemcpyHostToDevice));
            CUDA_CHECK(cudaMemset(ids, 0x7f, rows * sizeof(int32_t)));  // (a row left unwritten shows; -1 is an answer)
            cuda::draw_rows(rows, n, reinterpret_cast<const __nv_bfloat16*>(logits), params, ids, cuda::Launch(stream, tuning));
            std::vector<int32_t> got(rows);
            CUDA_CHECK(cudaMemcpyAsync(got.data(), ids, rows * sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
            CUDA_CHECK(cudaStreamSynchronize(stream));
            for (int64_t r = 0; r < rows; ++r)
                EXPECT_EQ(got[r], cpu::draw_token(values.data() + r * n, n, p[r]))
                    << "vocab " << n << (offset ? " (off 16 bytes)" : "") << " row " << r << " T " << p[r].temperature << " top_k "
                    << p[r].top_k << " top_p " << p[r].top_p << " random " << p[r].random;
        }
        cudaFree(block);
        cudaFree(params);
        cudaFree(ids);
    }
    cudaStreamDestroy(stream);
}

}  // namespace
