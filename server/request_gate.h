// Where `tpx serve`'s connections wait, in one thread of their own, until their request has
// arrived: its head whole and well formed, and a body of up to GateLimits::body_bytes whole. Only
// then does a thread of the HTTP pool take the connection, with the bytes read so far.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace tpx {

struct GateLimits {
    size_t head_bytes = 32 << 10;       // request line and headers with their CRLFs: 431 past it
    size_t line_bytes = (8 << 10) - 2;  // a header line (cpp-httplib reads 8 KiB with its CRLF): 431 past it
    int header_lines = 100;             // 431 past it
    double head_s = 10;                 // from the accept to the head's end: 408 past it
    double request_s = 30;              // to the end of the request's body (read here or by the pool): 408 past it
    size_t body_bytes = 1 << 20;        // bodies up to this are waited for here; longer ones by the pool thread
    size_t buffered_bytes = 256 << 20;  // all waiting connections' bytes: 503 for one that would pass it
    int connections = 4096;             // waiting at once: 503 past it (fewer where the descriptors allow fewer)
    int per_address = 256;              // waiting at once from one client address: 503 past it
    std::string api_key;                // when set, a body is waited for (and 100 Continue sent) only where the head's
                                        // Authorization carries it (bearer_matches): the others get their 401 unread
};

// Raises this process's soft limit on descriptors to its hard one and bounds `limits`'
// connections by what is left of it past `reserve` (the pool's connections, files, NCCL).
GateLimits fit_to_descriptors(GateLimits limits, int reserve);

// A request head (up to and including its blank line) checked as RFC 9112 asks of a server: a
// request target without control characters or a fragment, CRLF line ends only, no NUL or bare CR, no obs-fold,
// header names of token characters right up to their colon, values of visible characters, spaces
// and tabs, a Host header in HTTP/1.1, at most one Content-Length, a plain decimal number, and not
// beside a Transfer-Encoding; at most limits.header_lines header lines of limits.line_bytes. `status` is 0 when it passes, else 400 or
// 431 with `why`. Of a head that passes: content_length (else -1), whether it is HTTP/1.1, a POST
// and has a Content-Encoding other than "identity", and its Authorization header's value, each
// as the server's handlers read them (cpp-httplib's get_header_value: the first header of the name
// whose value is not empty).
struct HeadCheck {
    int status = 0;
    std::string why;
    int64_t content_length = -1;
    bool http11 = false, post = false, encoded = false;
    std::string authorization;
};
HeadCheck check_request_head(const std::string& head, const GateLimits& limits);

// A request line's absolute-form target ("http://host:port/path?query", which RFC 9112 3.2.2 asks
// a server to accept, though clients send it to proxies), rewritten in `bytes` as its origin form
// ("/path?query"; "/" where it has no path), the only form cpp-httplib routes; other targets are
// left as they are. Returns how many bytes shorter `bytes` became.
size_t to_origin_form(std::string& bytes);

// What the gate hands on: the socket (blocking again), the request's bytes read so far (its
// head first) and when the request's reading must end (accept + request_s).
struct ArrivedRequest {
    int fd = -1;
    std::string bytes;
    std::chrono::steady_clock::time_point read_deadline;
};

class RequestGate {
public:
    // ready: a connection's request is here; the callee owns the socket from then on and gives it
    // back through close_gracefully. refused(status): the gate answered a connection itself
    // (400, 408, 431 or 503) and closed it. Both run on the gate's thread.
    RequestGate(GateLimits limits, std::function<void(ArrivedRequest)> ready, std::function<void(int status)> refused);
    ~RequestGate();
    RequestGate(const RequestGate&) = delete;
    RequestGate& operator=(const RequestGate&) = delete;

    // A newly accepted connection (any thread).
    void add(int fd);
    // An answered connection: its writing side shut, what its client still sends read and dropped
    // for up to 2 s (closing with unread bytes would reset it, and a client could lose the answer),
    // then closed. After stop(), closed at once.
    void close_gracefully(int fd);
    // Every connection still waiting (or lingering) is closed and the thread ends; add() closes
    // the connections it is given from then on. Idempotent.
    void stop();

private:
    struct Conn;
    bool hand_over(int fd, bool answered);
    void run();
    void take_new();
    void on_readable(int fd, Conn& c);
    bool scan_head(int fd, Conn& c);
    void hand_on(int fd, Conn& c);
    void refuse(int fd, Conn& c, int status, const std::string& message, const std::string& code);
    void linger(int fd, Conn& c);
    void drop(int fd);
    void expire(std::chrono::steady_clock::time_point now);

    GateLimits limits_;
    std::function<void(ArrivedRequest)> ready_;
    std::function<void(int)> refused_;
    int epoll_ = -1, wake_ = -1;  // the epoll set, and an eventfd in it that add/close_gracefully/stop raise
    std::mutex mutex_;
    std::vector<std::pair<int, bool>> incoming_;  // (fd, true: to linger) handed over by other threads
    bool stopping_ = false;
    // Owned by the gate's thread:
    std::map<int, std::unique_ptr<Conn>> conns_;  // waiting and lingering
    int waiting_ = 0;                             // of conns_, those waiting for their request
    std::map<std::string, int> per_address_;      // waiting, by client address
    size_t buffered_ = 0;
    std::thread thread_;
};

}  // namespace tpx
