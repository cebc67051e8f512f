// The scheduler (rank 0) and the follower loop. A step on the wire: a header of four int64
// (kind, tokens, logit rows, whether rank 0's forward ends in logits or draws rather than argmax
// ids), then the batch's ids, positions, slots and logit rows as int32. Every rank runs the same
// forward (the GPU backend's forward and forward_argmax differ in their collectives; its draws
// run the logits' collectives).
#include "worker/serve_loop.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <csignal>
#include <cstring>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "chat/text.h"
#include "common/error.h"
#include "common/log.h"
#include "text/stop_strings.h"
#include "tokenizer/utf8.h"
#include "worker/generation.h"
#include "worker/step_rows.h"
#include "worker/token_choice.h"

namespace tpx {
namespace {

using namespace std::chrono_literals;

// kRefit: the header's second word is the path's length; the path's bytes follow.
enum StepKind : int64_t { kHeartbeat = 0, kStep = 1, kShutdown = 2, kRefit = 3 };

// The signals that ask a serving rank to stop: SIGTERM (scancel, kill), SIGUSR1 (tpx serve's
// drain), SIGINT and SIGHUP (a rank's terminal).
constexpr int kServeStopSignals[] = {SIGTERM, SIGUSR1, SIGINT, SIGHUP};

// Read by other threads too (LoadStop's watcher): an atomic, lock-free so the handler may set it.
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "a signal handler may set only a lock-free atomic");
void on_signal(int sig) { g_signal = sig; }

// How long a follower polls for rank 0's next step without pause before it pauses between
// polls (MpiCommunicator::broadcast_patiently): a working server's next header comes sooner.
constexpr double kFollowerSpinSeconds = 0.02;

double seconds_since(ServeClock::time_point t) { return std::chrono::duration<double>(ServeClock::now() - t).count(); }

// A request holding a KV slot.
struct Sequence {
    std::shared_ptr<ServeRequest> req;
    size_t prefilled = 0;  // prompt tokens in the cache
    std::vector<int32_t> output;
    uint64_t draw_key = 0;  // from the call's seed and prompt: its draws' random numbers (cpu::draw_random)
    ServeClock::time_point last_token;
    size_t sent = 0;  // bytes of the output's text already sent in kToken events
    std::vector<TokenLogprobs> logprobs;  // each generated token's, where the call asks
    std::string text;                     // with logprobs: the output's text before the last token (its text_offset's)
    size_t ends_after = 0;                // bytes of text a stop string's match must end past (the min_tokens tokens' text)
};

// A logit row's outcome: whether it is finite, the token chosen (-1: none, the penalised row not
// finite) and its logprobs where the call asks.
struct RowChoice {
    bool finite = false;
    int32_t token = -1;
    std::optional<TokenLogprobs> logprobs;
};

// Where each rank runs, for naming one that is gone.
struct Peer {
    int32_t pid = 0;
    char host[60] = {};
};

bool process_alive(int pid) {
    if (kill(pid, 0) != 0) return errno != ESRCH;
    // A killed rank stays a zombie until its parent reaps it.
    FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
    if (!f) return false;
    char buf[512] = {};
    size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
    std::fclose(f);
    const char* paren = std::strrchr(buf, ')');
    return !(n > 0 && paren && paren[1] == ' ' && paren[2] == 'Z');
}

class Scheduler {
public:
    Scheduler(Executor& exec, MpiCommunicator& comm, ServeFront& front, const ServeSettings& s)
        : exec_(exec), comm_(comm), front_(front), s_(s), slots_((size_t)s.slots) {}

    int choice_threads() const { return rows_.parts(); }

    void run(const std::vector<Peer>& peers) {
        std::atomic<bool> stop_monitor{false};
        std::thread monitor([&] { watch_peers(peers, stop_monitor); });
        try {
            loop();
        } catch (const std::exception& e) {
            // Every waiting call gets the message; the answers go out before the job ends.
            // (The failure first: a call between the two gets the 503 naming it.)
            front_.http.fail_all(std::string(e.what()).rfind(where(), 0) == 0 ? e.what() : where() + ": " + e.what());
            front_.http.start_draining();
            for (int i = 0; i < 40 && front_.http.in_flight() > 0; ++i) std::this_thread::sleep_for(50ms);
            stop_monitor = true;
            monitor.join();
            throw;
        }
        stop_monitor = true;
        monitor.join();
    }

private:
    void loop() {
        std::optional<ServeClock::time_point> deadline;
        ServeClock::time_point beat = ServeClock::now();  // the last heartbeat an idle rank 0 sent
        for (;;) {
            if (g_signal != 0 && !deadline) {
                // (SIGUSR1: tpx serve's word, whatever signal it was sent.)
                const std::string why = g_signal == SIGUSR1 ? "asked to stop" : strsignal(g_signal);
                log_info("serve: ", why, ": finishing the requests in flight (up to ", s_.grace_s, " s, [serve] grace_s), taking no new ones");
                front_.http.start_draining();
                deadline = ServeClock::now() + std::chrono::duration_cast<ServeClock::duration>(std::chrono::duration<double>(s_.grace_s));
            }
            if (deadline && ServeClock::now() > *deadline) {
                drop_all("the server stopped: [serve] grace_s ran out before this request finished");
                break;
            }
            // A pending refit holds admission until the running sequences are done (or aborted).
            std::shared_ptr<RefitCall> refit = front_.refits.pending();
            if (refit && deadline) {
                answer_refit(*refit, 503, "the server is shutting down", "shutting_down");
                refit.reset();
            }
            if (refit && refit->abort) abort_all();
            drop_cancelled();
            if (refit && active() == 0) {
                run_refit(*refit);
                continue;
            }
            if (!refit) admit();
            if (active() == 0) {
                if (deadline && front_.queue.size() == 0) break;
                // Idle: wait for a request, a stop signal looked at every 100 ms (a wait of 500 ms
                // took /health half a second to leave 200), the followers told we are alive every 500.
                if (auto r = front_.queue.pop(100ms)) {
                    start(std::move(r));
                } else if (ServeClock::now() - beat >= 500ms) {
                    broadcast_header(kHeartbeat, 0, 0, false);
                    beat = ServeClock::now();
                }
                continue;
            }
            step();
        }
        if (auto refit = front_.refits.pending()) answer_refit(*refit, 503, "the server is shutting down", "shutting_down");
        broadcast_header(kShutdown, 0, 0, false);
        front_.metrics.set_running(0);
    }

    size_t active() const {
        size_t n = 0;
        for (const auto& s : slots_) n += s.has_value();
        return n;
    }

    void start(std::shared_ptr<ServeRequest> r) {
        if (r->cancelled) {
            front_.metrics.count_cancelled();
            return;
        }
        for (auto& slot : slots_)
            if (!slot) {
                slot.emplace();
                slot->draw_key = request_draw_key(*r);
                slot->req = std::move(r);
                front_.metrics.set_running((int64_t)active());
                return;
            }
    }

    void admit() {
        while (active() < slots_.size())
            if (auto r = front_.queue.pop(0ms)) start(std::move(r));
            else break;
    }

    void drop_cancelled() {
        for (auto& slot : slots_)
            if (slot && slot->req->cancelled) {
                slot.reset();  // its cache rows are simply overwritten by the next sequence
                front_.metrics.count_cancelled();
                front_.metrics.set_running((int64_t)active());
            }
    }

    void drop_all(const std::string& why) {
        ServeEvent e;
        e.kind = ServeEvent::kFailed;
        e.error = why;
        e.status = 503;
        e.code = "shutting_down";
        for (auto& slot : slots_)
            if (slot) {
                slot->req->channel->push(e);
                slot.reset();
            }
        for (const auto& r : front_.queue.close()) r->channel->push(e);
    }

    // Every running sequence ends now with what it has, finish_reason "abort" (a refit with
    // "abort": true); the queued ones wait for the new weights.
    void abort_all() {
        for (size_t i = 0; i < slots_.size(); ++i) {
            if (!slots_[i]) continue;
            Sequence& q = *slots_[i];
            ServeEvent e;
            e.kind = ServeEvent::kFinished;
            e.index = q.req->index;
            e.token = q.output.empty() ? 0 : q.output.back();
            e.finish_reason = "abort";
            if (s_.tokenizer) e.text = s_.tokenizer->decode(q.output, q.req->skip_special_tokens);
            e.tail = q.sent < e.text.size() ? e.text.substr(q.sent) : "";
            e.output = q.output;
            e.logprobs = q.logprobs;
            q.req->channel->push(std::move(e));
            slots_[i].reset();
            ++aborted_;
        }
        front_.metrics.set_running(0);
    }

    // The refit's answer; the desk takes the next one from now on.
    void answer_refit(RefitCall& call, int status, const std::string& body_or_error, const std::string& code = "") {
        ServeEvent e;
        e.kind = status == 200 ? ServeEvent::kFinished : ServeEvent::kFailed;
        (status == 200 ? e.text : e.error) = body_or_error;
        e.status = status;
        e.code = code;
        front_.refits.close();
        call.channel->push(std::move(e));
    }

    // Every rank reads the new weights (collective); rank 0 answers with the per-rank table. A
    // failure after the weights began to change throws: the job ends, naming the rank and file.
    void run_refit(RefitCall& call) {
        const double drain_s = seconds_since(call.arrived);
        log_info("serve: refit from ", call.path, " (", aborted_, " sequences aborted, ", drain_s, " s draining)");
        auto t0 = ServeClock::now();
        broadcast_header(kRefit, (int64_t)call.path.size(), 0, false);
        comm_.broadcast(const_cast<char*>(call.path.data()), call.path.size(), 0);
        RefitOutcome out = refit_weights(exec_, comm_, s_.refit, call.path);
        const int64_t aborted = aborted_;
        aborted_ = 0;
        if (out.fatal) throw Error(out.error);  // Scheduler::run answers every call (this one too) with it
        if (out.status != 200) {
            log_warn("serve: ", out.error);
            return answer_refit(call, out.status, out.error, "refit_refused");
        }
        nlohmann::json ranks = nlohmann::json::array();
        int64_t bytes = 0;  // (JSON integers, here and each rank's: a count of bytes)
        for (const RankRefit& r : out.ranks) {
            const double s = r.check_s + r.read_s;
            ranks.push_back({{"rank", r.rank}, {"host", r.host}, {"bytes", (int64_t)r.bytes}, {"seconds", s}, {"check_seconds", r.check_s},
                             {"read_seconds", r.read_s}, {"gb_per_s", s > 0 ? r.bytes / 1e9 / s : 0.0}});
            bytes += (int64_t)r.bytes;
        }
        const double seconds = seconds_since(t0);
        nlohmann::json body = {{"object", "refit"}, {"path", call.path}, {"seconds", seconds}, {"drain_seconds", drain_s},
                               {"aborted", aborted}, {"bytes", bytes}, {"gb_per_s", seconds > 0 ? (double)bytes / 1e9 / seconds : 0.0},
                               {"ranks", ranks}};
        log_info("serve: refit done: ", (double)bytes / 1e9, " GB read by ", out.ranks.size(), " ranks in ", seconds, " s");
        answer_refit(call, 200, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }

    void broadcast_header(int64_t kind, int64_t tokens, int64_t rows, bool logits) {
        int64_t h[4] = {kind, tokens, rows, logits ? 1 : 0};
        comm_.broadcast(h, sizeof(h), 0);
    }

    void step() {
        const auto started = ServeClock::now();
        TokenBatch batch;
        std::vector<size_t> owners;  // the slot of each logit row
        std::vector<cpu::DrawParams> draws;
        std::vector<int64_t> host_rows;  // rows whose logits rank 0 reads: a call's logprobs, or its penalties
        std::vector<char> shaped;        // rows whose token is chosen from its logits as the call changes them
        bool sampled = false, mixed = false;
        for (size_t i = 0; i < slots_.size(); ++i) {
            if (!slots_[i]) continue;
            Sequence& q = *slots_[i];
            const std::vector<int32_t>& prompt = q.req->prompt;
            if (q.prefilled < prompt.size()) {
                mixed = true;
                size_t n = std::min(prompt.size() - q.prefilled, (size_t)s_.prefill_chunk);
                for (size_t t = q.prefilled; t < q.prefilled + n; ++t) {
                    batch.ids.push_back(prompt[t]);
                    batch.positions.push_back((int32_t)t);
                    batch.slots.push_back((int32_t)i);
                }
                q.prefilled += n;
                if (q.prefilled < prompt.size()) continue;  // more chunks to come: no logits yet
                front_.metrics.add_prompt_tokens((int64_t)prompt.size());
            } else {
                batch.ids.push_back(q.output.back());
                batch.positions.push_back((int32_t)(prompt.size() + q.output.size() - 1));
                batch.slots.push_back((int32_t)i);
            }
            batch.logit_rows.push_back((int64_t)batch.ids.size() - 1);
            owners.push_back(i);
            draws.push_back(draw_params(*q.req, cpu::draw_random(q.draw_key, q.output.size())));
            sampled = sampled || q.req->temperature > 0;
            shaped.push_back(needs_shaping(*q.req, q.output.size(), s_.eos));
            if (q.req->logprobs >= 0 || shaped.back()) host_rows.push_back((int64_t)owners.size() - 1);
        }
        // The tokens: the device's argmax; or the executor's draws, the host rows' logits beside them;
        // or every row's from its logits here, on the rows' threads (the same rule).
        const bool ids_only = !sampled && host_rows.empty(), all_host = !ids_only && !exec_.draws_in_forward();
        const int64_t T = (int64_t)batch.ids.size(), R = (int64_t)batch.logit_rows.size();
        broadcast_header(kStep, T, R, !ids_only);
        std::vector<int32_t> payload;
        payload.reserve(3 * T + R);
        payload.insert(payload.end(), batch.ids.begin(), batch.ids.end());
        payload.insert(payload.end(), batch.positions.begin(), batch.positions.end());
        payload.insert(payload.end(), batch.slots.begin(), batch.slots.end());
        for (int64_t r : batch.logit_rows) payload.push_back((int32_t)r);
        comm_.broadcast(payload.data(), payload.size() * sizeof(int32_t), 0);
        if (s_.step_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(s_.step_delay_ms));
        const float* logits = nullptr;  // (the executor's, until its next forward)
        std::vector<int32_t> ids;
        if (ids_only) ids = exec_.forward_argmax(batch);
        else if (all_host) logits = exec_.forward_view(batch);
        else ids = exec_.forward_draw(batch, draws, host_rows, &logits);
        const int64_t vocab = exec_.vocab();
        // Each row's token (and logprobs), the host rows' from their logits, spread over threads;
        // then, in row order, what each means for its call.
        std::vector<RowChoice> choice(owners.size());
        std::vector<char> on_host(owners.size(), all_host);
        for (int64_t row : host_rows) on_host[row] = true;
        shaped_.resize((size_t)rows_.parts());
        auto choose = [&](int64_t row, int part) {
            RowChoice& c = choice[row];
            if (!on_host[row]) {
                c.finite = (c.token = ids[row]) >= 0;
                return;
            }
            Sequence& q = *slots_[owners[row]];
            const float* row_logits = &logits[row * vocab];
            c.finite = std::all_of(row_logits, row_logits + vocab, [](float x) { return std::isfinite(x); });
            if (!c.finite) return;
            c.token = all_host || shaped[row] ? choose_token(*q.req, q.output, s_.eos, row_logits, vocab, draws[row].random, shaped_[part]) : ids[row];
            if (c.token >= 0 && q.req->logprobs >= 0) c.logprobs = token_logprobs(row_logits, vocab, c.token, q.req->logprobs);
        };
        if (logits) rows_.run((int64_t)owners.size(), choose);
        else for (size_t row = 0; row < owners.size(); ++row) choose((int64_t)row, 0);
        for (size_t row = 0; row < owners.size(); ++row) {
            Sequence& q = *slots_[owners[row]];
            const ServeRequest& r = *q.req;
            // A row holding NaN or Inf has no next token (argmax says -1): that call fails, the
            // others go on (as in `tpx run`, the checkpoint's weights are the likely cause).
            if (!choice[row].finite) {
                fail(owners[row], "the logits are not finite (NaN or Inf) at generated token " + std::to_string(q.output.size()) +
                                      " of this request: `tpx inspect --check` finds non-finite weights in the checkpoint");
                continue;
            }
            const int32_t token = choice[row].token;
            if (token < 0) {
                fail(owners[row], "the logits as this call's penalties change them (presence_penalty " + nlohmann::json(r.presence_penalty).dump() +
                                      ", frequency_penalty " + nlohmann::json(r.frequency_penalty).dump() + ", repetition_penalty " +
                                      nlohmann::json(r.repetition_penalty).dump() + ") are not finite at generated token " +
                                      std::to_string(q.output.size()) + ": no token can be chosen");
                continue;
            }
            if (choice[row].logprobs) q.logprobs.push_back(std::move(*choice[row].logprobs));
            emit(owners[row], token);
        }
        const double device_ms = all_host ? -1 : exec_.last_device_ms();  // timed by the forwards that end in ids
        front_.metrics.observe_step(mixed, seconds_since(started), device_ms >= 0 ? device_ms * 1e-3 : -1);
    }

    // The sequence in `slot` ends with an error (a 500 for its call); its slot is freed.
    void fail(size_t slot, const std::string& why) {
        ServeEvent e;
        e.kind = ServeEvent::kFailed;
        e.index = slots_[slot]->req->index;
        e.error = where() + ": " + why;
        e.code = "non_finite_logits";
        slots_[slot]->req->channel->push(std::move(e));
        slots_[slot].reset();
        front_.metrics.set_running((int64_t)active());
    }

    // The sequence in `slot` generated `token`: its event, and its end when it is done.
    void emit(size_t slot, int32_t token) {
        Sequence& q = *slots_[slot];
        const ServeRequest& r = *q.req;
        auto now = ServeClock::now();
        if (q.output.empty()) front_.metrics.observe_ttft(seconds_since(r.arrived));
        else front_.metrics.observe_tpot(std::chrono::duration<double>(now - q.last_token).count());
        q.last_token = now;
        q.output.push_back(token);
        front_.metrics.add_generated_tokens(1);
        std::string reason;
        std::string text;
        // An eos id (unless the call ignores them) or one of the call's stop ids.
        const bool eos = !r.ignore_eos && std::find(s_.eos.begin(), s_.eos.end(), (int64_t)token) != s_.eos.end();
        const bool ends_sequence = eos || std::find(r.stop_token_ids.begin(), r.stop_token_ids.end(), token) != r.stop_token_ids.end();
        // The id that ends a sequence is not part of its text, special tokens kept or not (as
        // vLLM's detokenizer).
        if (s_.tokenizer)  // (two calls: one ?: of the two vectors would copy the output every token)
            text = ends_sequence ? s_.tokenizer->decode(std::vector<int32_t>(q.output.begin(), q.output.end() - 1), r.skip_special_tokens)
                                 : s_.tokenizer->decode(q.output, r.skip_special_tokens);
        if (r.logprobs >= 0) {  // where the token's text begins: where the text before it and with it part, at most its finished characters
            const size_t begins = std::min(tok::common_prefix_bytes(q.text, text), finished_length(text));
            q.logprobs.back().text_offset = (int64_t)chat::text::length(text.substr(0, begins));
            q.text = text;
        }
        if ((int64_t)q.output.size() <= r.min_tokens) q.ends_after = finished_length(text);  // no stop string in this text
        StopStrings stops(r.stop);
        ServeEvent e;
        if (ends_sequence) {
            reason = "stop";
            if (!eos) e.stop_id = token;
        } else if (const StopStrings::Match m = stop_match(q, stops, text); m.stop) {
            reason = "stop";
            e.stop_string = *m.stop;
            text.resize(m.at);
        } else if ((int64_t)q.output.size() >= r.max_tokens) {
            reason = "length";
        }
        e.index = r.index;
        e.token = token;
        if (reason.empty()) {
            size_t end = final_prefix(text, r.stop);
            if (end > q.sent) {
                e.text = text.substr(q.sent, end - q.sent);
                q.sent = end;
            }
            if (!q.logprobs.empty()) e.logprobs.push_back(q.logprobs.back());
            r.channel->push(std::move(e));
            return;
        }
        e.kind = ServeEvent::kFinished;
        e.finish_reason = reason;
        e.tail = q.sent < text.size() ? text.substr(q.sent) : "";
        e.text = std::move(text);
        e.output = q.output;
        e.logprobs = std::move(q.logprobs);
        r.channel->push(std::move(e));
        slots_[slot].reset();
        front_.metrics.set_running((int64_t)active());
    }

    // The stop string the output's text (`text`, just decoded) now holds, if any: none in the
    // text of its first min_tokens tokens (vLLM's), searched as reached() searches, without an
    // unfinished last character.
    StopStrings::Match stop_match(const Sequence& q, const StopStrings& stops, const std::string& text) const {
        const ServeRequest& r = *q.req;
        if (!s_.tokenizer || stops.empty() || (int64_t)q.output.size() <= r.min_tokens) return {};
        if (!stops.reached(*s_.tokenizer, q.output, r.skip_special_tokens)) return {};
        return stops.first_match(without_unfinished_char(text), q.ends_after);
    }

    // Ranks on this host that are gone (killed, crashed) are named to every waiting call at
    // once: the main thread may sit in a collective with them until the job is ended.
    void watch_peers(const std::vector<Peer>& peers, const std::atomic<bool>& stop) {
        const std::string host = identity().host;
        while (!stop) {
            for (size_t r = 1; r < peers.size(); ++r) {
                if (host != peers[r].host || process_alive(peers[r].pid)) continue;
                std::string message = "rank " + std::to_string(r) + " (" + host + ") is gone (process " + std::to_string(peers[r].pid) +
                                      " ended) while serving; the job is ending";
                std::fprintf(stderr, "%s: serve: %s\n", where().c_str(), message.c_str());
                front_.http.fail_all(message);
                front_.http.start_draining();
                return;
            }
            std::this_thread::sleep_for(100ms);
        }
    }

    Executor& exec_;
    MpiCommunicator& comm_;
    ServeFront& front_;
    const ServeSettings& s_;
    std::vector<std::optional<Sequence>> slots_;
    int64_t aborted_ = 0;        // sequences aborted for the pending refit
    StepRows rows_;                           // rank 0's threads for the rows' token choices
    std::vector<std::vector<float>> shaped_;  // choose_token's copy of a row its call changes, one a part
};

void follow(Executor& exec, MpiCommunicator& comm, const ServeSettings& s) {
    for (;;) {
        int64_t h[4];
        // Polled without pause at first, then with pauses (its arrival seen at most 1% late): an
        // idle server's followers do not each keep a core busy.
        comm.broadcast_patiently(h, sizeof(h), 0, kFollowerSpinSeconds);
        if (h[0] == kShutdown) return;
        if (h[0] == kHeartbeat) continue;
        if (h[0] == kRefit) {
            std::string path((size_t)h[1], '\0');
            comm.broadcast(path.data(), path.size(), 0);
            // A fatal outcome: rank 0 answers the call and ends the job; until then this rank
            // waits in the next broadcast and runs no step on its mixed weights.
            refit_weights(exec, comm, s.refit, path);
            continue;
        }
        const int64_t T = h[1], R = h[2];
        std::vector<int32_t> payload((size_t)(3 * T + R));
        comm.broadcast(payload.data(), payload.size() * sizeof(int32_t), 0);
        TokenBatch batch;
        batch.ids.assign(payload.begin(), payload.begin() + T);
        batch.positions.assign(payload.begin() + T, payload.begin() + 2 * T);
        batch.slots.assign(payload.begin() + 2 * T, payload.begin() + 3 * T);
        batch.logit_rows.assign(payload.begin() + 3 * T, payload.end());
        exec.forward_follower(batch, h[3] != 0);
    }
}

}  // namespace

ServeFront::ServeFront(const Job& job, const ApiLimits& limits)
    : queue((size_t)job.serve.max_queue),
      http(HttpSettings{job.serve.host, job.serve.port, job.serve.api_key, std::min(job.run.max_batch + job.serve.max_queue + 16, 512),
                        job.serve.allow_refit},
           limits, queue, metrics, refits) {
    port = http.start();
    model_name = limits.model_name;
}

std::unique_ptr<ServeFront> open_serve_front(const Job& job, int64_t vocab, int64_t max_seq_len, const TextTools& text) {
    ApiLimits limits;
    limits.model_name = job.serve.model_name;
    limits.vocab = vocab;
    limits.max_seq_len = max_seq_len;
    limits.default_max_tokens = job.run.max_new_tokens;
    limits.default_temperature = job.run.sampling.temperature;
    limits.default_top_k = job.run.sampling.top_k;
    limits.default_top_p = job.run.sampling.top_p;
    limits.default_presence_penalty = job.run.sampling.presence_penalty;
    limits.default_frequency_penalty = job.run.sampling.frequency_penalty;
    limits.default_repetition_penalty = job.run.sampling.repetition_penalty;
    limits.text = &text;
    auto front = std::make_unique<ServeFront>(job, limits);
    // An IPv6 address in brackets, as a URL writes it (tpx refit takes the URL as printed).
    const std::string host = job.serve.host.find(':') != std::string::npos ? "[" + job.serve.host + "]" : job.serve.host;
    log_info("serve: listening on http://", host, ":", front->port, " (GET /health answers 503 until the model is loaded)");
    return front;
}

int serve_stop_asked() { return g_signal; }

void install_serve_signals() {
    struct sigaction sa = {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int sig : kServeStopSignals) sigaction(sig, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);  // a client gone mid-answer is a failed write, not the end of rank 0
}

void serve(Executor& exec, MpiCommunicator& comm, ServeFront* front, const ServeSettings& settings) {
    // Installed before loading (a signal during the load drains too); a library initialised since
    // (the GPU backend's) may have put its own handler in place: ours again, and said so.
    for (int sig : kServeStopSignals) {
        struct sigaction now = {};
        if (sigaction(sig, nullptr, &now) == 0 && now.sa_handler != on_signal)
            log_info("serve: the ", strsignal(sig), " handler had been replaced while loading; restored");
    }
    install_serve_signals();
    Peer mine;
    mine.pid = (int32_t)getpid();
    std::snprintf(mine.host, sizeof(mine.host), "%s", identity().host.c_str());
    std::vector<Peer> peers(comm.world());
    comm.all_gather_bytes(&mine, sizeof(mine), peers.data());
    if (comm.rank() != 0) return follow(exec, comm, settings);
    if (settings.ready_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(settings.ready_delay_ms));
    front->http.set_ready();
    Scheduler scheduler(exec, comm, *front, settings);
    log_info("serve: ready: model '", front->model_name, "' on port ", front->port, ", ", settings.slots, " KV slots, token choices on ",
             scheduler.choice_threads(), " threads (the cores rank 0 may use, at most ", StepRows::kMaxThreads, ")");
    scheduler.run(peers);
    front->http.stop();
    log_info("serve: stopped");
}

}  // namespace tpx
