// A job's inputs and outputs.
#include "jobs/outputs.h"

#include <filesystem>

#include "common/error.h"
#include "common/path.h"

namespace tpx {

namespace fs = std::filesystem;

std::vector<NamedPath> job_inputs(const Job& job) {
    std::vector<NamedPath> inputs;
    if (is_regular(job.file)) inputs.push_back({"the job file", job.file});
    if (!job.run.prompts.empty()) inputs.push_back({"run.prompts", job.run.prompts});
    if (!job.launch.hostfile.empty()) inputs.push_back({"launch.hostfile", job.launch.hostfile});
    // Programs the job names by path (a bare name is looked up on PATH).
    const std::pair<const char*, std::string> programs[] = {{"launch.mpirun", job.launch.mpirun}, {"launch.rsh_agent", job.launch.rsh_agent}};
    for (const auto& [key, program] : programs)
        if (program.find('/') != std::string::npos && is_regular(program)) inputs.push_back({key, program});
    std::vector<NamedPath> ckpt = checkpoint_inputs(job.model.path);
    inputs.insert(inputs.end(), ckpt.begin(), ckpt.end());
    if (!job.model.tokenizer.empty()) {  // a folder (every file of it) or a tokenizer.json
        for (NamedPath& p : checkpoint_inputs(job.model.tokenizer)) inputs.push_back({"model.tokenizer", p.path});
        // A tokenizer.json's folder too, whose tokenizer_config.json and the like it reads beside it.
        if (const fs::path folder = fs::path(job.model.tokenizer).parent_path(); is_regular(job.model.tokenizer) && !folder.empty())
            inputs.push_back({"model.tokenizer's folder", folder.string()});
    }
    if (!job.run.chat_template.empty()) inputs.push_back({"run.chat_template", job.run.chat_template});
    // tpx's own programs (tpx and tpx-worker share a folder): every later run needs them.
    if (const fs::path folder = program_folder(); !folder.empty())
        for (const char* program : {"tpx", "tpx-worker"})
            if (is_regular((folder / program).string())) inputs.push_back({std::string("the ") + program + " program", (folder / program).string()});
    return inputs;
}

std::string job_files_folder(const Job& job) {
    if (is_stream_target(job.run.output)) return job.dir.empty() ? fs::current_path().string() : job.dir;
    return fs::path(job.run.output).parent_path().string();
}

std::string ranks_table_path(const Job& job) {
    return is_stream_target(job.run.output) ? "" : job.run.output + ".ranks.json";
}

std::vector<NamedPath> check_job_outputs(const Job& job, const std::vector<NamedPath>& extra) {
    std::vector<NamedPath> outputs = {{"run.output", job.run.output}};
    if (std::string ranks = ranks_table_path(job); !ranks.empty()) outputs.push_back({"the ranks table (run.output + .ranks.json)", ranks});
    outputs.insert(outputs.end(), extra.begin(), extra.end());
    // Rank 0 writes them: a name for a file of whichever process opens it means one thing here
    // and another there (/dev/stdin: the results went to the rank's own input). Standard output
    // and error reach tpx's own through mpirun.
    for (const NamedPath& out : outputs) {
        const std::string own = process_relative_name(out.path);
        if (!own.empty() && own != "/dev/stdout" && own != "/dev/stderr")
            throw JobError(job.file + ": " + out.role + " (" + out.path + ") names a file of the process that opens it (" + own +
                           "), which is rank 0, not tpx: name a file, a FIFO or /dev/stdout");
    }
    try {
        check_outputs(outputs, job_inputs(job));
    } catch (const JobError& e) {
        throw JobError(job.file + ": " + e.what());
    }
    return outputs;
}

}  // namespace tpx
