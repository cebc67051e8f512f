// Writing any checkpoint tpx reads as an HF model folder: config.json (and
// generation_config.json), the tensors under their HF names in safetensors shards of at most
// kShardBytes, with model.safetensors.index.json when there is more than one. The folder is
// written whole or not at all (a temporary folder beside it, renamed at the end).
#pragma once

#include <cstdint>
#include <string>

#include "loader/hdf5.h"

namespace tpx {

class Checkpoint;

constexpr uint64_t kShardBytes = 5'000'000'000ull;  // HF save_pretrained's default max_shard_size

// Throws Error naming `out_dir` when it already exists (nothing is written over).
ConvertStats convert_to_hf_folder(Checkpoint& source, const std::string& out_dir, uint64_t shard_bytes = kShardBytes);

}  // namespace tpx
