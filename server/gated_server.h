// cpp-httplib's server with its connections taken through a RequestGate: the accept loop hands
// each socket to the gate on its own thread, and a pool thread serves the request once the gate
// has it, over a stream that first gives the bytes the gate read. One request a connection
// ("Connection: close" on every answer), so that every request passes the gate and nothing sent
// behind one is read as another.
#pragma once

#include <httplib.h>

#include <functional>
#include <mutex>

#include "server/request_gate.h"

namespace tpx {

class GatedServer : public httplib::Server {
public:
    // threads: the pool's size; refused(status): an answer the gate gave itself (a metric).
    GatedServer(int threads, GateLimits limits, std::function<void(int status)> refused);
    ~GatedServer() override;
    // Closes every connection still waiting in the gate (no request taken from then on); before
    // stop(), whose pool then only finishes the requests it has.
    void stop_gate() { gate_.stop(); }
    // The listening socket's queue of connections not yet accepted set to 1024 (cpp-httplib 0.11's
    // is 5: a burst of connections saw some wait seconds, or never be taken). After bind.
    void widen_backlog();
    // The socket of the request this thread serves (its handler, and the content provider that
    // writes a stream, run on it), or -1: a handler looks at it to see its client hang up
    // (peer_hung_up); it stays open, and its number this request's, until the answer is written.
    static int current_socket();

private:
    class Queue;
    bool process_and_close_socket(socket_t sock) override;
    void serve(ArrivedRequest a);

    std::mutex pool_mutex_;
    httplib::ThreadPool* pool_ = nullptr;  // the running Queue's, else nullptr (requests then closed)
    RequestGate gate_;
};

}  // namespace tpx
