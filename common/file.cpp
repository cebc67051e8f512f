// Whole-or-nothing output files; FIFOs and devices written in place (common/output_path.h).
#include "common/file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/output_path.h"

namespace tpx {

std::string temp_path_for(const std::string& path) {
    std::string suffix = ".tmp-" + std::to_string(::getpid());
    if (!is_stream_target(path)) return path + suffix;
    std::string name = std::filesystem::path(path).filename().string();
    return (std::filesystem::temp_directory_path() / ("tpx-" + name + suffix)).string();
}

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write, bool binary) {
    if (is_stream_target(path)) {
        std::ofstream out(path, binary ? std::ios::binary | std::ios::out : std::ios::out);
        if (!out) throw Error(path + ": cannot open for writing: " + std::strerror(errno));
        write(out);
        out.flush();
        if (!out) throw Error(path + ": write failed: " + std::strerror(errno));
        return;
    }
    const std::string tmp = temp_path_for(path);
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
    if (is_stream_target(path)) {
        std::ifstream in(tmp, std::ios::binary);
        std::ofstream out(path, std::ios::binary | std::ios::out);
        if (in && out && in.peek() != std::char_traits<char>::eof()) out << in.rdbuf();
        bool ok = in.good() || in.eof();
        ok = ok && out.flush().good();
        const int err = errno;
        std::remove(tmp.c_str());
        if (!ok) throw Error(path + ": cannot write: " + std::strerror(err));
        return;
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        std::remove(tmp.c_str());
        throw Error(path + ": cannot move the finished file into place: " + std::strerror(err));
    }
}

void write_file_atomically(const std::string& path, const std::string& text) {
    write_file_atomically(path, [&](std::ostream& out) { out << text; });
}

OutputSet::~OutputSet() {
    for (const Staged& f : staged_) std::remove(f.tmp.c_str());
}

void OutputSet::add_file(const std::string& path, const std::function<void(const std::string& tmp)>& write_to) {
    std::string tmp = temp_path_for(path);
    // Two outputs on one device (/dev/null twice) share a name in the temporary folder.
    for (const Staged& f : staged_)
        if (f.tmp == tmp) tmp += "-" + std::to_string(staged_.size());
    try {
        write_to(tmp);
    } catch (...) {
        std::remove(tmp.c_str());
        throw;
    }
    staged_.push_back({tmp, path});
}

void OutputSet::add(const std::string& path, const std::function<void(std::ostream&)>& write, bool binary) {
    add_file(path, [&](const std::string& tmp) {
        std::ofstream out(tmp, binary ? std::ios::binary | std::ios::trunc : std::ios::trunc);
        if (!out) throw Error(path + ": cannot create the file: " + std::strerror(errno));
        write(out);
        out.close();  // flushes: a full disk shows here
        if (!out) throw Error(path + ": write failed: " + std::strerror(errno));
    });
}

void OutputSet::commit() {
    // FIFOs and devices first: their bytes are copied in and may fail (/dev/full), renames hardly.
    std::vector<Staged> left;
    for (bool streams : {true, false})
        for (const Staged& f : staged_)
            if (is_stream_target(f.path) == streams) left.push_back(f);
    staged_.clear();
    for (size_t i = 0; i < left.size(); ++i) {
        try {
            rename_into_place(left[i].tmp, left[i].path);
        } catch (...) {
            for (size_t j = i + 1; j < left.size(); ++j) std::remove(left[j].tmp.c_str());
            throw;
        }
    }
}

}  // namespace tpx
