// Scalar conversions between f32, f16 and bf16, written out so the CPU backend and the tests
// share one definition of rounding (round to nearest even, NaN kept as NaN).
#include "loader/dtype.h"

#include <cstring>

#include "common/error.h"

namespace tpx {
namespace {

struct DTypeInfo {
    DType type;
    const char* name;
    size_t size;
};

const DTypeInfo kTypes[] = {
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},   {DType::kI8, "I8", 1},     {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},   {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2}, {DType::kI32, "I32", 4},
    {DType::kU32, "U32", 4},   {DType::kF32, "F32", 4}, {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},   {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
};

uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
float float_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

bool is_float16ish(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

float load(const void* p, DType t, size_t i) {
    switch (t) {
        case DType::kF32: return static_cast<const float*>(p)[i];
        case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
        default: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    }
}

}  // namespace

size_t dtype_size(DType t) { return kTypes[static_cast<int>(t)].size; }
const char* dtype_name(DType t) { return kTypes[static_cast<int>(t)].name; }

bool parse_dtype(const std::string& name, DType& out) {
    for (const DTypeInfo& info : kTypes)
        if (name == info.name) {
            out = info.type;
            return true;
        }
    return false;
}

float bf16_to_f32(uint16_t v) { return float_of(uint32_t(v) << 16); }

uint16_t f32_to_bf16(float f) {
    uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                         // round to nearest even
    return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        if (man == 0) return float_of(sign);
        // Subnormal: normalise the mantissa.
        int e = -1;
        do {
            ++e;
            man <<= 1;
        } while ((man & 0x400u) == 0);
        return float_of(sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13);
    }
    if (exp == 31) return float_of(sign | 0x7f800000u | man << 13);
    return float_of(sign | (exp + 127 - 15) << 23 | man << 13);
}

uint16_t f32_to_f16(float f) {
    uint32_t u = bits_of(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
    if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to infinity
    if (abs < 0x38800000u) {
        // Subnormal or zero in f16: scale by 2^24 and round to nearest even.
        float scaled = float_of(abs) * 16777216.0f;
        uint32_t m = uint32_t(scaled);
        float rest = scaled - float(m);
        if (rest > 0.5f || (rest == 0.5f && (m & 1u))) ++m;
        return uint16_t(sign | m);
    }
    uint32_t exp = ((abs >> 23) - 127 + 15) << 10;
    uint32_t man = (abs >> 13) & 0x3ffu;
    uint32_t rem = abs & 0x1fffu;
    uint32_t h = exp | man;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: correct
    return uint16_t(sign | h);
}

bool can_convert(DType src, DType dst) { return src == dst || (is_float16ish(src) && is_float16ish(dst)); }

void convert(const void* src, DType src_type, void* dst, DType dst_type, size_t n) {
    if (src_type == dst_type) {
        std::memcpy(dst, src, n * dtype_size(src_type));
        return;
    }
    if (!can_convert(src_type, dst_type))
        throw Error(std::string("cannot convert ") + dtype_name(src_type) + " to " + dtype_name(dst_type), kExitBadInput);
    switch (dst_type) {
        case DType::kF32: {
            float* d = static_cast<float*>(dst);
            if (src_type == DType::kBF16) {
                const uint16_t* s = static_cast<const uint16_t*>(src);
                for (size_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
            } else {
                for (size_t i = 0; i < n; ++i) d[i] = load(src, src_type, i);
            }
            break;
        }
        case DType::kBF16: {
            uint16_t* d = static_cast<uint16_t*>(dst);
            for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(load(src, src_type, i));
            break;
        }
        default: {
            uint16_t* d = static_cast<uint16_t*>(dst);
            for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(load(src, src_type, i));
            break;
        }
    }
}

}  // namespace tpx
