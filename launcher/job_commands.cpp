// `tpx validate` and `tpx example`: the job file's checks, before anything starts.
#include <iostream>

#include "jobs/emit.h"
#include "jobs/parse.h"
#include "launcher/command.h"
#include "sharding/transform.h"

namespace po = boost::program_options;

namespace tpx {

int cmd_validate(const Args& args) {
    po::options_description options("tpx validate options");
    options.add_options()("job", po::value<std::string>()->required(), "the job file (TOML); /dev/stdin reads a pipe");
    po::positional_options_description positional;
    positional.add("job", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx validate JOB", options, positional, vm)) return 0;

    Job job = load_job(vm["job"].as<std::string>());
    resolve_transform_options(job);  // unknown transforms and options are job errors too
    check_before_launch(job, {}, /*local=*/true);  // the plan, tokenizer, outputs and memory, as tpx run checks them
    std::cout << emit_job_toml(job, Secrets::kWithheld);
    std::cerr << job.file << ": valid job '" << job.name << "' (" << job.world() << " ranks)\n";
    return 0;
}

int cmd_example(const Args& args) {
    po::options_description options("tpx example options");
    po::variables_map vm;
    if (parse_command_line(args, "tpx example", options, {}, vm)) return 0;
    std::cout << example_job_toml();
    return 0;
}

}  // namespace tpx
