// The files a job names, checked before anything starts (jobs/parse.cpp, as the job is read).
#pragma once

#include <functional>
#include <utility>

#include "jobs/job.h"

namespace tpx {

// A key's line and column in the job file ({0, 0} when the key is not there).
using KeyPosition = std::function<std::pair<long, long>(const char* section, const char* key)>;

// JobError naming the key's position unless model.path is an HF or Meta model folder or an .h5
// file; run.prompts, run.chat_template and launch.hostfile regular files (the hostfile's hosts
// enough for the job); model.tokenizer there; run.output's folder there.
void check_job_files(const Job& job, const KeyPosition& where);

}  // namespace tpx
