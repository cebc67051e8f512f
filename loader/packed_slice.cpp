// PackedSlice's views as the dequantization tiles (loader/dequant.h) that its buffers make up.
#include "loader/quantized.h"

namespace tpx {

GptqTile PackedSlice::gptq() const {
    GptqTile t;
    t.in_begin = in_begin, t.in_len = in_len, t.out_begin = out_begin, t.out_len = out_len;
    t.qweight = reinterpret_cast<const int32_t*>(qweight.data());
    t.g_idx = g_idx.data();
    t.scales = reinterpret_cast<const float*>(scales.data());
    t.qzeros = reinterpret_cast<const int32_t*>(qzeros.data());
    t.qzeros_cols = qzeros_cols;
    t.row_of_group = &row_of_group;
    t.zero_offset = zero_offset;
    return t;
}

Fp8Tile PackedSlice::fp8() const {
    Fp8Tile t;
    t.out_begin = out_begin, t.out_len = out_len, t.in_begin = in_begin, t.in_len = in_len;
    t.block_out = block_out, t.block_in = block_in;
    t.weight = reinterpret_cast<const uint8_t*>(fp8_weight.data());
    t.scale_inv = reinterpret_cast<const float*>(scale_inv.data());
    t.scale_cols = scale_cols;
    return t;
}

}  // namespace tpx
