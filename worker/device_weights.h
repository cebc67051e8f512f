// A rank's parameters on its GPU (bf16, one cudaMalloc each, by parameter name) and their
// upload from the checkpoint. Invariant: `params` holds every "param" node of the graph the
// upload was given, each buffer exactly its planned local shape.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/quant_gemv.h"
#include "loader/checkpoint.h"
#include "sharding/graph.h"

namespace tpx {

struct StagingRing;  // device_weights.cpp: the pinned buffers, events and streams of a load

struct DeviceWeights {
    std::map<std::string, __nv_bfloat16*> params;
    // Quantized linears, kept packed (worker/quant_weights.h), by parameter name; not in params.
    std::map<std::string, cuda::QuantWeightView> quant;
    std::vector<void*> quant_buffers;  // their device buffers
    int64_t bytes = 0;
    // The load's staging ring (pinned host memory, its events and streams), kept for refits so
    // that they do not pin it again; null where no refit can come (docs/PERF.md, sixth session).
    std::unique_ptr<StagingRing> staging;
    void drop_staging();  // frees the ring (no refit will come)
    ~DeviceWeights();
    DeviceWeights();
    DeviceWeights(DeviceWeights&&) noexcept;
    DeviceWeights& operator=(DeviceWeights&&) noexcept;
};

// Reads each parameter's pieces straight into its device buffer: one batched read on the
// checkpoint's threads through a ring of pinned buffers of one read each (at most `staging_bytes` in all,
// two per read thread; kept in the result), copies to the device overlapped with the reads. Quantized parameters stay
// packed (upload_quant_params; `fp8_row_scales` for quant_prefill = "w8a8").
DeviceWeights upload_weights(const Graph& graph, int rank, Checkpoint& ckpt, cudaStream_t stream, bool fp8_row_scales = false,
                             size_t staging_bytes = 256u << 20);

// Refit: the same reads into the buffers `w` holds (no cudaMalloc, the same addresses: CUDA
// graphs captured over them stay valid), through its staging ring. Returns when every byte is
// on the device.
void reload_weights(const Graph& graph, int rank, Checkpoint& ckpt, DeviceWeights& w, cudaStream_t stream,
                    size_t staging_bytes = 256u << 20);

}  // namespace tpx
