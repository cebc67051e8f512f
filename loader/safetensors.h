// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON
// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}), then the
// data. The header is validated with the rules of the reference implementation
// (huggingface/safetensors); every violation is a CheckpointError naming the file, the tensor
// and the numbers. A writer (atomic: temp file + rename) serves tools and tests.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/error.h"
#include "loader/checkpoint_error.h"
#include "loader/dtype.h"

namespace tpx {

// One tensor of a checkpoint, wherever it is stored.
struct TensorInfo {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    std::string file;     // the file that holds it
    uint64_t offset = 0;  // absolute byte offset of its first element in `file`
    uint64_t nbytes = 0;

    int64_t numel() const;
};

std::string shape_string(const std::vector<int64_t>& shape);  // "[128, 352]"

struct SafetensorsHeader {
    uint64_t header_len = 0;               // N, the JSON's length
    std::vector<TensorInfo> tensors;       // in data order (sorted by offset)
    std::map<std::string, std::string> metadata;
};

constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;  // the reference implementation's limit

// Validates the JSON header of `file` (whose total size is `file_size`) and returns its tensors
// with absolute offsets. Exposed on its own for the fuzzer.
SafetensorsHeader parse_safetensors_header(const std::string& file, const char* json, uint64_t json_len,
                                           uint64_t file_size);

// Reads and validates the header of the safetensors file at `path`. `bytes_read`, if given,
// gets the number of header bytes read.
SafetensorsHeader read_safetensors_header(const std::string& path, uint64_t* bytes_read = nullptr);

// A tensor to write: `data` holds numel * dtype_size bytes.
struct TensorData {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;
};

// Writes a safetensors file atomically (into PATH.tmp-*, then renamed), tensors in the order
// given, the header padded with spaces to a multiple of 8 bytes as the reference does.
void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace tpx
