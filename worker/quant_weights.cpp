// Quantized parameters onto the GPU: packed slices read, re-laid on the host, copied up.
#include "worker/quant_weights.h"

#include <chrono>

#include "common/cuda_check.h"
#include "common/error.h"
#include "common/log.h"
#include "loader/quantized.h"
#include "worker/quant_pack.h"

namespace tpx {

bool is_quantized_param(const Node* n, int rank, const Checkpoint& ckpt) {
    int quantized = 0, plain = 0;
    for (const Piece& p : n->param->by_rank.at(rank)) {
        if (p.tensor.empty()) continue;
        (is_quantized_linear(ckpt, p.tensor) ? quantized : plain) += 1;
    }
    if (quantized && plain)
        throw Error("parameter " + n->name + " joins slices of quantized linears with plain tensors: the GPU backend cannot hold it", kExitBadInput);
    return quantized > 0;
}

namespace {

template <typename T>
const T* upload(const std::vector<T>& v, cudaStream_t stream, DeviceWeights& w) {
    if (v.empty()) return nullptr;
    void* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, v.size() * sizeof(T)));
    CUDA_CHECK(cudaMemcpyAsync(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
    w.quant_buffers.push_back(d);
    return static_cast<const T*>(d);
}

// One parameter: its packed pieces read, stacked along N, packed and copied up (the host copies
// live until the copies end: the stream is synchronized before they go).
void upload_one(const Node* n, int rank, Checkpoint& ckpt, bool fp8_row_scales, cudaStream_t stream, DeviceWeights& w) {
    const std::vector<int64_t>& shape = n->out()->shape;
    if (shape.size() != 2)
        throw Error("parameter " + n->name + " is quantized and " + std::to_string(shape.size()) +
                        "-D: the GPU backend keeps 2-D linears quantized only (no quantized MoE experts)",
                    kExitBadInput);
    const int64_t N = shape[0], K = shape[1];
    std::vector<ReadRequest> requests;
    std::vector<QuantPiece> pieces;
    int64_t row = 0;
    for (const Piece& p : n->param->by_rank.at(rank)) {
        if (p.elements % K) throw Error("parameter " + n->name + ": a piece of " + std::to_string(p.elements) + " elements is not whole rows of " + std::to_string(K));
        if (!p.tensor.empty()) requests.push_back({p.tensor, p.slice, DType::kF32, pieces.size()});
        pieces.push_back({nullptr, row, p.elements / K});
        row += p.elements / K;
    }
    auto slices = read_packed_slices(ckpt, requests);
    for (size_t i = 0; i < requests.size(); ++i) pieces[requests[i].tag].slice = slices[i].get();
    QuantParam q = pack_quant_param(n->name, N, K, pieces);
    cuda::QuantWeightView v;
    std::vector<float> row_scale;
    if (q.method == QuantConfig::Method::kFp8) {
        v.format = cuda::QuantWeightView::Format::kFp8;
        v.fp8 = {q.fp8.l, upload(q.fp8.w, stream, w), upload(q.fp8.scale, stream, w)};
        // Scales per row and 128 columns for the prefill's FP8 GEMM (kernels/cuda/quant_prefill.h).
        if (fp8_row_scales && cpu::fp8_w8a8_applies(q.fp8.l)) {
            row_scale = cpu::fp8_row_scales(q.fp8.view());
            v.fp8.row_scale = upload(row_scale, stream, w);
        }
    } else {
        v.format = cuda::QuantWeightView::Format::kGptq;
        v.gptq = {q.gptq.l,
                  upload(q.gptq.qw, stream, w),
                  upload(q.gptq.scales, stream, w),
                  upload(q.gptq.zeros, stream, w),
                  upload(q.gptq.perm, stream, w),
                  upload(q.gptq.chunk_group, stream, w)};
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
    w.quant[n->name] = v;
    w.bytes += q.bytes();  // (row_scale, 1/32 of an FP8 weight's bytes, is read only by products of more than 8 rows: not counted)
}

}  // namespace

void upload_quant_params(const Graph& graph, int rank, Checkpoint& ckpt, const std::set<std::string>& names, bool fp8_row_scales, cudaStream_t stream,
                         DeviceWeights& w) {
    if (names.empty()) return;
    auto t0 = std::chrono::steady_clock::now();
    const int64_t before = w.bytes;
    for (Node* n : graph.nodes())
        if (n->param && names.count(n->name)) upload_one(n, rank, ckpt, fp8_row_scales, stream, w);
    log_info("weights: ", names.size(), " quantized linears kept packed on the device, ", (w.bytes - before) / 1e9, " GB, read and laid out in ",
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), " s");
}

}  // namespace tpx
