// `tpx plan`: the sharding plan of a job, before any GPU is spent.
#include <iostream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "jobs/parse.h"
#include "launcher/command.h"
#include "sharding/plan.h"

namespace po = boost::program_options;

namespace tpx {

int cmd_plan(const Args& args) {
    po::options_description options("tpx plan options");
    options.add_options()("job", po::value<std::string>()->required(), "the job file")(
        "world", po::value<int>()->default_value(0), "plan for this many ranks instead of parallel.tp")(
        "json", "print the plan as JSON (a `ranks` list with rank, weight_bytes, kv_cache_bytes, read_bytes, collectives)")(
        "detail", "list every weight of every rank with its source slices")(
        "graph", "print the sharded graph as text");
    po::positional_options_description positional;
    positional.add("job", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx plan JOB [--world N] [--json] [--detail] [--graph]", options, positional, vm)) return 0;
    int world = vm["world"].as<int>();
    if (world < 0) throw JobError("--world must be >= 1");

    Job job = load_job(vm["job"].as<std::string>());
    ShardPlan plan = make_plan(job, world);
    if (vm.count("json")) {
        std::cout << plan.to_json().dump(1) << "\n";
        return 0;
    }
    std::cout << format_plan(plan, vm.count("detail") != 0);
    if (vm.count("graph")) std::cout << "\ngraph (rank-local shapes):\n" << plan.graph.dump();
    return 0;
}

ShardPlan check_plannable(const Job& job) {
    try {
        return make_plan(job);
    } catch (const Error& e) {
        throw Error(job.file + ": the job cannot be planned: " + e.what(), e.exit_code());
    }
}

}  // namespace tpx
