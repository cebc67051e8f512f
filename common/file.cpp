#include "common/file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "common/error.h"

namespace tpx {

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write, bool binary) {
    const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    try {
        std::ofstream out(tmp, binary ? std::ios::binary | std::ios::trunc : std::ios::trunc);
        if (!out) throw Error(path + ": cannot create the file: " + std::strerror(errno));
        write(out);
        out.close();  // flushes: a full disk shows here
        if (!out) throw Error(path + ": write failed: " + std::strerror(errno));
    } catch (...) {
        std::remove(tmp.c_str());
        throw;
    }
    rename_into_place(tmp, path);
}

void rename_into_place(const std::string& tmp, const std::string& path) {
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        std::remove(tmp.c_str());
        throw Error(path + ": cannot move the finished file into place: " + std::strerror(err));
    }
}

void write_file_atomically(const std::string& path, const std::string& text) {
    write_file_atomically(path, [&](std::ostream& out) { out << text; });
}

}  // namespace tpx
