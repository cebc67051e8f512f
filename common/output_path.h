// The rule for every file tpx writes (results, ranks table, logits, bench JSON, converted
// checkpoints, sbatch scripts): checked before any work starts, never the same file as an input
// or as another output, never a folder; a FIFO or character device (/dev/stdout) is written in
// place and never replaced. Whatever tpx writes goes through write_file_atomically (common/file.h).
#pragma once

#include <string>
#include <vector>

namespace tpx {

// A path and what it is to the user ("run.output", "--dump-logits", "the job file", ...), so
// that a refusal can name both sides.
struct NamedPath {
    std::string role;
    std::string path;
};

// The standard stream `path` names as written (/dev/stdout: 1, /dev/stderr: 2), else -1. Whatever
// standard output is here (a file, when redirected), a rank reaches it through mpirun's pipe.
int standard_stream(const std::string& path);

// True for an existing FIFO, character device or socket, and for a standard stream whatever it
// is: such a target is written in place (a socket is refused by check_outputs).
bool is_stream_target(const std::string& path);

// Refuses (JobError, exit 2) an output that
//  - is a folder or a socket, or names the same file as an input or as another output (same
//    inode when it exists, the same resolved path otherwise; links are followed; /dev/null may
//    take several);
//  - lies in an input folder (a checkpoint's) under a name the checkpoint's readers take for
//    one of its files (config.json, tokenizer.json, *.safetensors, consolidated.NN.pth, ...);
//  - sits in a folder that does not exist or cannot be written, or whose name is too long: proved
//    by creating and removing the temporary file it will be written through.
// Stream targets pass when they can be opened for writing. Paths are compared resolved, so
// "out.jsonl", "./out.jsonl" and a link to it are one file.
void check_outputs(const std::vector<NamedPath>& outputs, const std::vector<NamedPath>& inputs);

// Every regular file of a checkpoint (an HF folder's files, or the single file), and its folder,
// as inputs no output may replace (or join, for the folder: check_outputs).
std::vector<NamedPath> checkpoint_inputs(const std::string& model_path);

}  // namespace tpx
