// Quantized linears kept packed on the GPU: each parameter whose pieces are slices of a
// quantized checkpoint's linears is read as packed data (loader read_packed_slices), laid out
// for the quantized GEMVs (worker/quant_pack.h) and uploaded; it then lives in
// DeviceWeights::quant, not in params. Invariant: every parameter of the graph is in exactly
// one of the two maps after upload_weights.
#pragma once

#include <cuda_runtime.h>

#include <set>
#include <string>

#include "loader/checkpoint.h"
#include "sharding/graph.h"
#include "worker/device_weights.h"

namespace tpx {

// Whether parameter node n's pieces on `rank` are quantized linears' slices (all of them;
// a parameter mixing them with plain tensors is an Error naming it).
bool is_quantized_param(const Node* n, int rank, const Checkpoint& ckpt);

// Reads, packs and uploads the parameters `names` into w.quant (w.bytes counts their bytes).
// `fp8_row_scales`: FP8 weights also get their scales per row and 128 columns (Fp8View::row_scale,
// for quant_prefill = "w8a8"; 1/32 of the weight's bytes, so made only when asked for).
void upload_quant_params(const Graph& graph, int rank, Checkpoint& ckpt, const std::set<std::string>& names, bool fp8_row_scales, cudaStream_t stream,
                         DeviceWeights& w);

}  // namespace tpx
