// Meta's own checkpoint layout (params.json + consolidated.NN.pth, one torch.save file per
// model-parallel rank), read in place and presented under HF's tensor names, whole tensors
// and a config.json synthesized from params.json, so that the planner and the ranks see an
// HF Llama. A slice of a tensor is mapped onto the parts of the files that hold it; q/k rows
// come out in HF's rotate-half order (HF's convert_llama_weights_to_hf permutation).
#pragma once

#include <memory>
#include <string>

namespace tpx {

class Checkpoint;

// A folder with params.json and consolidated.00.pth.
bool is_meta_folder(const std::string& path);

// CheckpointError for a model folder that holds Meta's params.json and consolidated.00.pth and
// Hugging Face's files too (config.json, model.safetensors[.index.json]: which to load is
// ambiguous), or Meta's files without HF's and without their pair (params.json alone, shards
// without params.json or without consolidated.00.pth). Paths that cannot be looked at are named.
void check_folder_layout(const std::string& path);

// Opens the folder; every file's archive, pickle and shapes are checked against each other and
// against params.json before it returns (CheckpointError naming the file, tensor and key).
std::unique_ptr<Checkpoint> open_meta_checkpoint(const std::string& path, int threads);

}  // namespace tpx
