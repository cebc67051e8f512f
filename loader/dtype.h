// Element types of checkpoint tensors (the safetensors names) and conversion between the
// floating types tpx computes with. bf16 -> f32 is exact; f32 -> bf16/f16 rounds to nearest
// even, as torch does, so a round trip through the checkpoint's own dtype is bit-exact.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tpx {

enum class DType : uint8_t { kBool, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64, kF8E4M3, kF8E5M2 };

size_t dtype_size(DType t);
// The safetensors spelling: "BF16", "F32", ...
const char* dtype_name(DType t);
// Parses a safetensors dtype name; false if unknown.
bool parse_dtype(const std::string& name, DType& out);

// Converts `n` elements; both types must be one of F32, F16, BF16 (or equal, which copies).
// Throws Error naming both types otherwise.
void convert(const void* src, DType src_type, void* dst, DType dst_type, size_t n);
bool can_convert(DType src, DType dst);

float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float f);

}  // namespace tpx
