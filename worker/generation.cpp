// The generation loop and its outputs.
#include "worker/generation.h"

#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file.h"
#include "kernels/cpu/draw.h"
#include "loader/h5_id.h"
#include "loader/hdf5.h"
#include "worker/step_rows.h"

namespace tpx {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// "decode: 12/40 prompts done, 310 tokens, 95.2 tokens/s, ETA 41s": the batch at `first` of
// `count` prompts is at decode `step` of at most `max_new`.
void show_progress(Progress& progress, const std::vector<SequenceResult>& results, size_t first, size_t count, int64_t step,
                   int64_t max_new, Clock::time_point start) {
    size_t tokens = 0;
    for (size_t i = 0; i < first + count; ++i) tokens += results[i].output.size();
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    double done = (double)first + (double)count * (double)step / (double)std::max<int64_t>(1, max_new);
    double eta = done > 0 ? seconds * ((double)results.size() - done) / done : -1;
    char line[160];
    std::snprintf(line, sizeof(line), "decode: %zu/%zu prompts done, %zu tokens, %.1f tokens/s, ETA %s", first, results.size(), tokens,
                  seconds > 0 ? (double)tokens / seconds : 0.0, format_eta(eta).c_str());
    progress.update(line);
}

// A sequence is done: its reason, and on rank 0 its text (HF's decode with
// skip_special_tokens=True, cut before a stop string) and the caller's hook.
void finish(SequenceResult& r, const char* reason, bool coordinator, const GenerationSettings& s) {
    r.finish_reason = reason;
    if (!coordinator) return;
    if (s.tokenizer) {
        r.text = s.tokenizer->decode(r.output, /*skip_special_tokens=*/true);
        // (Searched as StopStrings::reached did: without an unfinished last character.)
        if (size_t at = s.stop.find_in(without_unfinished_char(r.text)); r.finish_reason == "stop" && at != std::string::npos) r.text.resize(at);
        r.has_text = true;
    }
    if (s.on_finished) {
        if (s.progress) s.progress->finish();
        s.on_finished(r);
    }
}

bool all_finite(const float* row, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(row[i])) return false;
    return true;
}

// Logits holding NaN or Inf (a NaN weight, an overflow) would be sampled or argmax'd into
// garbage tokens and an exit status of 0; rank 0, which chooses, ends the run instead, exit 2
// as `tpx inspect --check` gives for the weights that cause it. `step` 0 is the prefill, N the
// N-th decode step.
void check_finite(const std::vector<std::string>& bad_prompts, int64_t step, const std::string& model_path) {
    if (bad_prompts.empty()) return;
    std::string ids;
    for (const std::string& id : bad_prompts) ids += (ids.empty() ? "" : ", ") + id;
    throw Error(std::string(bad_prompts.size() == 1 ? "prompt " : "prompts ") + ids + ": the logits at " +
                (step == 0 ? std::string("prefill") : "decode step " + std::to_string(step)) +
                " hold NaN or Inf, so no token can be chosen; `tpx inspect --check " + model_path +
                "` finds non-finite weights in the checkpoint",
                kExitBadInput);
}

// The prefill of prompts [first, first + count): every prompt token in one forward, prompt b in
// slot b; the logits wanted are each prompt's last row (every row with keep_logits), whose
// index goes to last_row[b].
TokenBatch prefill_batch(const std::vector<Prompt>& prompts, size_t first, size_t count, bool keep_logits, std::vector<int64_t>& last_row) {
    TokenBatch batch;
    for (size_t b = 0; b < count; ++b) {
        const Prompt& p = prompts[first + b];
        for (size_t t = 0; t < p.tokens.size(); ++t) {
            if (keep_logits) batch.logit_rows.push_back((int64_t)batch.ids.size());
            batch.ids.push_back(p.tokens[t]);
            batch.positions.push_back((int32_t)t);
            batch.slots.push_back((int32_t)b);
        }
        last_row[b] = (int64_t)batch.ids.size() - 1;
        if (!keep_logits) batch.logit_rows.push_back(last_row[b]);
    }
    return batch;
}

// How a step's tokens are chosen. kArgmax: greedy without logits to keep, on the backend (on the
// GPU only the ids come back). kDraw: sampled without penalties or logits to keep, by the
// backend's forward_draw (on the GPU the draws run on the device, as `tpx serve`'s). kHost: rank
// 0 draws from each row's logits (penalties change them first; --dump-logits keeps them), by the
// same rule (kernels/cpu/draw.h) on its threads.
enum class Choice { kArgmax, kDraw, kHost };

Choice choice_of(const Executor& exec, const GenerationSettings& s) {
    if (s.keep_logits || s.penalties.any()) return Choice::kHost;
    if (s.sampling.temperature <= 0) return Choice::kArgmax;
    return exec.draws_in_forward() ? Choice::kDraw : Choice::kHost;
}

// What rank 0 draws with: each prompt of the batch its own key (so its tokens do not depend on
// the other prompts, on max_batch, on the world size or on where the draw runs), its n-th token
// drawn with draw_random(key, n); the host's rows spread over `rows`' threads, each part with a
// copy of a row the penalties change.
struct Draws {
    std::vector<uint64_t> keys;
    std::optional<StepRows> rows;  // (made at the first host draw)
    std::vector<std::vector<float>> penalised;
    void start_batch(const std::vector<Prompt>& prompts, size_t first, size_t count, uint64_t seed) {
        keys.clear();
        for (size_t b = 0; b < count; ++b) keys.push_back(prompt_draw_key(seed, prompts[first + b].id));
    }
    cpu::DrawParams params(const GenerationSettings& s, size_t b, size_t generated) const {
        return {s.sampling.temperature, s.sampling.top_k, s.sampling.top_p, cpu::draw_random(keys[b], generated)};
    }
};

// Rank 0's draw for each active sequence of the batch from its logits, changed first by
// [run.sampling]'s penalties (-1 where they leave no finite row), the rows over draws.rows.
std::vector<int32_t> draw_tokens(const std::vector<int32_t>& active, const std::vector<const float*>& next_logits, int64_t vocab, Draws& draws,
                                 const std::vector<SequenceResult>& results, size_t first, const GenerationSettings& s) {
    std::vector<int32_t> drawn(active.size(), 0);
    if (!draws.rows) draws.rows.emplace();
    draws.penalised.resize((size_t)draws.rows->parts());
    draws.rows->run((int64_t)active.size(), [&](int64_t b, int part) {
        if (!active[b]) return;
        const float* row = next_logits[b];
        const SequenceResult& r = results[first + b];
        if (s.penalties.any()) {
            std::vector<float>& penalised = draws.penalised[part];
            penalised.assign(row, row + vocab);
            cpu::apply_penalties(penalised.data(), vocab, s.penalties, r.prompt.tokens, r.output);
            row = penalised.data();
        }
        drawn[b] = (int32_t)cpu::draw_token(row, vocab, draws.params(s, (size_t)b, r.output.size()));
    });
    return drawn;
}

// A forward of the generation loop and its rows' tokens (choice_of's way). Only rank 0 reads
// logits (it chooses, and writes --dump-logits), in place in the executor's buffer until the next
// forward: the others' forward leaves them on the device.
class StepForward {
public:
    StepForward(Executor& exec, const GenerationSettings& s, bool chooser) : exec_(exec), s_(s), choice_(choice_of(exec, s)), chooser_(chooser) {
        if (chooser && choice_ != Choice::kArgmax) draws.emplace();
    }
    // The forward of `batch`, whose wanted rows give the tokens of sequences `seqs` (in order) of
    // the batch at `first` in `results`.
    void run(const TokenBatch& batch, const std::vector<size_t>& seqs, const std::vector<SequenceResult>& results, size_t first) {
        switch (choice_) {
            case Choice::kArgmax:
                ids_ = exec_.forward_argmax(batch);
                return;
            case Choice::kDraw:
                if (!chooser_) return exec_.forward_follower(batch, true);
                row_draws_.clear();
                for (size_t b : seqs) row_draws_.push_back(draws->params(s_, b, results[first + b].output.size()));
                ids_ = exec_.forward_draw(batch, row_draws_, {}, &logits_);
                return;
            case Choice::kHost:
                if (!chooser_) return exec_.forward_follower(batch, true);
                logits_ = exec_.forward_view(batch);
                return;
        }
    }
    // Rank 0: the forward's wanted row `row`, sequence b's: its token (tokens_ready) or its logits;
    // false where it gives no token (not finite).
    bool take(int64_t row, size_t b, std::vector<int32_t>& ids, std::vector<const float*>& logits) const {
        if (tokens_ready()) return (ids[b] = ids_[row]) >= 0;
        logits[b] = logits_ + row * exec_.vocab();
        return all_finite(logits[b], exec_.vocab());
    }
    // Whether the forward gave the rows' tokens (else rank 0 draws them from logits()).
    bool tokens_ready() const { return choice_ != Choice::kHost; }
    const float* logits() const { return logits_; }
    std::optional<Draws> draws;  // rank 0's, but for kArgmax

private:
    Executor& exec_;
    const GenerationSettings& s_;
    const Choice choice_;
    const bool chooser_;
    std::vector<int32_t> ids_;
    const float* logits_ = nullptr;
    std::vector<cpu::DrawParams> row_draws_;
};

// What rank 0 broadcasts of a step: the active sequences' tokens (the device's argmax or the
// draws), then, where stop strings apply, whether each completes one: [count] tokens, then
// [count] stop flags. Stop strings are read off the text, which only rank 0 decodes: its verdict
// travels with the token.
std::vector<int32_t> with_stops(const std::vector<int32_t>& active, const std::vector<int32_t>& tokens, std::vector<SequenceResult>& results,
                                size_t first, const GenerationSettings& s) {
    const size_t count = active.size();
    std::vector<int32_t> chosen(2 * count, 0);
    for (size_t b = 0; b < count; ++b) {
        if (!active[b]) continue;
        const SequenceResult& r = results[first + b];
        chosen[b] = tokens[b];
        if (chosen[b] < 0)  // (the raw row was finite: check_finite)
            throw Error("prompt " + r.prompt.id + ": the logits as [run.sampling]'s penalties change them (presence_penalty " +
                            std::to_string(s.penalties.presence) + ", frequency_penalty " + std::to_string(s.penalties.frequency) +
                            ", repetition_penalty " + std::to_string(s.penalties.repetition) + ") are not finite at generated token " +
                            std::to_string(r.output.size()) + ": no token can be chosen",
                        kExitBadInput);
        if (s.tokenizer && !s.stop.empty()) {
            std::vector<int32_t>& out = results[first + b].output;
            out.push_back(chosen[b]);
            chosen[count + b] = s.stop.reached(*s.tokenizer, out) ? 1 : 0;
            out.pop_back();
        }
    }
    return chosen;
}

}  // namespace

uint64_t prompt_draw_key(uint64_t seed, const std::string& prompt_id) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a of the id, then splitmix64 with the seed
    for (char c : prompt_id) h = (h ^ (unsigned char)c) * 1099511628211ull;
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (h | 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return std::mt19937_64(z ^ (z >> 31))();
}

std::vector<SequenceResult> generate(Executor& exec, Communicator& comm, const std::vector<Prompt>& prompts,
                                     const GenerationSettings& s) {
    const int64_t vocab = exec.vocab();
    const bool chooser = comm.rank() == 0;
    StepForward forward(exec, s, chooser);
    std::optional<Draws>& draws = forward.draws;
    std::vector<SequenceResult> results(prompts.size());
    const Clock::time_point run_start = Clock::now();
    for (size_t first = 0; first < prompts.size(); first += (size_t)s.max_batch) {
        size_t count = std::min<size_t>((size_t)s.max_batch, prompts.size() - first);
        if (draws) draws->start_batch(prompts, first, count, s.seed);
        std::vector<int64_t> last_row(count);
        const TokenBatch batch = prefill_batch(prompts, first, count, s.keep_logits, last_row);
        for (size_t b = 0; b < count; ++b) results[first + b].prompt = prompts[first + b];
        if (s.progress)
            s.progress->update("prefill: prompts " + std::to_string(first + 1) + "-" + std::to_string(first + count) + " of " +
                                   std::to_string(prompts.size()) + ", " + std::to_string(batch.ids.size()) + " tokens",
                               batch.ids.size() >= 4096);
        auto t0 = Clock::now();
        std::vector<size_t> seqs(count);  // the sequences of the forward's wanted rows, in order
        for (size_t b = 0; b < count; ++b) seqs[b] = b;
        forward.run(batch, seqs, results, first);
        double prefill_ms = ms_since(t0);
        std::vector<const float*> next_logits(count, nullptr);
        std::vector<int32_t> next_ids(count, 0);
        std::vector<std::string> non_finite;  // prompt ids whose next token cannot be chosen
        for (size_t b = 0; b < count; ++b) {
            if (chooser && !forward.take(s.keep_logits ? last_row[b] : (int64_t)b, b, next_ids, next_logits))
                non_finite.push_back(prompts[first + b].id);
            SequenceResult& r = results[first + b];
            r.time_to_first_token_ms = prefill_ms;
            if (s.keep_logits && chooser) {
                int64_t start = last_row[b] + 1 - (int64_t)r.prompt.tokens.size();
                r.prompt_logits.assign(forward.logits() + start * vocab, forward.logits() + (last_row[b] + 1) * vocab);
            }
        }
        check_finite(non_finite, 0, s.model_path);
        // Decode: one token per unfinished sequence per step.
        std::vector<int32_t> active(count, s.max_new_tokens > 0 ? 1 : 0);
        for (size_t b = 0; b < count; ++b)
            if (!active[b]) finish(results[first + b], "length", chooser, s);
        auto decode_start = Clock::now();
        for (int64_t step = 0; step < s.max_new_tokens; ++step) {
            // Rank 0 chooses; every rank gets the same tokens and the same finished flags.
            std::vector<int32_t> chosen(2 * count, 0);
            if (chooser) {
                const std::vector<int32_t> tokens = forward.tokens_ready() ? next_ids : draw_tokens(active, next_logits, vocab, *draws, results, first, s);
                chosen = with_stops(active, tokens, results, first, s);
            }
            comm.broadcast(chosen.data(), 2 * count * sizeof(int32_t), 0);
            TokenBatch next;
            seqs.clear();
            for (size_t b = 0; b < count; ++b) {
                if (!active[b]) continue;
                SequenceResult& r = results[first + b];
                if (s.keep_logits && chooser) r.step_logits.insert(r.step_logits.end(), next_logits[b], next_logits[b] + vocab);
                r.output.push_back(chosen[b]);
                bool eos = std::find(s.eos.begin(), s.eos.end(), (int64_t)chosen[b]) != s.eos.end();
                bool stopped = chosen[count + b] != 0;
                if (eos || stopped || (int64_t)r.output.size() >= s.max_new_tokens) {
                    finish(r, stopped ? "stop" : eos ? "eos" : "length", chooser, s);
                    active[b] = 0;
                    continue;
                }
                next.ids.push_back(chosen[b]);
                next.positions.push_back((int32_t)(r.prompt.tokens.size() + r.output.size() - 1));
                next.slots.push_back((int32_t)b);
                next.logit_rows.push_back((int64_t)next.ids.size() - 1);
                seqs.push_back(b);
            }
            if (s.progress) show_progress(*s.progress, results, first, count, step + 1, s.max_new_tokens, run_start);
            if (next.ids.empty()) break;
            if (s.step_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(s.step_delay_ms));
            forward.run(next, seqs, results, first);
            for (size_t row = 0; row < seqs.size(); ++row)
                if (chooser && !forward.take((int64_t)row, seqs[row], next_ids, next_logits)) non_finite.push_back(prompts[first + seqs[row]].id);
            check_finite(non_finite, step + 1, s.model_path);
        }
        double decode_ms = ms_since(decode_start);
        for (size_t b = 0; b < count; ++b) results[first + b].decode_ms = decode_ms;
    }
    return results;
}

void write_results_jsonl(std::ostream& out, const std::vector<SequenceResult>& results) {
    for (const SequenceResult& r : results) {
        nlohmann::json j;
        if (r.prompt.id_is_number) j["id"] = nlohmann::json::parse(r.prompt.id);  // as written: past 2^63 too
        else j["id"] = r.prompt.id;
        j["output_ids"] = r.output;
        if (r.has_text) j["text"] = r.text;
        j["finish_reason"] = r.finish_reason;
        j["prompt_tokens"] = r.prompt.tokens.size();
        j["generated_tokens"] = r.output.size();
        j["time_to_first_token_ms"] = r.time_to_first_token_ms;
        j["decode_ms"] = r.decode_ms;
        out << j.dump() << "\n";
    }
}

void write_logits_h5(const std::string& tmp, const std::string& path, const std::vector<SequenceResult>& results, int64_t vocab) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    // Each identifier closed by its own guard, whatever throws; the file last, checked.
    hid_t file = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) throw Error(path + ": cannot create the logits file (" + tmp + ")");
    auto made = [&](hid_t id, const std::string& what) {
        if (id < 0) throw Error(path + ": cannot write " + what);
        return id;
    };
    try {
        for (size_t i = 0; i < results.size(); ++i) {
            const std::string name = "prompt_" + std::to_string(i);
            H5Id g(made(H5Gcreate2(file, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), name), H5Gclose);
            H5Id str(made(H5Tcopy(H5T_C_S1), name + "'s id"), H5Tclose);
            H5Tset_size(str, std::max<size_t>(1, results[i].prompt.id.size()));
            H5Id scalar(made(H5Screate(H5S_SCALAR), name + "'s id"), H5Sclose);
            H5Id attr(made(H5Acreate2(g, "id", str, scalar, H5P_DEFAULT, H5P_DEFAULT), name + "'s id"), H5Aclose);
            if (H5Awrite(attr, str, results[i].prompt.id.c_str()) < 0) throw Error(path + ": cannot write " + name + "'s id");
            for (const auto& [what, v] : {std::pair<const char*, const std::vector<float>&>{"prompt_logits", results[i].prompt_logits},
                                          {"step_logits", results[i].step_logits}}) {
                const hsize_t dims[2] = {(hsize_t)(v.size() / vocab), (hsize_t)vocab};
                H5Id space(made(H5Screate_simple(2, dims, nullptr), name + "/" + what), H5Sclose);
                H5Id ds(made(H5Dcreate2(g, what, H5T_NATIVE_FLOAT, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), name + "/" + what), H5Dclose);
                if (!v.empty() && H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0)
                    throw Error(path + ": writing " + name + "/" + what + " failed");
            }
        }
    } catch (...) {
        H5Fclose(file);
        throw;
    }
    close_written_hdf5(file, path);
}

}  // namespace tpx
