// Quantized checkpoints (config.json's quantization_config): GPTQ int4 and HF's fine-grained
// FP8, read as published. The reader presents each quantized linear as a virtual F32 tensor of
// HF's name and shape (X.weight, [out, in]), so the planner slices it like any weight; a read
// fetches only the packed bytes that slice needs (read_bytes() counts exactly those) and
// dequantizes them on the host (loader/dequant.h). Anything else is refused by name.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "loader/checkpoint.h"

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

}  // namespace tpx
