// cpp-httplib's server behind the RequestGate (see gated_server.h).
#include "server/gated_server.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "server/connection.h"

namespace tpx {
namespace {

using Clock = std::chrono::steady_clock;

thread_local int serving = -1;  // GatedServer::current_socket

// The socket as cpp-httplib's own stream reads and writes it (each wait up to 5 s, its read and
// write timeouts), after the bytes the gate read; reading past the request's deadline fails.
class GateStream : public httplib::Stream {
public:
    explicit GateStream(ArrivedRequest a) : a_(std::move(a)) {}

    bool is_readable() const override { return at_ < a_.bytes.size() || wait(POLLIN, true); }
    bool is_writable() const override { return wait(POLLOUT, false); }

    ssize_t read(char* ptr, size_t size) override {
        if (at_ < a_.bytes.size()) {
            const size_t n = std::min(size, a_.bytes.size() - at_);
            a_.bytes.copy(ptr, n, at_);
            at_ += n;
            return (ssize_t)n;
        }
        if (!wait(POLLIN, true)) return -1;
        ssize_t got;
        do got = recv(a_.fd, ptr, size, 0);
        while (got < 0 && errno == EINTR);
        return got;
    }

    ssize_t write(const char* ptr, size_t size) override {
        if (!wait(POLLOUT, false)) return -1;
        ssize_t sent;
        do sent = send(a_.fd, ptr, size, MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        return sent;
    }

    void get_remote_ip_and_port(std::string& ip, int& port) const override { socket_address(a_.fd, true, ip, port); }
    void get_local_ip_and_port(std::string& ip, int& port) const override { socket_address(a_.fd, false, ip, port); }
    socket_t socket() const override { return a_.fd; }

private:
    // Up to 5 s for the socket to be ready; reading, no later than the request's deadline.
    bool wait(short what, bool reading) const {
        auto until = Clock::now() + std::chrono::seconds(5);
        if (reading) until = std::min(until, a_.read_deadline);
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
            if (left <= 0) return false;
            pollfd p{a_.fd, what, 0};
            const int n = poll(&p, 1, (int)left);
            if (n > 0) return true;
            if (n == 0 || errno != EINTR) return false;
        }
    }

    ArrivedRequest a_;
    size_t at_ = 0;
};

}  // namespace

// What cpp-httplib's accept loop is given as its task queue: its one task, a new connection, runs
// at once on the loop's thread (the socket into the gate: no pool thread is needed to take a
// connection); the requests the gate hands on run on the pool. cpp-httplib shuts it down and
// deletes it when the loop ends, for whatever reason: the gate is stopped first, so that nothing
// is handed to a pool that is gone.
class GatedServer::Queue : public httplib::TaskQueue {
public:
    Queue(GatedServer& server, size_t threads) : server_(server), pool_(threads) {
        std::lock_guard<std::mutex> lock(server_.pool_mutex_);
        server_.pool_ = &pool_;
    }
    void enqueue(std::function<void()> fn) override { fn(); }
    void shutdown() override {
        server_.gate_.stop();
        {
            std::lock_guard<std::mutex> lock(server_.pool_mutex_);
            server_.pool_ = nullptr;
        }
        pool_.shutdown();
    }

private:
    GatedServer& server_;
    httplib::ThreadPool pool_;
};

GatedServer::GatedServer(int threads, GateLimits limits, std::function<void(int)> refused)
    : gate_(
          fit_to_descriptors(limits, threads + 256),
          [this](ArrivedRequest a) {
              std::lock_guard<std::mutex> lock(pool_mutex_);
              if (!pool_) return gate_.close_gracefully(a.fd);
              auto shared = std::make_shared<ArrivedRequest>(std::move(a));
              pool_->enqueue([this, shared] { serve(std::move(*shared)); });
          },
          std::move(refused)) {
    new_task_queue = [this, threads] { return new Queue(*this, (size_t)threads); };
}

GatedServer::~GatedServer() { gate_.stop(); }

void GatedServer::widen_backlog() { ::listen(svr_sock_, 1024); }

// The accept loop's task: the connection to the gate.
bool GatedServer::process_and_close_socket(socket_t sock) {
    gate_.add(sock);
    return true;
}

int GatedServer::current_socket() { return serving; }

void GatedServer::serve(ArrivedRequest a) {
    const int fd = a.fd;
    serving = fd;
    {
        GateStream stream(std::move(a));
        bool closed = false;
        process_request(stream, true, closed, nullptr);
    }
    serving = -1;
    gate_.close_gracefully(fd);
}

}  // namespace tpx
