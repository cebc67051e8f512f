// The generation loop and its outputs.
#include "worker/generation.h"

#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file.h"

namespace tpx {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

bool all_finite(const float* row, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(row[i])) return false;
    return true;
}

// Logits holding NaN or Inf (a NaN weight, an overflow) would be sampled or argmax'd into
// garbage tokens and an exit status of 0; rank 0, which chooses, ends the run instead. `step`
// 0 is the prefill, N the N-th decode step.
void check_finite(const std::vector<std::string>& bad_prompts, int64_t step, const std::string& model_path) {
    if (bad_prompts.empty()) return;
    std::string ids;
    for (const std::string& id : bad_prompts) ids += (ids.empty() ? "" : ", ") + id;
    throw Error(std::string(bad_prompts.size() == 1 ? "prompt " : "prompts ") + ids + ": the logits at " +
                (step == 0 ? std::string("prefill") : "decode step " + std::to_string(step)) +
                " hold NaN or Inf, so no token can be chosen; `tpx inspect --check " + model_path +
                "` finds non-finite weights in the checkpoint");
}

}  // namespace

std::vector<SequenceResult> generate(Executor& exec, Communicator& comm, const std::vector<Prompt>& prompts,
                                     const GenerationSettings& s) {
    const int64_t vocab = exec.vocab();
    std::mt19937_64 rng(s.seed);
    // Greedy without logits to keep: the backend picks the tokens itself (on the GPU, only the
    // ids come back), and every rank has the same ids; rank 0's are still the ones broadcast.
    const bool device_argmax = s.sampling.temperature <= 0 && !s.keep_logits;
    std::vector<int32_t> argmax_ids;
    std::vector<SequenceResult> results(prompts.size());
    for (size_t first = 0; first < prompts.size(); first += (size_t)s.max_batch) {
        size_t count = std::min<size_t>((size_t)s.max_batch, prompts.size() - first);
        // Prefill: every prompt token of the batch in one forward.
        TokenBatch batch;
        std::vector<int64_t> last_row(count);
        for (size_t b = 0; b < count; ++b) {
            const Prompt& p = prompts[first + b];
            results[first + b].prompt = p;
            for (size_t t = 0; t < p.tokens.size(); ++t) {
                if (s.keep_logits) batch.logit_rows.push_back((int64_t)batch.ids.size());
                batch.ids.push_back(p.tokens[t]);
                batch.positions.push_back((int32_t)t);
                batch.slots.push_back((int32_t)b);
            }
            last_row[b] = (int64_t)batch.ids.size() - 1;
            if (!s.keep_logits) batch.logit_rows.push_back(last_row[b]);
        }
        auto t0 = Clock::now();
        std::vector<float> logits;
        if (device_argmax) argmax_ids = exec.forward_argmax(batch);
        else logits = exec.forward(batch);
        double prefill_ms = ms_since(t0);
        std::vector<const float*> next_logits(count, nullptr);
        std::vector<int32_t> next_ids(count, 0);
        std::vector<std::string> non_finite;  // prompt ids whose next token cannot be chosen
        for (size_t b = 0; b < count; ++b) {
            int64_t row = s.keep_logits ? last_row[b] : (int64_t)b;
            if (device_argmax) next_ids[b] = argmax_ids[row];
            else next_logits[b] = &logits[row * vocab];
            if (comm.rank() == 0 && (device_argmax ? next_ids[b] < 0 : !all_finite(next_logits[b], vocab)))
                non_finite.push_back(prompts[first + b].id);
            SequenceResult& r = results[first + b];
            r.time_to_first_token_ms = prefill_ms;
            if (s.keep_logits) {
                int64_t start = last_row[b] + 1 - (int64_t)r.prompt.tokens.size();
                r.prompt_logits.assign(logits.begin() + start * vocab, logits.begin() + (last_row[b] + 1) * vocab);
            }
        }
        check_finite(non_finite, 0, s.model_path);
        // Decode: one token per unfinished sequence per step.
        std::vector<int32_t> active(count, s.max_new_tokens > 0 ? 1 : 0);
        for (size_t b = 0; b < count; ++b)
            if (!active[b]) results[first + b].finish_reason = "length";
        auto decode_start = Clock::now();
        for (int64_t step = 0; step < s.max_new_tokens; ++step) {
            // Rank 0 chooses; every rank gets the same tokens and the same finished flags.
            std::vector<int32_t> chosen(2 * count, 0);
            if (comm.rank() == 0)
                for (size_t b = 0; b < count; ++b) {
                    if (!active[b]) continue;
                    chosen[b] = device_argmax ? next_ids[b] : (int32_t)cpu::sample(next_logits[b], vocab, s.sampling, rng);
                }
            comm.broadcast(chosen.data(), count * sizeof(int32_t), 0);
            TokenBatch next;
            for (size_t b = 0; b < count; ++b) {
                if (!active[b]) continue;
                SequenceResult& r = results[first + b];
                if (s.keep_logits) r.step_logits.insert(r.step_logits.end(), next_logits[b], next_logits[b] + vocab);
                r.output.push_back(chosen[b]);
                bool eos = std::find(s.eos.begin(), s.eos.end(), (int64_t)chosen[b]) != s.eos.end();
                if (eos || (int64_t)r.output.size() >= s.max_new_tokens) {
                    r.finish_reason = eos ? "stop" : "length";
                    active[b] = 0;
                    continue;
                }
                next.ids.push_back(chosen[b]);
                next.positions.push_back((int32_t)(r.prompt.tokens.size() + r.output.size() - 1));
                next.slots.push_back((int32_t)b);
                next.logit_rows.push_back((int64_t)next.ids.size() - 1);
            }
            if (next.ids.empty()) break;
            if (s.step_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(s.step_delay_ms));
            if (device_argmax) argmax_ids = exec.forward_argmax(next);
            else logits = exec.forward(next);
            size_t row = 0;
            for (size_t b = 0; b < count; ++b) {
                if (!active[b]) continue;
                if (device_argmax) next_ids[b] = argmax_ids[row++];
                else next_logits[b] = &logits[(row++) * vocab];
                if (comm.rank() == 0 && (device_argmax ? next_ids[b] < 0 : !all_finite(next_logits[b], vocab)))
                    non_finite.push_back(prompts[first + b].id);
            }
            check_finite(non_finite, step + 1, s.model_path);
        }
        double decode_ms = ms_since(decode_start);
        for (size_t b = 0; b < count; ++b) results[first + b].decode_ms = decode_ms;
    }
    return results;
}

void write_results_jsonl(const std::string& path, const std::vector<SequenceResult>& results) {
    write_file_atomically(path, [&](std::ostream& out) {
        for (const SequenceResult& r : results) {
            nlohmann::json j;
            if (r.prompt.id_is_number) j["id"] = std::stoll(r.prompt.id);
            else j["id"] = r.prompt.id;
            j["output_ids"] = r.output;
            j["finish_reason"] = r.finish_reason;
            j["prompt_tokens"] = r.prompt.tokens.size();
            j["generated_tokens"] = r.output.size();
            j["time_to_first_token_ms"] = r.time_to_first_token_ms;
            j["decode_ms"] = r.decode_ms;
            out << j.dump() << "\n";
        }
    });
}

void write_logits_h5(const std::string& path, const std::vector<SequenceResult>& results, int64_t vocab) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    hid_t file = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) throw Error(path + ": cannot create the logits file (" + tmp + ")");
    auto write = [&](hid_t group, const char* name, const std::vector<float>& v) {
        hsize_t dims[2] = {(hsize_t)(v.size() / vocab), (hsize_t)vocab};
        hid_t space = H5Screate_simple(2, dims, nullptr);
        hid_t ds = H5Dcreate2(group, name, H5T_NATIVE_FLOAT, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        herr_t st = v.empty() ? 0 : H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
        H5Dclose(ds);
        H5Sclose(space);
        if (st < 0) throw Error(tmp + ": writing " + name + " failed");
    };
    try {
        for (size_t i = 0; i < results.size(); ++i) {
            std::string name = "prompt_" + std::to_string(i);
            hid_t g = H5Gcreate2(file, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            hid_t str = H5Tcopy(H5T_C_S1);
            H5Tset_size(str, std::max<size_t>(1, results[i].prompt.id.size()));
            hid_t scalar = H5Screate(H5S_SCALAR);
            hid_t attr = H5Acreate2(g, "id", str, scalar, H5P_DEFAULT, H5P_DEFAULT);
            H5Awrite(attr, str, results[i].prompt.id.c_str());
            H5Aclose(attr);
            H5Sclose(scalar);
            H5Tclose(str);
            write(g, "prompt_logits", results[i].prompt_logits);
            write(g, "step_logits", results[i].step_logits);
            H5Gclose(g);
        }
    } catch (...) {
        H5Fclose(file);
        std::remove(tmp.c_str());
        throw;
    }
    H5Fclose(file);
    rename_into_place(tmp, path);
}

}  // namespace tpx
