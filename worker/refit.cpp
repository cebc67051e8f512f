// The refit on one rank: open and check, agree, read in place, agree, report. Both agreements are
// one all_gather of a fixed-size message per rank, so every rank reaches the same verdict.
#include "worker/refit.h"

#include <chrono>
#include <cstring>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/log.h"

namespace tpx {
namespace {

using Clock = std::chrono::steady_clock;

// 3, 1e-05, 500000: as config.json writes them.
std::string number(double v) {
    std::ostringstream os;
    os << v;
    return os.str();
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Every rank's error ("" = fine); returns the lowest failing rank's, or "".
std::string agree(MpiCommunicator& comm, const std::string& error) {
    constexpr size_t kBytes = 1024;
    char mine[kBytes] = {};
    std::snprintf(mine, kBytes, "%s", error.c_str());
    std::vector<char> all(kBytes * (size_t)comm.world());
    comm.all_gather_bytes(mine, kBytes, all.data());
    for (int r = 0; r < comm.world(); ++r)
        if (all[(size_t)r * kBytes] != 0) return std::string(&all[(size_t)r * kBytes], strnlen(&all[(size_t)r * kBytes], kBytes));
    return "";
}


// The config.json fields that set the graph's shapes and numerics; a refit keeps the plan's.
std::string config_mismatch(const ModelConfig& want, const ModelConfig& got) {
    if (got.architecture != want.architecture)
        return "config.json: architecture " + got.architecture + ", but the server runs " + want.architecture;
    const std::pair<const char*, std::pair<double, double>> fields[] = {
        {"vocab_size", {(double)want.vocab_size, (double)got.vocab_size}},
        {"hidden_size", {(double)want.hidden_size, (double)got.hidden_size}},
        {"intermediate_size", {(double)want.intermediate_size, (double)got.intermediate_size}},
        {"num_hidden_layers", {(double)want.num_layers, (double)got.num_layers}},
        {"num_attention_heads", {(double)want.num_heads, (double)got.num_heads}},
        {"num_key_value_heads", {(double)want.num_kv_heads, (double)got.num_kv_heads}},
        {"head_dim", {(double)want.head_dim, (double)got.head_dim}},
        {"rms_norm_eps", {want.rms_norm_eps, got.rms_norm_eps}},
        {"rope_theta", {want.rope.theta, got.rope.theta}},
        {"tie_word_embeddings", {(double)want.tie_word_embeddings, (double)got.tie_word_embeddings}},
        {"sliding_window", {(double)want.sliding_window, (double)got.sliding_window}},
        {"num_local_experts", {(double)want.num_experts, (double)got.num_experts}},
        {"num_experts_per_tok", {(double)want.experts_per_token, (double)got.experts_per_token}},
    };
    for (const auto& [name, v] : fields)
        if (v.first != v.second)
            return "config.json: " + std::string(name) + " = " + number(v.second) + ", but the server's plan has " + number(v.first);
    if (got.rope.type != want.rope.type) return "config.json: rope type " + got.rope.type + ", but the server's plan has " + want.rope.type;
    return "";
}

}  // namespace

std::string refit_mismatch(const Checkpoint& ckpt, const RefitReference& ref, int rank) {
    if (!ckpt.config_json().empty()) {
        ModelConfig got = parse_model_config(ckpt.config_json(), ckpt.path() + " (config.json)");
        if (std::string m = config_mismatch(*ref.config, got); !m.empty()) return ckpt.path() + ": " + m;
    }
    for (Node* n : ref.graph->nodes()) {
        if (!n->param) continue;
        for (const Piece& p : n->param->by_rank.at(rank)) {
            if (p.tensor.empty()) continue;
            const TensorInfo& want = ref.checkpoint->tensor(p.tensor);
            const TensorInfo* got = ckpt.find(p.tensor);
            if (!got) return ckpt.path() + ": has no tensor " + p.tensor + " (the server's " + n->name + " reads it)";
            if (got->shape != want.shape)
                return ckpt.path() + ": tensor " + p.tensor + " has shape " + shape_string(got->shape) + ", but the server's plan reads it as " +
                       shape_string(want.shape) + " (from " + ref.checkpoint->path() + ")";
            if (got->dtype != want.dtype)
                return ckpt.path() + ": tensor " + p.tensor + " is " + dtype_name(got->dtype) + ", but the server's plan reads it as " +
                       dtype_name(want.dtype) + " (from " + ref.checkpoint->path() + ")";
        }
    }
    return "";
}

RefitOutcome refit_weights(Executor& exec, MpiCommunicator& comm, const RefitReference& ref, const std::string& path) {
    const int rank = comm.rank();
    RefitOutcome out;
    RankRefit mine;
    mine.rank = rank;
    std::snprintf(mine.host, sizeof(mine.host), "%s", identity().host.c_str());

    // 1. Open and check: nothing is written yet.
    auto t0 = Clock::now();
    std::unique_ptr<Checkpoint> ckpt;
    std::string error;
    try {
        ckpt = Checkpoint::open(path, ref.read_threads);
        error = exec.refit_limit();
        if (error.empty()) error = refit_mismatch(*ckpt, ref, rank);
    } catch (const std::exception& e) {
        error = e.what();
    }
    if (!error.empty()) error = where() + ": " + error;
    mine.check_s = seconds_since(t0);
    if (std::string first = agree(comm, error); !first.empty()) {
        out.status = 400;
        out.error = "refit refused, the weights are unchanged: " + first;
        return out;
    }

    // 2. Every rank accepted it: from here on a failure is fatal.
    if (ref.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ref.delay_ms));
    auto t1 = Clock::now();
    try {
        exec.reload_weights(*ckpt, rank);
        exec.clear_kv_cache();
    } catch (const std::exception& e) {
        error = where() + ": " + e.what();
    }
    mine.read_s = seconds_since(t1);
    mine.bytes = (double)ckpt->stats().data_bytes;
    if (std::string first = agree(comm, error); !first.empty()) {
        out.status = 500;
        out.fatal = true;
        out.error = "refit failed while the weights were being replaced (the server stops rather than answer with a mix of old and "
                    "new weights): " + first;
        return out;
    }
    out.ranks.resize((size_t)comm.world());
    comm.all_gather_bytes(&mine, sizeof(mine), out.ranks.data());
    return out;
}

}  // namespace tpx
