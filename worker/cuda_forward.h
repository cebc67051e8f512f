// The CUDA executor's forward state (CudaExecutor::Forward), shared by the files of its walk
// over the step program (cuda_forward.cpp, cuda_quant_forward.cpp); private to the executor.
#pragma once

#include <map>
#include <set>

#include "kernels/cuda/ops.h"
#include "worker/activations.h"
#include "worker/cuda_executor.h"

namespace tpx {

// One forward's state besides its buffers: what the decode fusions have done so far.
struct CudaExecutor::Forward {
    Forward(Activations::Args buffers, int64_t tokens, int64_t rows, bool select, const KernelConfig& config)
        : act(buffers), T(tokens), R(rows), select_rows(select), fuse(cuda::gemv_route_allowed(tokens, config) && !select) {}
    Activations act;
    int64_t T, R;
    bool select_rows;
    bool fuse;  // up to cuda::kBatchGemmMaxTokens tokens: the GEMVs take in their neighbours (quantized ones at one token)
    std::map<const Node*, cuda::GemvNorm> pending_norm;  // linear -> the norm its GEMV computes first
    std::map<const Node*, __nv_bfloat16*> pending_release;  // linear -> the all-reduced input that norm reads
    std::set<const Node*> skip, kv_written;
    std::set<const Node*> residual_added;  // add_rmsnorm nodes whose add the GEMM before did
    // attention -> its arguments with the RoPE before it taken in (cuda::AttentionRope), made by
    // that rope, which launched nothing.
    std::map<const Node*, cuda::AttentionArgs> rope_in_attention;
    std::set<const Value*> act_fp8;        // buffers holding their value's e4m3 form (fp8_output)
    // Fused all-reduces (program_.exchange_of): norm -> its exchange's place in this forward. One
    // open at a time (pushed, its sum not yet launched), as cuda::ExchangeIn's parity needs.
    std::map<const Node*, uint32_t> pushed;
    uint32_t exchanges = 0;
    bool exchange_open = false;
};

}  // namespace tpx
