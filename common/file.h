// Output files written whole or not at all.
#pragma once

#include <sys/types.h>

#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace tpx {

// Who may read a file tpx writes: as the umask and an old file's bits allow, or its owner only
// (0600: files that carry a secret, the serve's api_key).
enum class Access { kAsUsual, kOwnerOnly };

// Writes `path` through `write` into a temporary file beside it (temp_path_for), then renames it
// over `path` (over a symlink's target: written_path): a reader sees the old file or the whole
// new one, and a failure (a folder that does not exist, a full disk, an exception from `write`)
// leaves no temporary file behind and throws an Error that names the path and the system's
// reason. An existing FIFO or character device (/dev/stdout, /dev/null) is written in place
// instead: it is never replaced by a file (a FIFO's reader waited for up to `stream_wait_s`, 0:
// as long as it takes: OutputSet::commit). kOwnerOnly: the file is its owner's alone from its
// creation on, whatever the old file's bits were (a FIFO or device there is refused).
void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write, bool binary = false,
                           double stream_wait_s = 0);
void write_file_atomically(const std::string& path, const std::string& text, double stream_wait_s = 0, Access access = Access::kAsUsual);

// `text` in a new file folder/PREFIX-XXXXXX.SUFFIX (`suffix` with its dot): a name no one could
// plant a link or FIFO at beforehand, made exclusively and 0600 (mkstemps), the text written through
// the descriptor that made it and the close checked. Its path; on failure nothing is left and the
// Error names the file and the system's reason.
std::string write_new_private_file(const std::string& folder, const std::string& prefix, const std::string& suffix, const std::string& text);

// The file a write to `path` replaces: `path`, or where its chain of symlinks ends (a link is
// written through, as a shell's `>` does, and stays a link; a dangling one makes its target).
// Throws Error naming `path` for a chain that does not end.
std::string written_path(const std::string& path);

// The temporary file `path` is written through: beside written_path(path) as NAME.tmp-PID, or
// in the system's temporary folder when `path` is a FIFO or device (nothing is created beside
// /dev/null).
std::string temp_path_for(const std::string& path);

// Several outputs of one run, written as one: each is written to its temporary file
// (temp_path_for) as it is added, and only commit() moves them into place, so that a failure
// while writing any of them (a full disk) leaves every output as it was. What is not committed
// is removed with the set.
class OutputSet {
public:
    OutputSet() = default;
    OutputSet(const OutputSet&) = delete;
    OutputSet& operator=(const OutputSet&) = delete;
    ~OutputSet();
    // `path` written by `write` as text (or bytes).
    void add(const std::string& path, const std::function<void(std::ostream&)>& write, bool binary = false, Access access = Access::kAsUsual);
    // `path` written by other means (HDF5): `write_to` makes the file it is given, whole, or throws.
    void add_file(const std::string& path, const std::function<void(const std::string& tmp)>& write_to);
    // Each output into place: those on FIFOs and devices first (copied in, where a write may still
    // fail; their readers waited for up to `stream_wait_s` in all, 0: as long as it takes), then the
    // files renamed, in the order added. Should a rename fail, the files already renamed get their
    // old versions back (kept aside meanwhile: common/file.cpp); the temporary files are removed.
    void commit(double stream_wait_s = 0);

private:
    // The temporary file of `path` made (make_own_temporary), written by write_to and staged for
    // commit(); fd: the descriptor that made it (kOwnerOnly; closed, checked, after write_to), else -1.
    void stage(const std::string& path, Access access, const std::function<void(const std::string& tmp, int fd)>& write_to);
    struct Staged {
        std::string tmp, path;
        std::string named;  // path as the caller gave it (a symlink: and where it leads), for messages
        int slot;           // register_temporary's
        dev_t dev;          // the temporary file's identity when it was made (make_own_temporary)
        ino_t ino;
        int mode;           // the permission bits the file takes before its rename (-1: as made)
    };
    std::vector<Staged> staged_;
};

}  // namespace tpx
