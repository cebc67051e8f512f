// `tpx plan`: the sharding plan of a job, before any GPU is spent.
#include <iostream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/kernel_config.h"
#include "common/host_memory.h"
#include "jobs/outputs.h"
#include "jobs/parse.h"
#include "launcher/command.h"
#include "sharding/fusion.h"
#include "sharding/plan.h"
#include "text/text_tools.h"
#include "sharding/steps.h"
#include "sharding/transform.h"

namespace po = boost::program_options;

namespace tpx {

int cmd_plan(const Args& args) {
    po::options_description options("tpx plan options");
    options.add_options()("job", po::value<std::string>()->required(), "the job file")(
        "world", po::value<int>(), "plan for this many tp ranks (per pipeline stage) instead of parallel.tp")(
        "json", "print the plan as JSON (a `ranks` list with rank, weight_bytes, kv_cache_bytes, read_bytes, collectives)")(
        "detail", "list every weight of every rank with its source slices")(
        "graph", "print the sharded graph as text")(
        "steps", "print the step program the GPU executor runs: each rank's ops after the post-load fusion, fused steps named");
    po::positional_options_description positional;
    positional.add("job", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx plan JOB [--world N] [--json] [--detail] [--graph] [--steps]", options, positional, vm)) return 0;
    const int world = vm.count("world") ? vm["world"].as<int>() : 0;  // 0: parallel.tp
    if (vm.count("world") && world < 1) throw JobError("--world " + std::to_string(world) + ": must be >= 1");
    for (const char* text : {"detail", "graph", "steps"})
        if (vm.count("json") && vm.count(text))
            throw JobError(std::string("--json prints the plan alone; --") + text + " is text: give it without --json");

    Job job = load_job(vm["job"].as<std::string>());
    ShardPlan plan = make_plan(job, world);
    if (vm.count("json")) {
        std::cout << plan.to_json().dump(1) << "\n";
        return 0;
    }
    std::cout << format_plan(plan, vm.count("detail") != 0);
    if (vm.count("graph")) std::cout << "\ngraph (rank-local shapes):\n" << plan.graph.dump();
    if (vm.count("steps")) {
        // The worker's graph: the plan's, cut to each stage, after the post-load fusion (when enabled).
        const KernelConfig& k = job.backend.tuning;
        const bool exchange = plan.tp > 1 && k.oneshot && k.fused_all_reduce;
        std::cout << "\nsteps (batch-1 decode fusions; the all-reduce pushes need the one-shot path, one host with peer access):\n";
        for (const PipelineStage& st : plan.stages) {
            Graph g = Graph::from_json(plan.graph.to_json());
            cut_stage(g, st, plan.config.num_layers);
            if (resolve_transform_options(job).at("fuse_allreduce_residual_rmsnorm").enabled) fuse_allreduce_residual_rmsnorm(g);
            g.cleanup();
            if (plan.pp > 1) std::cout << "stage " << st.stage << ":\n";
            std::cout << plan_steps(g, {k.residual_epilogue, exchange, {}, k.gemv_mma, k.batch_gemm}).describe();
        }
    }
    return 0;
}

// The host memory the ranks on this host need for a decode step (weights, KV cache, staging,
// a step's activations), against what the host has available: a job too large is refused here,
// with the numbers and the keys to change, instead of being killed by the kernel. Ranks on
// other hosts and GPU memory are checked by the ranks themselves before they allocate.
static void check_launch_memory(const Job& job, const ShardPlan& plan) {
    if (job.backend.device != "cpu" || !job.launch.hosts.empty() || !job.launch.hostfile.empty()) return;
    int64_t available = available_host_memory();
    if (available < 0) return;
    std::vector<int> ranks;
    for (int r = 0; r < plan.world(); ++r) ranks.push_back(r);
    try {
        check_memory(plan, ranks, plan.max_batch, plan.max_batch, available, "this host", false);
    } catch (const JobError& e) {
        throw JobError(job.file + ": " + e.what());
    }
}

void require_one_stage(const Job& job, const std::string& command) {
    if (job.parallel.pp > 1)
        throw JobError(job.file + ": parallel.pp = " + std::to_string(job.parallel.pp) + ": " + command +
                       " runs one pipeline stage only (tpx run takes pipeline stages)");
}

ShardPlan check_before_launch(const Job& job, const std::vector<NamedPath>& extra_outputs, bool local) {
    ShardPlan plan = check_plannable(job);
    load_text_tools(job);  // a bad tokenizer or chat template
    check_job_outputs(job, extra_outputs);
    if (local) check_launch_memory(job, plan);
    return plan;
}

ShardPlan check_plannable(const Job& job) {
    try {
        return make_plan(job);
    } catch (const Error& e) {
        std::string why = e.what();
        if (why.rfind(job.file + ": ", 0) == 0) why.erase(0, job.file.size() + 2);  // named once
        throw Error(job.file + ": the job cannot be planned: " + why, e.exit_code());
    }
}

}  // namespace tpx
