// The HF folder writer. Tensors are read whole in their own dtype (a Meta checkpoint's q/k rows
// come out permuted, as HF's conversion writes them) one shard at a time, so memory holds one
// shard, not the model.
#include "loader/hf_folder.h"

#include <unistd.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/file.h"
#include "loader/checkpoint.h"

namespace fs = std::filesystem;

namespace tpx {

ConvertStats convert_to_hf_folder(Checkpoint& source, const std::string& out_dir, uint64_t shard_bytes) {
    std::error_code ec;
    if (fs::exists(out_dir, ec)) throw Error(out_dir + ": already exists; tpx convert writes a new folder and replaces nothing", kExitBadInput);
    const fs::path out = fs::path(out_dir).lexically_normal();
    if (!out.parent_path().empty() && !fs::is_directory(out.parent_path(), ec))
        throw Error(out_dir + ": the folder " + out.parent_path().string() + " does not exist", kExitBadInput);
    if (source.config_json().empty()) throw Error(source.path() + ": has no config.json to write", kExitBadInput);

    // Shards: tensors in name order, a new shard when the next would pass shard_bytes.
    std::vector<std::vector<const TensorInfo*>> shards(1);
    uint64_t in_shard = 0;
    for (const TensorInfo& t : source.tensors()) {
        if (!shards.back().empty() && in_shard + t.nbytes > shard_bytes) shards.emplace_back(), in_shard = 0;
        shards.back().push_back(&t);
        in_shard += t.nbytes;
    }
    const fs::path tmp = out.string() + ".tmp-" + std::to_string(::getpid());
    ConvertStats stats;
    if (!fs::create_directory(tmp, ec) || ec)
        throw Error(out_dir + ": cannot create a folder in " + (out.parent_path().empty() ? std::string(".") : out.parent_path().string()) +
                        ": " + (ec ? ec.message() : std::string("something is already at ") + tmp.string()),
                    kExitBadInput);
    try {
        write_file_atomically((tmp / "config.json").string(), source.config_json());
        if (!source.generation_config_json().empty())
            write_file_atomically((tmp / "generation_config.json").string(), source.generation_config_json());
        nlohmann::json weight_map = nlohmann::json::object();
        for (size_t s = 0; s < shards.size(); ++s) {
            char name[64];
            std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
            const std::string file = shards.size() == 1 ? "model.safetensors" : name;
            std::vector<std::vector<char>> buffers;
            std::vector<TensorData> tensors;
            for (const TensorInfo* t : shards[s]) {
                buffers.emplace_back(t->nbytes);
                source.read(t->name, Slice::whole(), t->dtype, buffers.back().data());
                tensors.push_back({t->name, t->dtype, t->shape, buffers.back().data()});
                weight_map[t->name] = file;
                ++stats.tensors;
                stats.bytes += t->nbytes;
            }
            write_safetensors((tmp / file).string(), tensors, {{"format", "pt"}});
        }
        if (shards.size() > 1)
            write_file_atomically((tmp / "model.safetensors.index.json").string(),
                                  nlohmann::json{{"metadata", {{"total_size", stats.bytes}}}, {"weight_map", weight_map}}.dump(2));
        fs::rename(tmp, out, ec);
        if (ec) throw Error(out_dir + ": cannot move the finished folder into place (from " + tmp.string() + "): " + ec.message());
    } catch (...) {
        fs::remove_all(tmp, ec);
        throw;
    }
    return stats;
}

}  // namespace tpx
