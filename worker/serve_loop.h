// `tpx-worker --serve`: continuous batching over every rank. Rank 0 runs the HTTP server
// (server/) and the scheduler: each step it admits queued requests into free KV slots, builds
// one TokenBatch of prefill chunks and decode tokens, broadcasts it, runs it and hands the
// tokens back; the other ranks run each broadcast step until a shutdown message. A refit
// (worker/refit.h) is a step of its own: admission pauses, the running sequences finish (or are
// aborted), every rank reads the new weights in place, and admission resumes. Only the
// thread that calls serve() touches MPI; an idle rank 0 broadcasts a heartbeat every second so
// that no follower waits out the collective timeout.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "jobs/job.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/request.h"
#include "text/text_tools.h"
#include "worker/executor.h"
#include "worker/mpi_comm.h"
#include "worker/refit.h"

namespace tpx {

// Rank 0's front: the queue, the metrics and the listening HTTP server (answering 503 until
// the model is loaded).
struct ServeFront {
    ServeFront(const Job& job, const ApiLimits& limits);
    RequestQueue queue;
    ServeMetrics metrics;
    RefitDesk refits;  // (before http, which refers to it)
    HttpServer http;
    int port = 0;
    std::string model_name;
};

// Rank 0, before loading: binds [serve] host:port and says where it listens.
std::unique_ptr<ServeFront> open_serve_front(const Job& job, int64_t vocab, int64_t max_seq_len, const TextTools& text);

struct ServeSettings {
    int64_t slots = 8;           // run.max_batch
    int64_t prefill_chunk = 256;  // [serve] prefill_chunk
    std::vector<int64_t> eos;
    const Tokenizer* tokenizer = nullptr;  // rank 0; null = outputs as ids only
    double grace_s = 30;         // SIGTERM (or SIGUSR1 from `tpx serve`): time to finish what is in flight
    int step_delay_ms = 0;       // a pause per step (a test aid)
    int ready_delay_ms = 0;      // stay "loading" (503) this long after loading (a test aid)
    RefitReference refit;        // what POST /v1/admin/refit checks a new checkpoint against (every rank)
};

// Installs the serve mode's signal handling (SIGTERM, SIGUSR1, SIGINT and SIGHUP ask rank 0 to
// drain; the followers wait for its shutdown message). Call before loading, on every rank.
void install_serve_signals();

// The signal that asked this rank to stop serving (SIGTERM, SIGUSR1), or 0.
int serve_stop_asked();

// Collective: rank 0 passes its front, the others null. Returns when rank 0 has drained (after
// a signal) and told every rank to stop; throws when a step fails (rank 0 first answers every
// waiting call with 500 and the message).
void serve(Executor& exec, MpiCommunicator& comm, ServeFront* front, const ServeSettings& settings);

}  // namespace tpx
