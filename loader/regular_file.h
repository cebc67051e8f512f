// Checkpoint files are regular files: a FIFO, a device or a socket is refused at once, naming it
// (opening a FIFO would wait for a writer, on every rank of a refit that names one; a device or
// socket has no offsets to read at).
#pragma once

#include <string>

namespace tpx {

// A checkpoint file opened for reading (a descriptor the caller closes), or a CheckpointError
// naming it, also when it is not a regular file.
int open_checkpoint_file(const std::string& path);
// The same check for readers that open a file by its name (HDF5, libzip, a stream): stat, which
// never waits.
void require_regular_file(const std::string& path);

}  // namespace tpx
