// The `tpx` subcommands: each has a name, a one-line summary and a function that takes the
// arguments after its name and returns the exit code (0 ok, 1 runtime failure, 2 bad input).
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "common/output_path.h"
#include "jobs/job.h"
#include "sharding/plan.h"

namespace tpx {

using Args = std::vector<std::string>;

struct Command {
    const char* name;
    const char* summary;
    int (*run)(const Args& args);
};

// Every subcommand, in the order `tpx --help` lists them.
const std::vector<Command>& commands();

// Parses `args` against `options` and positional names; prints usage and returns true when
// --help was asked for. Bad options throw JobError (exit 2) with Boost's message.
bool parse_command_line(const Args& args, const char* usage, boost::program_options::options_description& options,
                        const boost::program_options::positional_options_description& positional,
                        boost::program_options::variables_map& vm);

// The absolute path of an output file named by `option` (checked with the job's other outputs
// by check_job_outputs).
std::string output_file_arg(const std::string& option, const std::string& value);

// The ranks' arguments for the test aids (`--step-delay-ms` and the like) among `names` that `vm`
// holds, as given; a negative one is refused (JobError naming it).
std::vector<std::string> delay_args(const boost::program_options::variables_map& vm, std::initializer_list<const char*> names);

// Plans the job as rank 0 will (checkpoint headers and config.json only, no weights), so that
// `tpx run` and `tpx submit` refuse a job that cannot be sharded before any rank or Slurm
// allocation is spent; the error is the planner's, naming the transform and the tensor.
ShardPlan check_plannable(const Job& job);

// Everything `tpx run`, `tpx validate` and `tpx submit` check before any rank or allocation is
// spent: the plan, the tokenizer and chat template, every output (jobs/outputs.h, with
// `extra_outputs`) and, for a `local` launch on the CPU backend, this host's memory.
ShardPlan check_before_launch(const Job& job, const std::vector<NamedPath>& extra_outputs, bool local);

// JobError unless the job has one pipeline stage: `command` (tpx serve, tpx bench) runs one
// stage only (the ranks refuse more too, but only once mpirun has started them).
void require_one_stage(const Job& job, const std::string& command);

int cmd_validate(const Args& args);
int cmd_example(const Args& args);
int cmd_inspect(const Args& args);
int cmd_convert(const Args& args);
int cmd_plan(const Args& args);
int cmd_run(const Args& args);
// tpx run, and tpx bench through it: the command the launcher's own lines name (the rank map,
// the mpirun command, how the job ended, hosts that did not answer; the ranks' progress lines
// name none), and what the user typed for the benchmark's JSON output.
struct RunAs {
    std::string command = "tpx run";      // "tpx bench"
    std::string bench_flag = "--bench";   // tpx bench: "--json"
};
int run_job(const Args& args, const RunAs& as);
int cmd_serve(const Args& args);
int cmd_refit(const Args& args);
int cmd_bench(const Args& args);
int cmd_tokenize(const Args& args);
int cmd_submit(const Args& args);
int cmd_status(const Args& args);
int cmd_cancel(const Args& args);
int cmd_logs(const Args& args);

}  // namespace tpx
