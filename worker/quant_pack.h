// A quantized parameter of a rank, laid out for the GPU's quantized GEMVs (kernels/cpu/quant_gemv.h)
// from the checkpoint's packed slices: the pieces of the plan (rows of the [N, K] parameter, each
// a slice of one linear, or zero padding) stacked along N. Host code, no CUDA: the CPU tests
// check it against the loader's dequantization.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/quant_gemv.h"
#include "loader/quantized.h"

namespace tpx {

// Rows [row, row + rows) of the parameter: `slice` (nullptr: zero padding).
struct QuantPiece {
    const PackedSlice* slice = nullptr;
    int64_t row = 0, rows = 0;
};

// What the parameter became: one of the two, by `method`.
struct QuantParam {
    QuantConfig::Method method = QuantConfig::Method::kNone;
    cpu::Fp8Weight fp8;
    cpu::GptqWeight gptq;
    int64_t bytes() const { return method == QuantConfig::Method::kFp8 ? fp8.bytes() : gptq.bytes(); }
};

// The parameter `name` [N, K] from its pieces (in row order, covering every row). Throws Error
// naming the parameter where the kernels cannot take it (FP8: K or a cut of `in` not a multiple
// of 16; GPTQ: more than kQuantMaxSegments different row orders among its pieces).
QuantParam pack_quant_param(const std::string& name, int64_t N, int64_t K, const std::vector<QuantPiece>& pieces);

}  // namespace tpx
