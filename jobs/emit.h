// A job printed back as TOML with every default filled in: what `tpx validate` shows and what
// the ranks read. Parsing the output again gives the same job (checked by a test), but for a
// withheld key.
#pragma once

#include <string>

#include "jobs/job.h"

namespace tpx {

// Whether a printed job shows its secrets ([serve] api_key): written where the ranks read the job
// (their copies: Access::kOwnerOnly files), withheld where a person reads it (`tpx validate`: a
// comment says a key is set and how long it is).
enum class Secrets { kWritten, kWithheld };

std::string emit_job_toml(const Job& job, Secrets secrets = Secrets::kWritten);

// The fully commented example job (jobs/example.toml.in, with the shipped tiny model's path).
const std::string& example_job_toml();

}  // namespace tpx
