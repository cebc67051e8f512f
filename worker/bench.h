// `tpx bench`: what a job's model costs on its ranks, as the job's [bench] table asks (by default
// time to first token for prompts of 128 and 2048 tokens, and decode ms/token at batch 1, 8 and 64,
// the median over 100 steps after 10 of warm-up), each decode step timed on the host to its ids'
// arrival, and with CUDA events from the step's first node on the GPU to the same point (the
// difference is the host's turn); each figure as a fraction of its roofline: decode = (weight bytes
// + KV bytes read) / measured copy bandwidth; prefill = FLOPs / measured bf16 matrix rate, and
// beside it (weight bytes + the prompt's KV bytes) / copy bandwidth, the bound of short prompts.
// Without device rates (the CPU backend) there are no floors, and the JSON has no floor keys.
// Collective; rank 0 prints a table and writes JSON (whole or not at all).
#pragma once

#include <string>
#include <vector>

#include "jobs/job.h"
#include "sharding/plan.h"
#include "worker/comm.h"
#include "worker/executor.h"

namespace tpx {

struct DeviceRates {
    double copy_bytes_per_s = 0;   // read + write bytes per second of a device-to-device copy
    // bf16 GEMM 8192^3 (FLOP/s). On random matrices: 5 products after 1 (a burst, before the
    // power limit bites) and 50 after 100 (clocks settled). The prefill floor's rate is the
    // higher of the two, so that the floor is never below what the GPU showed it can do.
    double matmul_flops_per_s = 0;
    double matmul_random_burst_flops_per_s = 0, matmul_random_settled_flops_per_s = 0;
    double matmul_constant_flops_per_s = 0; // on constant matrices (less power, less throttling), for comparison
};

struct BenchSettings {
    BenchSection what;  // the job's [bench]: the sizes timed
    std::string json_path;
    double fifo_wait_s = 0;  // json_path a FIFO: its reader waited for this long (0: as long as it takes)
    // This rank's load, reported beside the timings: seconds (all of it, and the weights' read
    // and upload alone), bytes read and bytes planned.
    double load_seconds = 0, weights_seconds = 0, read_bytes = 0, planned_read_bytes = 0;
    // The rank's graph, as the executor runs it (the plan's own was moved out to build it): its
    // MoE layers' expert weights set the decode roofline.
    const Graph* graph = nullptr;
    // The rank's weights as the executor holds them (quantized linears packed), which a decode
    // step reads; 0: the plan's weight bytes.
    double weight_bytes = 0;
};

void run_bench(Executor& exec, Communicator& comm, const ShardPlan& plan, const DeviceRates& rates, const BenchSettings& s);

}  // namespace tpx
