// libFuzzer target for the safetensors header parser: any bytes as a whole file. The parser
// may reject the input (CheckpointError) but must never crash, overflow or read out of bounds
// (built with ASan + UBSan by tests/fuzz/run_fuzz.sh).
#include <cstddef>
#include <cstdint>

#include "loader/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 8) return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
    // read_safetensors_header checks these two before it reads the header at all.
    if (n > tpx::kMaxSafetensorsHeader || 8 + n > size) return 0;
    try {
        tpx::parse_safetensors_header("fuzz.safetensors", reinterpret_cast<const char*>(data + 8), n, size);
    } catch (const tpx::CheckpointError&) {
    }
    return 0;
}
