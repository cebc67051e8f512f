// `tpx`: the command users type. Dispatches to a subcommand; every error ends here as one
// message on stderr and an exit code (2 for a bad job or usage, 1 for a runtime failure).
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "common/error.h"
#include "common/temporaries.h"
#include "launcher/command.h"

namespace {

void print_usage(std::ostream& os) {
    os << "usage: tpx COMMAND [ARGS...]   (tpx COMMAND --help for its options)\n\ncommands:\n";
    for (const tpx::Command& c : tpx::commands()) {
        std::string name = c.name;
        os << "  " << name << std::string(name.size() < 12 ? 12 - name.size() : 1, ' ') << c.summary << "\n";
    }
}

// What a command printed reached standard output (a full disk, /dev/full, a closed descriptor:
// otherwise `tpx plan --json > plan.json` could leave an empty file and exit 0).
int check_stdout_written(const std::string& who, int rc) {
    errno = 0;
    const bool flushed = std::fflush(stdout) == 0;  // (std::cout writes through stdout: synced with stdio)
    const int err = errno;
    std::cout.flush();
    if (flushed && !std::ferror(stdout) && std::cout) return rc;
    std::cerr << who << ": error: cannot write to standard output: " << (flushed ? "a write failed (a full disk? a closed output?)" : std::strerror(err)) << "\n";
    return rc == tpx::kExitOk ? tpx::kExitRuntime : rc;
}

int run(int argc, char** argv) {
    if (argc < 2) {
        print_usage(std::cerr);
        return tpx::kExitBadInput;
    }
    std::string name = argv[1];
    if (name == "--help" || name == "-h" || name == "help") {
        print_usage(std::cout);
        return tpx::kExitOk;
    }
    if (name == "--version") {
        std::cout << "tpx 0.1.0\n";
        return tpx::kExitOk;
    }
    tpx::Args args(argv + 2, argv + argc);
    try {
        for (const tpx::Command& c : tpx::commands())
            if (name == c.name) return c.run(args);
        std::cerr << "tpx: unknown command '" << name << "'\n";
        print_usage(std::cerr);
        return tpx::kExitBadInput;
    } catch (const tpx::Error& e) {
        std::cerr << "tpx " << name << ": error: " << e.what() << "\n";
        return e.exit_code();
    } catch (const std::exception& e) {
        std::cerr << "tpx " << name << ": internal error: " << e.what() << "\n";
        return tpx::kExitRuntime;
    }
}

}  // namespace

int main(int argc, char** argv) {
    // tpx convert's .h5 file: not left half-written by Ctrl-C (--hf's staging folder is; tpx run
    // and serve handle the signals themselves while mpirun runs).
    tpx::remove_temporaries_on_signals();
    const std::string who = argc > 1 ? std::string("tpx ") + argv[1] : "tpx";
    return check_stdout_written(who, run(argc, argv));
}
