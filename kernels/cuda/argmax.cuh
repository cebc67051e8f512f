// The argmax's order, shared by the greedy argmax (argmax.cu) and the draw's greedy rows
// (draw.cu), so that both pick the same id: the larger value, on ties the first index.
#pragma once

#include <cstdint>

namespace tpx::cuda {

__device__ inline void better(float v, int64_t i, float& bv, int64_t& bi) {
    if (v > bv || (v == bv && i < bi)) bv = v, bi = i;
}

// Every lane ends with the warp's best (value, index).
__device__ inline void warp_argmax(float& bv, int64_t& bi) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
        better(ov, oi, bv, bi);
    }
}

}  // namespace tpx::cuda
