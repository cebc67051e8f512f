// Dequantization on the host, in plain C++: GPTQ int4 and fine-grained FP8 tiles of a weight
// to fp32 in HF's [out, in] orientation. These are the CPU backend's routines and the reference
// the tests (and any later GPU kernel) are checked against; every result is exact in fp32
// (GPTQ: an fp16 scale times an integer of at most 5 bits; FP8: one fp32 product, rounded
// as torch rounds `q.float() * scale`).
#pragma once

#include <cstdint>
#include <vector>

namespace tpx {

// float8_e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities,
// S.1111.111 is NaN, the largest finite value is 448) to f32, exactly.
float fp8_e4m3_to_f32(uint8_t v);
// f32 to float8_e4m3fn, rounded to nearest even and saturated to +-448 (as torch's
// `.clamp(-448, 448).to(torch.float8_e4m3fn)`); NaN stays NaN. For writing test checkpoints.
uint8_t f32_to_fp8_e4m3(float f);

// A tile of a GPTQ linear: rows [in_begin, in_begin + in_len) and columns
// [out_begin, out_begin + out_len) of the [in, out] weight, from the packed pieces a reader
// holds for it. Every buffer is dense, row-major:
//   qweight [qweight_rows, out_len]: packed rows from in_begin / 8 (8 values a word along
//     `in`, lowest bits first), the tile's columns only;
//   g_idx [in_len]: the group of each row of the tile;
//   scales [held groups, out_len] (fp32) and qzeros [held groups, qzeros_cols] (packed along
//     `out` from column out_begin / 8): the rows of the groups the tile uses, in the order of
//     row_of_group, which maps a group to its row there (-1: not held).
struct GptqTile {
    int64_t in_begin = 0, in_len = 0, out_begin = 0, out_len = 0;
    const int32_t* qweight = nullptr;
    const int32_t* g_idx = nullptr;
    const float* scales = nullptr;
    const int32_t* qzeros = nullptr;
    int64_t qzeros_cols = 0;
    const std::vector<int32_t>* row_of_group = nullptr;
    int zero_offset = 1;  // checkpoint_format "gptq" stores zero - 1; "gptq_v2" stores the zero itself
};

// dst [out_len, in_len] = (scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o]))^T.
// The caller has checked g_idx against row_of_group.
void dequantize_gptq(const GptqTile& t, float* dst);

// A tile of an FP8 linear: rows [out_begin, out_begin + out_len) and columns
// [in_begin, in_begin + in_len) of the [out, in] weight (dense float8_e4m3fn bytes), and the
// weight_scale_inv blocks that cover it: block rows from out_begin / block_out, block columns
// from in_begin / block_in, scale_cols of them a row.
struct Fp8Tile {
    int64_t out_begin = 0, out_len = 0, in_begin = 0, in_len = 0;
    int64_t block_out = 128, block_in = 128;
    const uint8_t* weight = nullptr;
    const float* scale_inv = nullptr;
    int64_t scale_cols = 0;
};

// dst [out_len, in_len] = fp8 value x its block's weight_scale_inv.
void dequantize_fp8(const Fp8Tile& t, float* dst);

}  // namespace tpx
