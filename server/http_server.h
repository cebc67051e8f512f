// The HTTP side of `tpx serve` on rank 0 (cpp-httplib): routes, the API key, OpenAI's JSON and
// SSE, /health and /metrics. Handlers turn calls into ServeRequests on the queue and wait on
// their channel; they never touch MPI (the scheduler thread owns it).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "server/metrics.h"
#include "server/openai_api.h"
#include "server/request.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace tpx {

class GatedServer;

struct HttpSettings {
    std::string host = "127.0.0.1";
    int port = 8000;      // 0 = any free port
    std::string api_key;  // "" = none
    int threads = 64;     // connections served at once (each waiting call holds one)
    bool allow_refit = true;  // [serve] allow_refit: POST /v1/admin/refit (else 403)
};

class HttpServer {
public:
    HttpServer(HttpSettings settings, ApiLimits limits, RequestQueue& queue, ServeMetrics& metrics, RefitDesk& refits);
    ~HttpServer();

    // Binds and starts serving on a thread of its own; returns the port. Throws Error when the
    // address cannot be bound.
    int start();
    // Calls are answered 503 until the weights are loaded.
    void set_ready() { ready_ = true; }
    // SIGTERM: new calls are answered 503; those already taken are finished.
    void start_draining() { draining_ = true; }
    // Every call still waiting gets `message` as a 500 (a rank failed).
    void fail_all(const std::string& message);
    // Calls whose answer is not yet written in full.
    int in_flight() const { return in_flight_; }
    // Ends the listening thread (after the calls in flight are answered), shutting every
    // connection not inside a handler (idle, or still sending its headers or body).
    void stop();

private:
    // A handler's first step: its connection is inside a call (its body read) until the logger.
    void enter_call(const httplib::Request& req);
    void handle_call(const httplib::Request& req, httplib::Response& res, bool chat);
    // The served model as /v1/models lists it.
    nlohmann::json describe_model() const;
    // POST /v1/admin/refit {"path": ..., "abort": false}: filed for the scheduler, answered when
    // every rank has read the new weights (or refused them).
    void handle_refit(const httplib::Request& req, httplib::Response& res);
    // While draining: the 503's message (the failure that began the drain, where one did).
    std::string shutdown_message();

    HttpSettings settings_;
    ApiLimits limits_;
    RequestQueue& queue_;
    ServeMetrics& metrics_;
    RefitDesk& refits_;
    std::unique_ptr<GatedServer> server_;
    std::thread thread_;
    int port_ = -1;  // the port listened on (start)
    std::mutex busy_mutex_;
    std::set<std::pair<std::string, int>> busy_;  // connections (address_key, port) inside a handler: from enter_call to the logger
    std::atomic<bool> ready_{false}, draining_{false};
    std::atomic<int> in_flight_{0};
    std::mutex channels_mutex_;
    std::set<std::shared_ptr<ResponseChannel>> channels_;  // of calls waiting for their answer
    std::string failure_;  // fail_all's message, once it was called
};

}  // namespace tpx
