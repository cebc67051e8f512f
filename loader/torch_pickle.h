// The pickle inside a torch.save zip (data.pkl), read without executing it: a small stack
// machine that knows only the opcodes and the globals torch.save writes for a dict of tensors
// (protocol 2, collections.OrderedDict, torch._utils._rebuild_tensor_v2, the typed storage
// classes). Any other global is refused by name the moment it is seen; nothing is ever called.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loader/dtype.h"

namespace tpx {

// One tensor of the pickled dict: a view of storage `storage_key` (the archive's data/KEY).
struct PickledTensor {
    std::string name;
    DType dtype = DType::kF32;
    std::string storage_key;
    int64_t storage_numel = 0;    // elements of the whole storage
    int64_t storage_offset = 0;   // in elements
    std::vector<int64_t> shape;
    std::vector<int64_t> stride;  // in elements
};

// The globals a torch.save pickle of tensors may name ("collections OrderedDict", ...).
const std::vector<std::string>& allowed_pickle_globals();

// Parses `bytes` (the data.pkl of `file`) into its tensors, in the pickle's order. Throws
// CheckpointError naming the file and the reason: a global outside allowed_pickle_globals()
// (named as "module.name"), an opcode it does not know, a stream cut short, a top level that
// is not a dict of str -> tensor.
std::vector<PickledTensor> parse_torch_pickle(const std::string& file, const std::string& bytes);

}  // namespace tpx
