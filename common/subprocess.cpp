// Running a command and reading its answer: stdout and stderr through temporary files (no pipe
// to fill up), the exit code as the shell reports it.
#include "common/subprocess.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace tpx {

CommandResult run_command(const std::vector<std::string>& argv) {
    char out_tmpl[] = "/tmp/tpx-cmd-out-XXXXXX", err_tmpl[] = "/tmp/tpx-cmd-err-XXXXXX";
    int out_fd = mkstemp(out_tmpl), err_fd = mkstemp(err_tmpl);
    if (out_fd < 0 || err_fd < 0) throw Error(std::string("cannot create a temp file: ") + std::strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out_fd, 1);
        dup2(err_fd, 2);
        std::vector<char*> args;
        for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        execvp(args[0], args.data());
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    auto slurp = [](const char* path) {
        std::ifstream in(path);
        std::stringstream ss;
        ss << in.rdbuf();
        std::remove(path);
        return ss.str();
    };
    close(out_fd);
    close(err_fd);
    CommandResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = slurp(out_tmpl);
    r.err = slurp(err_tmpl);
    if (r.exit_code == 127 && r.err.empty()) r.err = argv[0] + ": command not found (is it installed and on PATH?)";
    return r;
}

}  // namespace tpx
