// cpp-httplib's server with its connections taken through a RequestGate: the accept loop's task
// hands the socket to the gate and returns (no pool thread waits on a client's bytes), and a pool
// thread serves the request once the gate has it, over a stream that first gives the bytes the
// gate read. One request a connection ("Connection: close" on every answer): the next request a
// client sends goes through the gate on a connection of its own, and nothing sent behind a
// request (pipelined, or hidden past a short read) is ever read as one.
#pragma once

#include <httplib.h>

#include <atomic>
#include <functional>

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
    int gate_waiting() const { return gate_.waiting(); }

private:
    bool process_and_close_socket(socket_t sock) override;
    void serve(ArrivedRequest a);

    std::atomic<httplib::TaskQueue*> pool_{nullptr};
    RequestGate gate_;
};

}  // namespace tpx
