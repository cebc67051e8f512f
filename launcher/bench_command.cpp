// `tpx bench`: the job's model timed on its ranks (docs/PERF.md has the method).
#include <iostream>

#include "common/error.h"
#include "launcher/command.h"

namespace po = boost::program_options;

namespace tpx {

int cmd_bench(const Args& args) {
    po::options_description options("tpx bench options");
    options.add_options()("job", po::value<std::string>()->required(), "the job file (its [bench] table says what is timed)")(
        "json", po::value<std::string>()->default_value("bench.json"), "where the figures go as JSON")(
        "dry-run", "print the mpirun command instead of running it");
    po::positional_options_description positional;
    positional.add("job", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx bench JOB [--json FILE]", options, positional, vm)) return 0;
    std::string json = output_file_arg("json", vm["json"].as<std::string>());  // checked by run_job, named --json
    Args run_args = {vm["job"].as<std::string>(), "--bench", json};
    if (vm.count("dry-run")) run_args.push_back("--dry-run");
    return run_job(run_args, RunAs{"tpx bench", "--json"});
}

}  // namespace tpx
