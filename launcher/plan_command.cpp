// `tpx plan`: the sharding plan of a job, before any GPU is spent.
#include <iostream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "jobs/parse.h"
#include "launcher/command.h"
#include "sharding/fusion.h"
#include "sharding/plan.h"
#include "sharding/steps.h"
#include "sharding/transform.h"

namespace po = boost::program_options;

namespace tpx {

int cmd_plan(const Args& args) {
    po::options_description options("tpx plan options");
    options.add_options()("job", po::value<std::string>()->required(), "the job file")(
        "world", po::value<int>()->default_value(0), "plan for this many ranks instead of parallel.tp")(
        "json", "print the plan as JSON (a `ranks` list with rank, weight_bytes, kv_cache_bytes, read_bytes, collectives)")(
        "detail", "list every weight of every rank with its source slices")(
        "graph", "print the sharded graph as text")(
        "steps", "print the step program the GPU executor runs: each rank's ops after the post-load fusion, fused steps named");
    po::positional_options_description positional;
    positional.add("job", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx plan JOB [--world N] [--json] [--detail] [--graph] [--steps]", options, positional, vm)) return 0;
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
    if (vm.count("steps")) {
        // The worker's graph: the plan's after the post-load fusion (when enabled).
        if (resolve_transform_options(job).at("fuse_allreduce_residual_rmsnorm").enabled) fuse_allreduce_residual_rmsnorm(plan.graph);
        plan.graph.cleanup();
        const KernelConfig& k = job.backend.tuning;
        const bool exchange = plan.tp > 1 && k.oneshot && k.fused_all_reduce;
        std::cout << "\nsteps (batch-1 decode fusions; the all-reduce pushes need the one-shot path, one host with peer access):\n"
                  << plan_steps(plan.graph, {k.residual_epilogue, exchange}).describe();
    }
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
