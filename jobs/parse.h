// Reading a job file: TOML++ parse, then every key checked against the schema, defaults
// filled, relative paths resolved and cross-field rules validated. Any problem throws
// JobError whose message starts with "FILE:LINE:COL:" and names the key.
#pragma once

#include <string>

#include "jobs/job.h"

namespace tpx {

// Reads and validates the job file at `path`. Relative paths in the job resolve against the
// file's folder; for a file that is not a regular file (a pipe, /dev/stdin) they resolve
// against the current directory.
Job load_job(const std::string& path);

// Whether a job file is a stream read once (a pipe, a device, /dev/stdin even when a file is
// redirected into it): its relative paths resolve against the current folder, and the ranks get
// a resolved copy rather than the path.
bool job_file_is_stream(const std::string& path);

// A job name reduced to letters (any script), digits, '-', '_' and '.', for the files named
// after it; a name that had to change ends in a hash of it, so that distinct names never share files.
std::string file_safe(const std::string& name);

// The same from text already in memory; `file` names it in messages, `base_dir` is where
// relative paths resolve.
Job parse_job(const std::string& text, const std::string& file, const std::string& base_dir);

}  // namespace tpx
