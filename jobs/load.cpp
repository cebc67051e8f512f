// Reading a job file from disk or a stream: which folder its relative paths resolve against.
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/error.h"
#include "common/path.h"
#include "jobs/parse.h"

namespace tpx {

namespace fs = std::filesystem;

constexpr size_t kMaxJobFileBytes = 16u << 20;  // far past any job (tpx example's is a few KB)

bool job_file_is_stream(const std::string& path) {
    // An open descriptor's name (/dev/stdin, /dev/fd/N, /proc/self/fd/N) is read once even when
    // it leads to a regular file (standard input redirected from one).
    return !is_regular(path) || !process_relative_name(path).empty();
}

Job load_job(const std::string& path) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) throw JobError(path + ": is a folder, not a job file; `tpx example` prints one with every key");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw JobError(path + ": cannot open the job file: " + std::strerror(errno));
    // Read up to the limit: a stream without end (/dev/zero) must not take memory without bound.
    std::string text;
    char chunk[1 << 16];
    while (text.size() <= kMaxJobFileBytes && in.read(chunk, sizeof(chunk)).gcount() > 0) text.append(chunk, (size_t)in.gcount());
    if (in.bad()) throw JobError(path + ": cannot read the job file: " + std::strerror(errno));
    if (text.size() > kMaxJobFileBytes)
        throw JobError(path + ": longer than " + std::to_string(kMaxJobFileBytes >> 20) + " MiB: not a job file (`tpx example` prints one)");
    ec.clear();  // (a current folder that was removed: the throwing calls end in "internal error")
    std::string base = job_file_is_stream(path) ? fs::current_path(ec).string() : fs::absolute(path, ec).parent_path().string();
    if (ec) throw JobError(path + ": cannot tell the job file's folder: " + ec.message());
    return parse_job(text, path, base);
}

}  // namespace tpx
