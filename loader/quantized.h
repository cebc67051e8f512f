// Quantized checkpoints (config.json's quantization_config): GPTQ int4 and HF's fine-grained
// FP8, read as published. The reader presents each quantized linear as a virtual F32 tensor of
// HF's name and shape (X.weight, [out, in]), so the planner slices it like any weight; a read
// fetches only the packed bytes that slice needs (read_bytes() counts exactly those) and
// dequantizes them on the host (loader/dequant.h). Anything else is refused by name.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loader/checkpoint.h"
#include "loader/dequant.h"

namespace tpx {

struct QuantConfig {
    enum class Method { kNone, kGptq, kFp8 };
    Method method = Method::kNone;
    // GPTQ
    int bits = 4;
    int64_t group_size = 128;  // -1: one group over all of `in`
    bool desc_act = false;     // act-order: g_idx is a permutation of the groups' rows
    bool sym = true;
    bool v2 = false;           // checkpoint_format "gptq_v2": zeros stored as they are (v1: zero - 1)
    // FP8
    int64_t block_out = 128, block_in = 128;  // weight_block_size

    bool quantized() const { return method != Method::kNone; }
    std::string describe() const;  // "gptq int4, group 128, act-order, asymmetric, format gptq"
};

// quantization_config of a config.json's text (kNone when absent). Methods, bit widths,
// formats and activation schemes tpx cannot run are refused here (CheckpointError naming
// `file`, the key and the supported values), so `tpx run` refuses them before any rank starts.
QuantConfig parse_quant_config(const std::string& config_json, const std::string& file);

// `ckpt` itself when its config.json has no quantization_config, else the quantized reader
// over it. Its tensors are validated here: packed shapes, dtypes, scales against the groups or
// blocks, every piece of a linear present.
std::unique_ptr<Checkpoint> open_quantized(std::unique_ptr<Checkpoint> ckpt);

// The quantization of a checkpoint opened by Checkpoint::open (kNone for a plain one).
QuantConfig quantization_of(const Checkpoint& ckpt);

// The packed bytes of one slice of a quantized linear, exactly as the reader fetches them to
// dequantize it (no dequantization): what the GPU backend uploads and repacks for its kernels
// (kernels/cpu/quant_gemv.h). gptq()/fp8() point into this object's buffers, so it must stay
// put while they are used. dequantize_gptq(gptq()) / dequantize_fp8(fp8()) give the values a
// plain read of the slice gives.
struct PackedSlice {
    QuantConfig::Method method = QuantConfig::Method::kNone;
    int64_t out_begin = 0, out_len = 0, in_begin = 0, in_len = 0;  // the cut of the [out, in] weight
    std::vector<int32_t> g_idx, row_of_group;                      // GPTQ (GptqTile's)
    std::vector<char> qweight, scales, qzeros, fp8_weight, scale_inv;
    int64_t qzeros_cols = 0, scale_cols = 0, block_out = 128, block_in = 128;
    int zero_offset = 1;
    GptqTile gptq() const;
    Fp8Tile fp8() const;
};

// Whether `name` is a virtual weight of a quantized linear of `ckpt`.
bool is_quantized_linear(const Checkpoint& ckpt, const std::string& name);
// The packed data of each request's slice (every request a quantized linear's, a slice along
// dim 0 or dim 1 or whole; dst_type and tag are ignored), counted in ckpt's stats as read() counts them.
std::vector<std::unique_ptr<PackedSlice>> read_packed_slices(Checkpoint& ckpt, const std::vector<ReadRequest>& requests);

}  // namespace tpx
