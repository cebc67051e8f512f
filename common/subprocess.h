// Running a command (no shell) and taking its output and exit code back as they are, so that a
// refusal reaches the user in the command's own words.
#pragma once

#include <string>
#include <vector>

namespace tpx {

struct CommandResult {
    int exit_code = 0;   // 127: the command was not found; 128 + N: killed by signal N
    std::string out, err;
};

CommandResult run_command(const std::vector<std::string>& argv);

}  // namespace tpx
