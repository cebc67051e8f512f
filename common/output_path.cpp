// Output paths checked against inputs and each other before any work starts.
#include "common/output_path.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "common/file.h"
#include "common/path.h"

namespace fs = std::filesystem;

namespace tpx {
namespace {

// The file a path names, for comparison: its device and inode when it exists, else its
// resolved path (its own chain of links and the parent's followed).
struct FileId {
    bool exists = false;
    dev_t dev = 0;
    ino_t ino = 0;
    std::string resolved;
    bool operator==(const FileId& o) const {
        return exists == o.exists && (exists ? dev == o.dev && ino == o.ino : resolved == o.resolved);
    }
};

FileId identify(const std::string& path) {
    FileId id;
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) {
        id.exists = true;
        id.dev = st.st_dev;
        id.ino = st.st_ino;
    }
    // A dangling symlink names the file a write would make: where its chain leads (a loop is
    // prove_writable's to refuse).
    std::string target = path;
    try {
        target = written_path(path);
    } catch (const Error&) {
    }
    std::error_code ec;
    fs::path p = fs::weakly_canonical(fs::absolute(target, ec), ec);
    id.resolved = ec ? fs::absolute(target).lexically_normal().string() : p.string();
    return id;
}

std::string describe(const NamedPath& p) { return p.role + " (" + p.path + ")"; }

// Creates and removes the temporary file `path` will be written through: the folder exists and
// is writable, and the longest name tpx will use fits the file system.
void prove_writable(const NamedPath& out) {
    if (is_stream_target(out.path)) {
        // Not opened to find out: a FIFO's reader would see the probe's close as its end.
        if (::access(out.path.c_str(), W_OK) != 0) throw JobError(describe(out) + ": cannot be written: " + std::strerror(errno));
        return;
    }
    // A symlink is written through: its target's folder takes the temporary file.
    std::string target;
    try {
        target = written_path(out.path);
    } catch (const Error& e) {  // its message names the path
        throw JobError(out.role + ": " + e.what());
    }
    const std::string via = target == out.path ? "" : " (where its symlink leads: " + target + ")";
    fs::path parent = fs::path(target).parent_path();
    std::error_code ec;
    if (!parent.empty() && !fs::is_directory(parent, ec))
        throw JobError(describe(out) + (looked_at_in_vain(ec) ? ": cannot look at its folder " + parent.string() + ": " + ec.message()
                                           : fs::exists(parent, ec) ? ": " + parent.string() + " is not a folder"
                                                                    : ": folder does not exist: " + parent.string()) + via);
    // The name as the process that writes it (rank 0, another PID) may make it: the PID's longest.
    std::string tmp = temp_path_for(target);
    tmp.insert(tmp.size() - std::to_string(::getpid()).size(), 10 - std::to_string(::getpid()).size(), '0');
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) {
        int err = errno;
        if (err == ENAMETOOLONG)
            throw JobError(describe(out) + ": the file name is too long for its file system (" +
                           std::to_string(fs::path(target).filename().string().size()) + " bytes)" + via);
        throw JobError(describe(out) + ": cannot write in " + (parent.empty() ? std::string(".") : parent.string()) + ": " +
                       std::strerror(err) + via);
    }
    ::close(fd);
    ::unlink(tmp.c_str());
}

// Whether a checkpoint's readers would take a file of this name in its folder for one of its
// own: config and tokenizer files and weights, tpx's (loader/, text/) and those HF's readers
// (transformers, tokenizers) take, so that the folder stays loadable by either.
bool read_by_checkpoint_readers(const std::string& name) {
    static const char* const kNames[] = {
        "config.json",        "generation_config.json", "tokenizer.json",        "tokenizer_config.json", "special_tokens_map.json",
        "chat_template.jinja", "chat_template.json",    "params.json",           "model.safetensors.index.json",
        "vocab.json",         "merges.txt",             "tokenizer.model",       "added_tokens.json",     "preprocessor_config.json",
        "vocab.txt",          "pytorch_model.bin.index.json"};
    for (const char* n : kNames)
        if (name == n) return true;
    auto ends = [&](const std::string& tail) {
        return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
    };
    return ends(".safetensors") || ends(".pth") || ends(".gguf") || (name.rfind("pytorch_model", 0) == 0 && ends(".bin"));
}

}  // namespace

int standard_stream(const std::string& path) {
    return path == "/dev/stdout" ? STDOUT_FILENO : path == "/dev/stderr" ? STDERR_FILENO : -1;
}

bool is_stream_target(const std::string& path) {
    if (standard_stream(path) >= 0) return true;  // written in place: nothing made beside it in /dev
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISSOCK(st.st_mode));
}

void check_outputs(const std::vector<NamedPath>& outputs, const std::vector<NamedPath>& inputs) {
    std::vector<FileId> input_ids, output_ids;
    for (const NamedPath& in : inputs) input_ids.push_back(identify(in.path));
    for (size_t i = 0; i < outputs.size(); ++i) {
        const NamedPath& out = outputs[i];
        std::error_code ec;
        if (out.path.empty() || fs::is_directory(out.path, ec))
            throw JobError(describe(out) + " is a folder; name a file");
        if (out.path.back() == '/') throw JobError(describe(out) + " ends in '/', which names a folder; name a file");
        if (fs::is_socket(out.path, ec))
            throw JobError(describe(out) + " is a socket, which cannot be opened as a file; name a file or a FIFO");
        FileId id = identify(out.path);
        for (size_t k = 0; k < inputs.size(); ++k)
            if (id == input_ids[k])
                throw JobError(describe(out) + " is the same file as " + describe(inputs[k]) + ": an output never replaces an input");
        for (size_t k = 0; k < inputs.size(); ++k) {
            if (fs::is_directory(inputs[k].path, ec) && fs::path(id.resolved).parent_path() == input_ids[k].resolved &&
                read_by_checkpoint_readers(fs::path(id.resolved).filename().string()))
                throw JobError(describe(out) + " would be read as a file of " + describe(inputs[k]) +
                               ": an output never goes into a checkpoint's folder under a name its readers take");
        }
        for (size_t k = 0; k < i; ++k)
            if (id == output_ids[k] && !(identify("/dev/null") == id))
                throw JobError(describe(out) + " is the same file as " + describe(outputs[k]) + ": each output needs its own file");
        output_ids.push_back(id);
        prove_writable(out);
    }
}

std::vector<NamedPath> checkpoint_inputs(const std::string& model_path) {
    std::vector<NamedPath> files;
    std::error_code ec;
    if (fs::is_directory(model_path, ec)) {
        files.push_back({"the checkpoint's folder", model_path});
        for (fs::directory_iterator it(model_path, ec), end; !ec && it != end; it.increment(ec))
            if (it->is_regular_file(ec)) files.push_back({"a file of the checkpoint", it->path().string()});
    } else {
        files.push_back({"the checkpoint", model_path});
    }
    return files;
}

}  // namespace tpx
