// The table of subcommands and the option parsing they share.
#include "launcher/command.h"

#include <filesystem>
#include <iostream>

#include "common/error.h"
#include "common/path.h"

namespace po = boost::program_options;

namespace tpx {

const std::vector<Command>& commands() {
    static const std::vector<Command> table = {
        {"validate", "check a job file and print it with every default filled in", cmd_validate},
        {"example", "print a job file with every key, its default and its meaning", cmd_example},
        {"inspect", "list a checkpoint's tensors (name, dtype, shape, bytes, file) and totals; --check: NaN or Inf in any", cmd_inspect},
        {"convert", "write an HF model folder as one HDF5 file", cmd_convert},
        {"plan", "show the sharding plan: every rank's weights, memory, reads and collectives", cmd_plan},
        {"run", "run the job under mpirun, one tpx-worker per rank", cmd_run},
        {"serve", "serve the job's model over HTTP (OpenAI's API) from its ranks under mpirun", cmd_serve},
        {"refit", "load new weights into a running `tpx serve` in place (POST /v1/admin/refit); prints each rank's table", cmd_refit},
        {"tokenize", "text to token ids and ids to text with a model's tokenizer (JSONL in, JSONL out)", cmd_tokenize},
        {"bench", "time load, prefill and decode of the job's model against their rooflines", cmd_bench},
        {"submit", "submit the job to Slurm (sbatch); prints the job id", cmd_submit},
        {"status", "a Slurm job's state, exit code, elapsed time and nodes", cmd_status},
        {"cancel", "cancel a Slurm job and wait until it has ended", cmd_cancel},
        {"logs", "print a Slurm job's output (--follow: until it ends)", cmd_logs},
    };
    return table;
}

bool parse_command_line(const Args& args, const char* usage, po::options_description& options,
                        const po::positional_options_description& positional, po::variables_map& vm) {
    options.add_options()("help,h", "print this help");
    try {
        po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
        if (vm.count("help")) {
            std::cout << "usage: " << usage << "\n\n" << options << "\n";
            return true;
        }
        po::notify(vm);
    } catch (const po::required_option& e) {
        // "the option '--job' is required" reads as if --job were the way to give it.
        std::string name = e.get_option_name();
        while (!name.empty() && name[0] == '-') name.erase(0, 1);
        for (char& c : name) c = (char)std::toupper((unsigned char)c);
        throw JobError("missing " + name + "\nusage: " + usage);
    } catch (const po::error& e) {
        throw JobError(std::string(e.what()) + "\nusage: " + usage);
    }
    return false;
}

std::string output_file_arg(const std::string& option, const std::string& value) {
    if (value.empty()) throw JobError("--" + option + " needs a file name (it was given \"\")");
    std::error_code ec;
    const std::filesystem::path path = std::filesystem::absolute(value, ec);  // fails where the current folder is gone
    if (ec) throw JobError("--" + option + " " + value + ": cannot make it an absolute path: " + ec.message());
    return absolute_path(path);
}

std::vector<std::string> delay_args(const boost::program_options::variables_map& vm, std::initializer_list<const char*> names) {
    std::vector<std::string> worker_args;
    for (const char* name : names) {
        if (!vm.count(name)) continue;
        const int ms = vm[name].as<int>();
        if (ms < 0) throw JobError(std::string("--") + name + " " + std::to_string(ms) + ": must be >= 0");
        worker_args.insert(worker_args.end(), {std::string("--") + name, std::to_string(ms)});
    }
    return worker_args;
}

}  // namespace tpx
