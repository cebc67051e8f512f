// The sbatch script of a job: a pure function of the job and a few paths (submitit's
// _make_sbatch_string is the model), checked by golden files. Every value is written in double
// quotes with \ before $ ` " and \, which sbatch's #SBATCH parser and bash both read back
// literally, so a job name or path with spaces, quotes, $(...) or ; stays as it is.
#pragma once

#include <string>

#include "jobs/job.h"

namespace tpx {

struct SubmitPaths {
    std::string worker;   // tpx-worker, absolute
    std::string dir;      // where the script writes the job the ranks read (NAME-JOBID.tpx.toml) and Slurm the
                          // job's stdout and stderr: the output's folder, absolute
};

// job_toml: the resolved job, carried in the script itself (Slurm keeps a copy of the script
// from submission), which writes it to `dir` when the job starts: editing the job file, or
// submitting it again, does not change a job already queued.
std::string sbatch_script(const Job& job, const SubmitPaths& paths, const std::string& job_toml, bool as_root);

// "value" with \ before $ ` " and \; throws JobError for a value with a newline, which no
// #SBATCH line can hold.
std::string slurm_quote(const std::string& value, const std::string& what);

// Where `tpx submit` writes the script: in job_files_folder (jobs/outputs.h).
std::string script_path(const Job& job);

}  // namespace tpx
