// The files a job reads and the files a run of it writes, checked together before any rank
// starts (the launcher) and again by rank 0 before it loads (a Slurm job's node may see other
// folders): see common/output_path.h for the rule.
#pragma once

#include <vector>

#include "common/output_path.h"
#include "jobs/job.h"

namespace tpx {

// The job file (when it is a regular file), run.prompts, launch.hostfile, launch.mpirun and
// launch.rsh_agent where given as paths, every file of the
// checkpoint and of model.tokenizer, run.chat_template, and the tpx and tpx-worker programs.
std::vector<NamedPath> job_inputs(const Job& job);

// run.output, its ranks table (run.output + ".ranks.json"; none for a FIFO or device) and
// `extra` (--dump-logits, --bench), checked against job_inputs and each other; JobError (exit 2)
// naming the job file and both paths otherwise. Returns the outputs.
std::vector<NamedPath> check_job_outputs(const Job& job, const std::vector<NamedPath>& extra);

// Where the files a launch makes for the job go (tpx submit's script, its Slurm logs and the
// job's resolved copy; a piped job's copy for the ranks of several nodes): run.output's folder,
// or the job file's when run.output is a FIFO or device.
std::string job_files_folder(const Job& job);

// Where the ranks table goes, or "" when run.output is a FIFO or device.
std::string ranks_table_path(const Job& job);

}  // namespace tpx
