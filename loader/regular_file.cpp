// Checkpoint files opened only when they are regular files (loader/regular_file.h).
#include "loader/regular_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "loader/checkpoint_error.h"

namespace tpx {
namespace {

const char* describe_type(mode_t mode) {
    if (S_ISDIR(mode)) return "a folder";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "a special file";
}

[[noreturn]] void refuse_non_regular(const std::string& path, mode_t mode) {
    throw CheckpointError(path + ": is " + describe_type(mode) + ", not a regular file (a checkpoint's files are read at offsets)");
}

}  // namespace

int open_checkpoint_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO opens at once, then is refused
    if (fd < 0) throw CheckpointError(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const int e = errno;
        ::close(fd);
        throw CheckpointError(path + ": cannot stat: " + std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        refuse_non_regular(path, st.st_mode);
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

void require_regular_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw CheckpointError(path + ": cannot open: " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) refuse_non_regular(path, st.st_mode);
}

}  // namespace tpx
