// A job's inputs and outputs.
#include "jobs/outputs.h"

#include <sys/stat.h>

#include <filesystem>

#include "common/error.h"

namespace tpx {

namespace fs = std::filesystem;

std::vector<NamedPath> job_inputs(const Job& job) {
    std::vector<NamedPath> inputs;
    struct stat st;
    if (::stat(job.file.c_str(), &st) == 0 && S_ISREG(st.st_mode)) inputs.push_back({"the job file", job.file});
    if (!job.run.prompts.empty()) inputs.push_back({"run.prompts", job.run.prompts});
    if (!job.launch.hostfile.empty()) inputs.push_back({"launch.hostfile", job.launch.hostfile});
    std::vector<NamedPath> ckpt = checkpoint_inputs(job.model.path);
    inputs.insert(inputs.end(), ckpt.begin(), ckpt.end());
    if (!job.model.tokenizer.empty())  // a folder (every file of it) or a tokenizer.json
        for (NamedPath& p : checkpoint_inputs(job.model.tokenizer)) inputs.push_back({"model.tokenizer", p.path});
    if (!job.run.chat_template.empty()) inputs.push_back({"run.chat_template", job.run.chat_template});
    // tpx's own programs (tpx and tpx-worker share a folder): every later run needs them.
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (!ec)
        for (const char* program : {"tpx", "tpx-worker"})
            if (fs::is_regular_file(self.parent_path() / program, ec)) inputs.push_back({std::string("the ") + program + " program", (self.parent_path() / program).string()});
    return inputs;
}

std::string ranks_table_path(const Job& job) {
    return is_stream_target(job.run.output) ? "" : job.run.output + ".ranks.json";
}

std::vector<NamedPath> check_job_outputs(const Job& job, const std::vector<NamedPath>& extra) {
    std::vector<NamedPath> outputs = {{"run.output", job.run.output}};
    if (std::string ranks = ranks_table_path(job); !ranks.empty()) outputs.push_back({"the ranks table (run.output + .ranks.json)", ranks});
    outputs.insert(outputs.end(), extra.begin(), extra.end());
    try {
        check_outputs(outputs, job_inputs(job));
    } catch (const JobError& e) {
        throw JobError(job.file + ": " + e.what());
    }
    return outputs;
}

}  // namespace tpx
