// The files a job names, checked before anything starts.
#include "jobs/files.h"

#include <filesystem>

#include "common/error.h"
#include "common/path.h"
#include "jobs/hostfile.h"

namespace fs = std::filesystem;

namespace tpx {
namespace {

// Why `path` is not a regular file: "no such file", or what it is instead.
std::string not_a_file(const std::string& path) {
    std::error_code ec;
    switch (fs::status(path, ec).type()) {
        case fs::file_type::not_found: return "no such file: " + path;
        case fs::file_type::directory: return path + " is a folder, not a file";
        case fs::file_type::fifo: return path + " is a FIFO, not a regular file (it would be read more than once)";
        default: return path + " is not a regular file";
    }
}

}  // namespace

void check_job_files(const Job& job, const KeyPosition& where) {
    std::error_code ec;
    fs::path model(job.model.path);
    auto [ml, mc] = where("model", "path");
    const std::string model_at = at(job.file, ml, mc, "model.path: ");  // a symlink loop is named with it (common/path.h)
    const fs::file_type model_type = path_type<JobError>(model, model_at);
    if (job.model.path.empty()) throw JobError(at(job.file, ml, mc, "model.path is empty: name the model's folder or .h5 file"));
    if (model_type == fs::file_type::not_found)
        throw JobError(at(job.file, ml, mc, "model.path: no such file or directory: " + job.model.path));
    if (model_type == fs::file_type::directory) {
        // An HF folder, or Meta's own (params.json + consolidated.NN.pth, loader/meta.h).
        if (!path_exists<JobError>(model / "config.json", model_at) && !path_exists<JobError>(model / "params.json", model_at))
            throw JobError(at(job.file, ml, mc, "model.path: " + job.model.path +
                                                    " has neither config.json nor params.json (an HF or a Meta model folder is expected)"));
    } else if (model.extension() != ".h5" && model.extension() != ".hdf5") {
        throw JobError(at(job.file, ml, mc, "model.path: " + job.model.path + " is neither an HF model folder nor an .h5 file"));
    }
    if (!job.run.prompts.empty() && !is_regular(job.run.prompts)) {
        auto [l, c] = where("run", "prompts");
        throw JobError(at(job.file, l, c, "run.prompts: " + not_a_file(job.run.prompts)));
    }
    if (!job.run.chat_template.empty() && !is_regular(job.run.chat_template)) {
        auto [l, c] = where("run", "chat_template");
        throw JobError(at(job.file, l, c, "run.chat_template: " + not_a_file(job.run.chat_template)));
    }
    if (!job.model.tokenizer.empty() && !fs::exists(job.model.tokenizer, ec)) {
        auto [l, c] = where("model", "tokenizer");
        throw JobError(at(job.file, l, c, "model.tokenizer: no such file or folder: " + job.model.tokenizer));
    }
    if (!job.launch.hostfile.empty() && !is_regular(job.launch.hostfile)) {
        auto [l, c] = where("launch", "hostfile");
        throw JobError(at(job.file, l, c, "launch.hostfile: " + not_a_file(job.launch.hostfile)));
    }
    if (!job.launch.hostfile.empty()) {
        auto [l, c] = where("launch", "hostfile");
        check_hostfile(job, at(job.file, l, c, ""));
    }
    fs::path out_dir = fs::path(job.run.output).parent_path();
    if (!out_dir.empty() && !fs::is_directory(out_dir, ec)) {
        auto [l, c] = where("run", "output");
        throw JobError(at(job.file, l, c,
                          looked_at_in_vain(ec) ? "run.output: cannot look at its folder " + out_dir.string() + ": " + ec.message()
                          : fs::exists(out_dir, ec) ? "run.output: " + out_dir.string() + " is not a folder"
                                                    : "run.output: folder does not exist: " + out_dir.string()));
    }
}

}  // namespace tpx
