// A job printed back as TOML with every default filled in: what `tpx validate` shows and what
// a rank logs. Parsing the output again gives the same job (checked by a test).
#pragma once

#include <string>

#include "jobs/job.h"

namespace tpx {

std::string emit_job_toml(const Job& job);

// The fully commented example job (jobs/example.toml.in, with the shipped tiny model's path).
const std::string& example_job_toml();

}  // namespace tpx
