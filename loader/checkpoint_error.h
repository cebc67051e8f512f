// The loader's one error type, thrown by every format (safetensors, HDF5) and by slicing.
#pragma once

#include <string>

#include "common/error.h"

namespace tpx {

// A checkpoint that cannot be read as it is: corrupt, truncated, inconsistent. Exit code 2.
class CheckpointError : public Error {
public:
    explicit CheckpointError(const std::string& message) : Error(message, kExitBadInput) {}
};

}  // namespace tpx
