// Scanning a whole checkpoint for NaN and Inf: every floating tensor is read through the
// loader (converted to float32, in chunks, so memory stays bounded whatever the tensor's size)
// and each tensor holding a non-finite element is reported with its counts and first index.
// What `tpx inspect --check` runs; a NaN weight otherwise only shows as garbage tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loader/checkpoint.h"

namespace tpx {

// One tensor with non-finite elements.
struct NonFiniteTensor {
    std::string name;
    int64_t nan = 0;           // elements that are NaN
    int64_t inf = 0;           // elements that are +Inf or -Inf
    int64_t first_index = -1;  // flat (row-major) index of the first non-finite element
    int64_t numel = 0;
};

struct NanScan {
    std::vector<NonFiniteTensor> bad;   // sorted by name
    int64_t tensors = 0;                // floating tensors scanned
    uint64_t bytes = 0;                 // their bytes in the checkpoint
    std::vector<std::string> skipped;   // tensors of other dtypes (integers cannot hold NaN)
};

// Reads every F32, F16 and BF16 tensor of `ckpt` once; throws CheckpointError on a read failure.
NanScan scan_non_finite(Checkpoint& ckpt);

}  // namespace tpx
