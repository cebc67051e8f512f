// HDF5 checkpoints: `tpx convert` writes one dataset per tensor under /tensors (bf16 and f16
// kept as their 16-bit patterns with a "dtype" attribute, so a round trip is bit-exact), with
// config.json and generation_config.json as attributes of the root. Datasets are chunked along
// dim 0 so that a rank's row slice (tp up to 64 when the rows divide) is whole chunks. Slice
// reads use hyperslabs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace tpx {

class Checkpoint;

std::unique_ptr<Checkpoint> open_hdf5_checkpoint(const std::string& path);

struct ConvertStats {
    size_t tensors = 0;
    uint64_t bytes = 0;
};

// Writes every tensor of `source` to `out_path` (atomically: a temp file renamed at the end).
ConvertStats convert_to_hdf5(Checkpoint& source, const std::string& out_path);

// Closes `file` (an hid_t), an HDF5 file written for `path`, where HDF5 writes out what it
// buffered: should that fail (a full disk), throws naming `path`. Every object in the file must
// be closed first. The caller removes the file it wrote, or moves it into place.
void close_written_hdf5(int64_t file, const std::string& path);

// Rows per chunk for a dataset of `rows` rows of `row_bytes` bytes: rows / 2^k for the largest
// k <= 6 that divides rows, halved further while a chunk exceeds 4 MiB.
long long hdf5_chunk_rows(long long rows, long long row_bytes);

}  // namespace tpx
