// A job printed back as TOML with every default filled in: what `tpx validate` shows, and the
// copy the ranks read of a piped or submitted job. Parsing the output again gives the same job
// (checked by a test); a withheld key is printed as a key the parser refuses.
#pragma once

#include <string>

#include "jobs/job.h"

namespace tpx {

// Whether a printed job shows its secrets (carries_secret: [serve] api_key): written in the ranks'
// copies (Access::kOwnerOnly files), withheld by `tpx validate` (`api_key_withheld`, its length).
enum class Secrets { kWritten, kWithheld };

std::string emit_job_toml(const Job& job, Secrets secrets);

// The fully commented example job (jobs/example.toml.in, with the shipped tiny model's path).
const std::string& example_job_toml();

}  // namespace tpx
