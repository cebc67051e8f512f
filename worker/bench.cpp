// The benchmark loop and its report.
#include "worker/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file.h"
#include "sharding/analysis.h"

namespace tpx {
namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

TokenBatch prompt_batch(int64_t batch, int64_t length, int64_t vocab, std::mt19937& rng) {
    TokenBatch b;
    std::uniform_int_distribution<int32_t> tok(0, (int32_t)vocab - 1);
    for (int64_t s = 0; s < batch; ++s) {
        for (int64_t t = 0; t < length; ++t) {
            b.ids.push_back(tok(rng));
            b.positions.push_back((int32_t)t);
            b.slots.push_back((int32_t)s);
        }
        b.logit_rows.push_back((int64_t)b.ids.size() - 1);
    }
    return b;
}

// ms of one forward, to completion (forward_argmax synchronizes).
double timed(Executor& exec, const TokenBatch& b) {
    auto t0 = Clock::now();
    exec.forward_argmax(b);
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// A MoE model's expert weights on one rank, and the share of them that a decode step of `batch`
// tokens must read: the experts some token chose. Each token choosing top_k of the experts
// uniformly, an expert is left out by all of them with probability (1 - top_k / experts)^batch;
// at batch 1 exactly top_k / experts. (Trained routers are not uniform: real batches may read fewer.)
struct ExpertWeights {
    double bytes = 0;
    double top_k = 0, experts = 0;
    double read_share(int64_t batch) const {
        return bytes > 0 ? 1.0 - std::pow(1.0 - top_k / experts, (double)batch) : 0.0;
    }
};

ExpertWeights expert_weights(const Graph& g) {
    ExpertWeights w;
    for (const Node* n : g.nodes()) {
        if (n->kind != Op::kMoe) continue;
        for (size_t k = 2; k < n->inputs.size(); ++k) w.bytes += (double)(shape_numel(n->inputs[k]->shape) * dtype_bytes(n->inputs[k]->dtype));
        w.top_k = (double)n->attr_int("top_k"), w.experts = (double)n->attr_int("experts");
    }
    return w;
}

// Rank 0's table: the measured times beside their floors.
void print_report(const nlohmann::json& report, const ShardPlan& plan, const DeviceRates& rates, const ExpertWeights& experts,
                  const BenchSettings& s) {
    const ModelConfig& c = plan.config;
    const double weight_bytes = report["weight_bytes_per_rank"].get<double>();
    const double load_s = report["load_s"].get<double>(), read_ratio = report["read_over_planned"].get<double>();
    const nlohmann::json &prefill = report["prefill"], &decode = report["decode"];
    std::printf("\nbench: %s, tp=%d ep=%d, %.2f GB of weights per rank; ", c.architecture.c_str(), plan.tp, plan.ep, weight_bytes / 1e9);
    if (experts.bytes > 0)
        std::printf("%.2f GB of them experts, of which a decode step's roofline counts those its tokens choose (top %.0f of %.0f, "
                    "uniformly: %.0f%% at batch 1); ",
                    experts.bytes / 1e9, experts.top_k, experts.experts, 100 * experts.read_share(1));
    if (rates.copy_bytes_per_s > 0)
        std::printf("measured copy %.0f GB/s, bf16 GEMM on random matrices %.0f TFLOP/s in a burst, %.0f settled (the floor's: %.0f); "
                    "%.0f on constant ones\n",
                    rates.copy_bytes_per_s / 1e9, rates.matmul_random_burst_flops_per_s / 1e12,
                    rates.matmul_random_settled_flops_per_s / 1e12, rates.matmul_flops_per_s / 1e12, rates.matmul_constant_flops_per_s / 1e12);
    else
        std::printf("no device rates on this backend, so no floors\n");
    std::printf("load: %.2f s (slowest rank); on rank 0 the weights' read and upload %.2f s, %.1f GB/s; bytes read / planned %.4f (largest)\n",
                load_s, s.weights_seconds, report["load_GBps_per_rank"].get<double>(), read_ratio);
    if (rates.copy_bytes_per_s > 0) std::printf("%-28s %12s %14s %10s\n", "", "measured", "floor", "ratio");
    for (const auto& p : prefill) {
        std::printf("prefill %5lld tokens (TTFT)  %9.2f ms", (long long)p["prompt_tokens"].get<int64_t>(), p["ms"].get<double>());
        if (p.contains("flop_floor_ms"))
            std::printf(" %11.2f ms %9.2fx; reading the weights: %.2f ms, %.2fx", p["flop_floor_ms"].get<double>(), p["ratio_to_floor"].get<double>(),
                        p["read_floor_ms"].get<double>(), p["ratio_to_read_floor"].get<double>());
        std::printf("\n");
    }
    for (const auto& d : decode) {
        std::printf("decode batch %3lld              %9.3f ms", (long long)d["batch"].get<int64_t>(), d["ms_per_step"].get<double>());
        if (d.contains("roofline_ms"))
            std::printf(" %11.3f ms %8.0f%% of roofline", d["roofline_ms"].get<double>(), 100 * d["fraction_of_roofline"].get<double>());
        std::printf(", %.0f tokens/s", d["tokens_per_s"].get<double>());
        if (d["device_ms_per_step"].get<double>() > 0) std::printf("; %.3f ms of it on the GPU", d["device_ms_per_step"].get<double>());
        std::printf("\n");
    }
    std::fflush(stdout);
}

}  // namespace

void run_bench(Executor& exec, Communicator& comm, const ShardPlan& plan, const DeviceRates& rates, const BenchSettings& s) {
    const ModelConfig& c = plan.config;
    std::mt19937 rng(1234);
    const int rank = comm.rank();
    const double weight_bytes = s.weight_bytes > 0 ? s.weight_bytes : (double)plan.ranks.at(rank).weight_bytes;
    const ExpertWeights experts = expert_weights(s.graph ? *s.graph : plan.graph);
    // K and V of every layer for one cached position of one sequence, on this rank.
    const double kv_bytes_per_position = (double)plan.ranks.at(rank).kv_cache_bytes / (double)(plan.max_batch * plan.max_seq_len);
    nlohmann::json report = {{"model", c.architecture}, {"tp", plan.tp}, {"ep", plan.ep}, {"weight_bytes_per_rank", weight_bytes},
                             {"copy_GBps", rates.copy_bytes_per_s / 1e9}, {"matmul_TFLOPs", rates.matmul_flops_per_s / 1e12},
                             {"matmul_TFLOPs_random_burst", rates.matmul_random_burst_flops_per_s / 1e12},
                             {"matmul_TFLOPs_random_settled", rates.matmul_random_settled_flops_per_s / 1e12},
                             {"matmul_TFLOPs_constant_data", rates.matmul_constant_flops_per_s / 1e12}};
    report.update({{"decode_prompt_length", s.what.decode_prompt_length}, {"decode_warmup", s.what.decode_warmup},
                   {"decode_steps", s.what.decode_steps}});
    nlohmann::json prefill = nlohmann::json::array(), decode = nlohmann::json::array();

    for (int64_t len : s.what.prompt_lengths) {
        if (len > plan.max_seq_len) {
            if (rank == 0) std::printf("bench: prefill of %lld tokens skipped: max_seq_len is %lld\n", (long long)len, (long long)plan.max_seq_len);
            continue;
        }
        TokenBatch b = prompt_batch(1, len, c.vocab_size, rng);
        timed(exec, b);  // warm-up
        exec.reset_profile();
        std::vector<double> t;
        for (int i = 0; i < 5; ++i) t.push_back(timed(exec, b));
        double ms = median(t);
        if (rank == 0 && !exec.profile().empty()) std::printf("prefill %lld tokens, %s", (long long)len, exec.profile().c_str());
        // FLOPs of one rank: its GEMMs for every token but the LM head for the last token only (the
        // logits asked for), and causal attention (len^2 / 2 positions).
        double flops = (plan.costs.flops_per_token - plan.costs.head_flops_per_token) * len + plan.costs.head_flops_per_token +
                       plan.costs.attention_flops_per_token_per_position * len * (len + 1) / 2.0;
        // The floor is the (FLOPs over the matrix rate); beside it, reading the weights
        // once and writing the prompt's K and V, which bounds the short prompts instead.
        nlohmann::json row = {{"prompt_tokens", len}, {"ms", ms}, {"flops", flops}};
        if (rates.matmul_flops_per_s > 0 && rates.copy_bytes_per_s > 0) {
            const double floor_ms = flops / rates.matmul_flops_per_s * 1e3;
            const double read_ms = (weight_bytes + kv_bytes_per_position * (double)len) / rates.copy_bytes_per_s * 1e3;
            row.update({{"flop_floor_ms", floor_ms}, {"ratio_to_floor", ms / floor_ms}, {"read_floor_ms", read_ms}, {"ratio_to_read_floor", ms / read_ms}});
        }
        prefill.push_back(row);
    }
    for (int64_t batch : s.what.batch_sizes) {
        if (batch > plan.max_batch) {
            if (rank == 0) std::printf("bench: decode at batch %lld skipped: max_batch is %lld\n", (long long)batch, (long long)plan.max_batch);
            continue;
        }
        if (decode_positions(s.what) > plan.max_seq_len)  // the launcher refuses such a job first
            throw Error("bench: decode needs run.max_seq_len >= " + std::to_string(decode_positions(s.what)), kExitBadInput);
        TokenBatch b = prompt_batch(batch, s.what.decode_prompt_length, c.vocab_size, rng);
        exec.forward_argmax(b);
        exec.reset_profile();
        std::vector<double> t, on_device;
        double context = 0;
        for (int step = 0; step < s.what.decode_warmup + s.what.decode_steps; ++step) {
            TokenBatch d;
            for (int64_t q = 0; q < batch; ++q) {
                d.ids.push_back(1);
                d.positions.push_back((int32_t)(s.what.decode_prompt_length + step));
                d.slots.push_back((int32_t)q);
                d.logit_rows.push_back(q);
            }
            double ms = timed(exec, d);
            if (step >= s.what.decode_warmup) t.push_back(ms), on_device.push_back(exec.last_device_ms()), context += s.what.decode_prompt_length + step + 1;
        }
        double ms = median(t), device_ms = median(on_device);
        double kv_read = kv_bytes_per_position * batch * (context / s.what.decode_steps);
        // The weights a step must read: all but the experts no token chose.
        const double weights_read = weight_bytes - experts.bytes * (1.0 - experts.read_share(batch));
        if (rank == 0 && !exec.profile().empty()) std::printf("decode batch %lld, %s", (long long)batch, exec.profile().c_str());
        nlohmann::json row = {{"batch", batch}, {"ms_per_step", ms}, {"tokens_per_s", batch * 1e3 / ms}, {"device_ms_per_step", device_ms}};
        if (rates.copy_bytes_per_s > 0) {
            const double floor_ms = (weights_read + kv_read) / rates.copy_bytes_per_s * 1e3;
            row.update({{"roofline_ms", floor_ms}, {"fraction_of_roofline", floor_ms / ms}, {"roofline_weight_bytes", weights_read}});
        }
        decode.push_back(row);
    }
    report["prefill"] = prefill;
    report["decode"] = decode;
    // The slowest rank's load, and the largest ratio of bytes read to bytes planned.
    float mine[2] = {(float)s.load_seconds, (float)(s.planned_read_bytes > 0 ? s.read_bytes / s.planned_read_bytes : 0.0)};
    std::vector<float> all(2 * comm.world());
    comm.all_gather(mine, 2, all.data());
    double load_s = 0, read_ratio = 0;
    for (int r = 0; r < comm.world(); ++r) load_s = std::max(load_s, (double)all[2 * r]), read_ratio = std::max(read_ratio, (double)all[2 * r + 1]);
    report["load_s"] = load_s;
    report["read_over_planned"] = read_ratio;
    report["load_weights_s"] = s.weights_seconds;  // rank 0's
    report["load_GBps_per_rank"] = s.weights_seconds > 0 ? s.read_bytes / s.weights_seconds / 1e9 : 0.0;
    if (rank != 0) return;
    print_report(report, plan, rates, experts, s);
    const std::string tuned = exec.tuner_summary();
    if (!tuned.empty()) std::printf("bench: the GEMM tuner's choices (rank 0):\n%s", tuned.c_str());
    if (!s.json_path.empty()) write_file_atomically(s.json_path, report.dump(1) + "\n", s.fifo_wait_s);
}

}  // namespace tpx
