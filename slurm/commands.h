// Talking to Slurm through its own commands (sbatch, scontrol, scancel): every call's output
// and exit code come back as they are, so a refusal reaches the user in Slurm's words.
#pragma once

#include <string>
#include <vector>

#include "common/subprocess.h"

namespace tpx {

struct SlurmJobState {
    std::string id;
    std::string raw_state;  // Slurm's JobState, e.g. COMPLETED
    std::string state;      // pending | running | completed | failed | cancelled
    std::string exit_code;  // "0:0"
    std::string elapsed;    // RunTime
    std::string nodes;      // NodeList
    std::string stdout_path, stderr_path;
};

// scontrol show job ID; throws Error with scontrol's message for an unknown id.
SlurmJobState query_job(const std::string& id);
// sbatch --parsable SCRIPT; the job id; throws Error with sbatch's message on refusal.
std::string submit_script(const std::string& script);
void cancel_job(const std::string& id);

}  // namespace tpx
