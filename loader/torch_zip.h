// A file torch.save wrote: a zip archive (one folder, ARCHIVE/) holding data.pkl, the pickled
// object, and data/KEY, one entry per storage. Opened with libzip, which checks the archive's
// consistency and reads data.pkl; the pickle is parsed (loader/torch_pickle.h) before any
// storage is touched, and every storage it names must be a STORED (uncompressed) entry, whose
// data then sits at a fixed file offset that reads can pread directly, as in safetensors.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "loader/torch_pickle.h"

namespace tpx {

struct TorchArchive {
    std::string file;
    std::string prefix;                  // the archive's folder ("consolidated.00/"): torch.save's name of the file
    std::vector<PickledTensor> tensors;  // the pickled dict, in its order
    // Each storage key the tensors name -> the absolute file offset and size of its data.
    struct Entry {
        uint64_t offset = 0, bytes = 0;
    };
    std::map<std::string, Entry> storages;
    uint64_t header_bytes = 0;  // data.pkl, the central directory and local headers read
};

// Opens `path`; throws CheckpointError naming the file (and the entry or tensor) when it is not
// a zip libzip can open, has no ARCHIVE/data.pkl, names a global outside the allow list, lacks
// a data/KEY entry a tensor needs, stores one compressed, or has a tensor that does not fit its
// storage.
TorchArchive open_torch_archive(const std::string& path);

}  // namespace tpx
