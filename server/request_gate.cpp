// The connections' waiting room (see request_gate.h): one thread, an epoll set, a buffer a
// connection.
#include "server/request_gate.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "server/auth.h"
#include "server/connection.h"
#include "server/openai_api.h"

namespace tpx {
namespace {

using Clock = std::chrono::steady_clock;

// RFC 9110 5.6.2's token characters (header names).
bool tchar(unsigned char c) {
    return std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

// A header value's characters: visible ones, obs-text, space and tab.
bool value_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

bool iequals(const std::string& a, const char* b) {
    const size_t n = std::strlen(b);
    if (a.size() != n) return false;
    for (size_t i = 0; i < n; ++i)
        if (std::tolower((unsigned char)a[i]) != std::tolower((unsigned char)b[i])) return false;
    return true;
}

std::string trim_ows(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// Every '%' in a header value of the head bytes[0, head_end) written as "%25": cpp-httplib
// (0.11) percent-decodes header values (not names, nor here the request line, which it decodes as
// a target), which would hand the handlers "Bearer kA" for a client's "Bearer k%41" (and never
// the key "k%41" itself); so escaped, each value reaches them as sent. One pass; head_end moves
// with the head's end.
void keep_header_values(std::string& bytes, size_t& head_end) {
    const size_t first = bytes.find("\r\n");
    if (std::find(bytes.begin() + first, bytes.begin() + head_end, '%') == bytes.begin() + head_end) return;
    std::string out;
    out.reserve(bytes.size() + 2 * (head_end - first));
    out.append(bytes, 0, first);
    bool value = false;  // past the line's colon
    for (size_t i = first; i < head_end; ++i) {
        const char ch = bytes[i];
        out += ch;
        if (ch == '\n') value = false;
        else if (ch == ':') value = true;
        else if (ch == '%' && value) out += "25";
    }
    out.append(bytes, head_end, std::string::npos);
    head_end += out.size() - bytes.size();
    bytes.swap(out);
}

// Takes every header line that drop(name, value) picks (the value trimmed and lowercased) out of
// the head bytes[0, head_end); whether there was one.
template <typename Drop>
bool erase_header_lines(std::string& bytes, size_t& head_end, const Drop& drop) {
    bool found = false;
    for (size_t at = bytes.find("\r\n"); at != std::string::npos && at + 2 < head_end;) {
        const size_t next = bytes.find("\r\n", at + 2);
        const std::string line = bytes.substr(at + 2, next - at - 2);
        const size_t colon = line.find(':');
        std::string value = colon == std::string::npos ? "" : trim_ows(line.substr(colon + 1));
        for (char& ch : value) ch = (char)std::tolower((unsigned char)ch);
        if (colon == std::string::npos || !drop(line.substr(0, colon), value)) {
            at = next;
            continue;
        }
        bytes.erase(at + 2, next - at);
        head_end -= next - at;
        found = true;
    }
    return found;
}

bool iprefix(const std::string& s, const char* prefix) {
    const size_t n = std::strlen(prefix);
    return s.size() >= n && iequals(s.substr(0, n), prefix);
}

const char* reason(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    default: return "Service Unavailable";
    }
}

}  // namespace

GateLimits fit_to_descriptors(GateLimits limits, int reserve) {
    rlimit r{};
    if (getrlimit(RLIMIT_NOFILE, &r) != 0) return limits;
    if (r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &r) != 0) getrlimit(RLIMIT_NOFILE, &r);
    }
    const int64_t left = r.rlim_cur == RLIM_INFINITY ? limits.connections : (int64_t)r.rlim_cur - reserve;
    limits.connections = (int)std::max<int64_t>(16, std::min<int64_t>(limits.connections, left));
    limits.per_address = std::min(limits.per_address, limits.connections);
    return limits;
}

size_t to_origin_form(std::string& bytes) {
    const size_t sp1 = bytes.find(' ');
    const size_t sp2 = sp1 == std::string::npos ? std::string::npos : bytes.find(' ', sp1 + 1);
    const size_t eol = bytes.find("\r\n");
    if (sp2 == std::string::npos || (eol != std::string::npos && sp2 > eol)) return 0;
    const std::string target = bytes.substr(sp1 + 1, sp2 - sp1 - 1);
    const size_t scheme = iprefix(target, "http://") ? 7 : iprefix(target, "https://") ? 8 : 0;
    if (!scheme) return 0;
    const size_t path = target.find_first_of("/?#", scheme);
    std::string origin = path == std::string::npos ? "/" : target.substr(path);
    if (origin[0] != '/') origin.insert(0, "/");
    bytes.replace(sp1 + 1, target.size(), origin);
    return target.size() - origin.size();
}

HeadCheck check_request_head(const std::string& head, const GateLimits& limits) {
    HeadCheck r;
    auto fail = [&](int status, const std::string& why) {
        r.status = status, r.why = why, r.content_length = -1;
        return r;
    };
    for (size_t i = 0; i < head.size(); ++i) {
        if (head[i] == '\0') return fail(400, "the request's head holds a NUL byte");
        if (head[i] == '\n' && (i == 0 || head[i - 1] != '\r')) return fail(400, "a line of the request's head ends in a bare LF (CRLF is required)");
        if (head[i] == '\r' && (i + 1 >= head.size() || head[i + 1] != '\n')) return fail(400, "the request's head holds a bare CR");
    }
    size_t at = head.find("\r\n");
    const std::string request_line = head.substr(0, at);
    const size_t sp1 = request_line.find(' '), sp2 = request_line.rfind(' ');
    const std::string version = sp2 == std::string::npos ? "" : request_line.substr(sp2 + 1);
    if (sp1 == std::string::npos || sp1 == 0 || sp2 <= sp1 + 1 || request_line.find(' ', sp1 + 1) != sp2 ||
        (version != "HTTP/1.1" && version != "HTTP/1.0"))
        return fail(400, "the request line is not 'METHOD TARGET HTTP/1.1' (one space between each, HTTP/1.0 or 1.1)");
    for (size_t i = sp1 + 1; i < sp2; ++i)
        if ((unsigned char)request_line[i] < 0x21 || request_line[i] == 0x7f || request_line[i] == '#')
            return fail(400, "the request target holds a control character or a '#' (no request carries a fragment)");
    const bool http11 = r.http11 = version == "HTTP/1.1";
    r.post = request_line.compare(0, sp1, "POST") == 0;
    int lines = 0, hosts = 0, lengths = 0;
    bool chunked = false, encoding_seen = false;
    std::string length;
    while (at != std::string::npos && at + 2 < head.size()) {
        const size_t next = head.find("\r\n", at + 2);
        const std::string line = head.substr(at + 2, next - at - 2);
        at = next;
        if (line.empty()) break;  // the blank line that ends the head
        if (++lines > limits.header_lines)
            return fail(431, "the request has more than " + std::to_string(limits.header_lines) + " header lines");
        const size_t colon = line.find(':');
        const size_t escapes = colon == std::string::npos ? 0 : (size_t)std::count(line.begin() + (std::ptrdiff_t)colon, line.end(), '%');
        if (line.size() + 2 * escapes > limits.line_bytes)  // (a value's '%' escaped: keep_header_values)
            return fail(431, "a header line is longer than " + std::to_string(limits.line_bytes) + " bytes (a '%' in a value counting 3)");
        if (line[0] == ' ' || line[0] == '\t') return fail(400, "a header line is folded onto the one before it (obs-fold)");
        if (colon == std::string::npos) return fail(400, "a header line has no colon");
        if (colon == 0) return fail(400, "a header line has an empty name");
        const std::string name = line.substr(0, colon);
        for (unsigned char c : name)
            if (!tchar(c)) return fail(400, "the header name '" + name + "' holds a character no header name may (a space before its colon?)");
        for (size_t i = colon + 1; i < line.size(); ++i)
            if (!value_char((unsigned char)line[i])) return fail(400, "the value of header '" + name + "' holds a control character");
        if (iequals(name, "Host")) ++hosts;
        if (iequals(name, "Transfer-Encoding")) chunked = true;
        if (iequals(name, "Content-Length")) ++lengths, length = trim_ows(line.substr(colon + 1));
        // Content-Encoding and Authorization as the server's handlers read them: cpp-httplib drops
        // a header whose value is empty, and get_header_value gives the first of the others.
        const std::string value = trim_ows(line.substr(colon + 1));
        if (iequals(name, "Content-Encoding") && !value.empty() && !encoding_seen) encoding_seen = true, r.encoded = value != "identity";
        if (iequals(name, "Authorization") && r.authorization.empty()) r.authorization = value;
    }
    if (http11 && hosts != 1) return fail(400, hosts ? "the request has more than one Host header" : "an HTTP/1.1 request needs a Host header");
    if (lengths > 1) return fail(400, "the request's body length is ambiguous (more than one Content-Length header)");
    if (lengths == 1 && chunked) return fail(400, "the request's body length is ambiguous (a Content-Length beside a Transfer-Encoding)");
    if (lengths == 1) {
        if (length.empty() || length.size() > 18 || length.find_first_not_of("0123456789") != std::string::npos)
            return fail(400, "the request's body length is ambiguous (the Content-Length '" + length + "' is not one decimal number of up to 18 digits)");
        r.content_length = std::stoll(length);
    }
    return r;
}

struct RequestGate::Conn {
    std::string bytes;
    std::string address;  // the client's, while waiting
    Clock::time_point accepted, deadline;
    bool lingering = false;
    size_t scanned = 0;                   // bytes of the head checked so far, as they came
    size_t line_start = 0;                // where the line being read began
    int lines = 0;                        // line ends seen in the head
    size_t head_end = std::string::npos;  // past the head's blank line, once seen
    int64_t content_length = -1;
    bool wait_body = false;  // the body is read here (a POST's of up to the limit, with the API key where one is set)
};

RequestGate::RequestGate(GateLimits limits, std::function<void(ArrivedRequest)> ready, std::function<void(int)> refused)
    : limits_(limits), ready_(std::move(ready)), refused_(std::move(refused)) {
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    wake_ = epoll_ < 0 ? -1 : eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = wake_;
    if (wake_ < 0 || epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &ev) != 0) {
        const std::string why = std::strerror(errno);
        if (wake_ >= 0) close(wake_);
        if (epoll_ >= 0) close(epoll_);
        throw Error("serve: cannot make the connections' epoll set: " + why);
    }
    thread_ = std::thread([this] { run(); });
}

RequestGate::~RequestGate() {
    stop();
    close(epoll_);
    close(wake_);
}

// fd to the gate's thread (answered: to linger); false once the gate stops.
bool RequestGate::hand_over(int fd, bool answered) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return false;
    incoming_.push_back({fd, answered});
    const uint64_t one = 1;
    (void)!write(wake_, &one, sizeof one);
    return true;
}

void RequestGate::add(int fd) {
    if (hand_over(fd, false)) return;
    shutdown(fd, SHUT_RDWR);
    close(fd);
}

void RequestGate::close_gracefully(int fd) {
    if (hand_over(fd, true)) return;
    shutdown(fd, SHUT_WR);
    char drop[4096];
    for (int i = 0; i < 16 && recv(fd, drop, sizeof drop, MSG_DONTWAIT) > 0; ++i) {
    }
    close(fd);
}

void RequestGate::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) return;
        stopping_ = true;
        const uint64_t one = 1;
        (void)!write(wake_, &one, sizeof one);
    }
    if (thread_.joinable()) thread_.join();
}

void RequestGate::run() {
    epoll_event events[64];
    for (;;) {
        const int n = epoll_wait(epoll_, events, 64, 100);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (stopping_) break;
        }
        for (int i = 0; i < n; ++i) {
            const int fd = events[i].data.fd;
            if (fd == wake_) {
                uint64_t count = 0;
                (void)!read(wake_, &count, sizeof count);
                take_new();
                continue;
            }
            auto it = conns_.find(fd);
            if (it != conns_.end()) on_readable(fd, *it->second);
        }
        expire(Clock::now());
    }
    take_new();  // (connections handed over as the gate stopped are closed with the rest)
    while (!conns_.empty()) drop(conns_.begin()->first);
}

// Connections handed over by other threads: new ones into the epoll set (refused at once past the
// limits), answered ones to linger.
void RequestGate::take_new() {
    std::vector<std::pair<int, bool>> incoming;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        incoming.swap(incoming_);
    }
    const Clock::time_point now = Clock::now();
    for (auto [fd, answered] : incoming) {
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
            close(fd);
            continue;
        }
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.fd = fd;
        if (epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            continue;
        }
        auto conn = std::make_unique<Conn>();
        Conn& c = *conn;
        c.accepted = now;
        c.deadline = now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limits_.head_s));
        conns_[fd] = std::move(conn);
        if (answered) {
            c.lingering = true;
            linger(fd, c);
            continue;
        }
        int port = 0;
        if (!socket_address(fd, true, c.address, port)) c.address = "?";
        ++waiting_;
        const int from_address = ++per_address_[c.address];
        if (waiting_ > limits_.connections || from_address > limits_.per_address)
            refuse(fd, c, 503, "too many connections are waiting to send their request; retry later", "server_busy");
    }
}

void RequestGate::on_readable(int fd, Conn& c) {
    char buf[16384];
    for (int reads = 0; reads < 16; ++reads) {  // (then the others' turn: epoll reports it again)
        const ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (got <= 0) return drop(fd);  // the client went away (or, lingering, read its answer and closed)
        if (c.lingering) continue;      // read and dropped
        if (buffered_ + (size_t)got > limits_.buffered_bytes)
            return refuse(fd, c, 503, "the server holds too many requests still arriving; retry later", "server_busy");
        c.bytes.append(buf, (size_t)got);
        buffered_ += (size_t)got;
        if (c.head_end == std::string::npos && !scan_head(fd, c)) return;  // refused
        if (c.head_end == std::string::npos) continue;
        // The head is here: the body too where the gate waits for it.
        if (!c.wait_body || c.bytes.size() >= c.head_end + (size_t)c.content_length) return hand_on(fd, c);
    }
}

// The head's new bytes checked as they come (a bare LF, a bare CR or a NUL, a header line or the
// whole head too long, too many lines: refused at once), and the head checked whole at its end.
// False where the connection was refused.
bool RequestGate::scan_head(int fd, Conn& c) {
    // Empty lines before the request line are ignored, as RFC 9112 2.2 asks of a server.
    size_t blank = 0;
    while (c.lines == 0 && c.bytes.compare(blank, 2, "\r\n") == 0) blank += 2;
    if (blank) {
        c.bytes.erase(0, blank);
        buffered_ -= blank;
        c.scanned = c.line_start = 0;
    }
    const std::string& b = c.bytes;
    const std::string too_long = "the request line and headers are longer than " + std::to_string(limits_.head_bytes) + " bytes";
    for (size_t i = c.scanned; i < b.size(); ++i) {
        if (b[i] == '\0') return refuse(fd, c, 400, "the request's head holds a NUL byte", "invalid_request"), false;
        if (i > 0 && b[i - 1] == '\r' && b[i] != '\n') return refuse(fd, c, 400, "the request's head holds a bare CR", "invalid_request"), false;
        if (b[i] != '\n') continue;
        if (i == 0 || b[i - 1] != '\r')
            return refuse(fd, c, 400, "a line of the request's head ends in a bare LF (CRLF is required)", "invalid_request"), false;
        if (c.lines > 0 && i - c.line_start > limits_.line_bytes + 1)
            return refuse(fd, c, 431, "a header line is longer than " + std::to_string(limits_.line_bytes) + " bytes", "headers_too_large"),
                   false;
        if (++c.lines > limits_.header_lines + 2)  // the request line, the header lines, the blank line
            return refuse(fd, c, 431, "the request has more than " + std::to_string(limits_.header_lines) + " header lines", "headers_too_large"),
                   false;
        if (i - c.line_start == 1) {  // the blank line: the head's end
            if (i + 1 > limits_.head_bytes) return refuse(fd, c, 431, too_long, "headers_too_large"), false;
            const HeadCheck check = check_request_head(b.substr(0, i + 1), limits_);
            if (check.status) return refuse(fd, c, check.status, check.why, check.status == 431 ? "headers_too_large" : "invalid_request"), false;
            // The bytes the head loses here (an absolute-form target, Content-Type and Expect lines) leave the
            // gate's count with them, and those the escapes add join it.
            const size_t before = c.bytes.size();
            c.head_end = i + 1 - to_origin_form(c.bytes);
            keep_header_values(c.bytes, c.head_end);
            c.content_length = check.content_length;
            c.deadline = c.accepted + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limits_.request_s));
            // The body is waited for here where it can be taken: a POST's (any other method with a
            // body is a 400), of up to the limit (past it a 413), not encoded (a 415), carrying the
            // API key where one is set (else a 401): those answers come from the pool's thread
            // before it reads a body, and the lingering close drops what follows.
            c.wait_body = c.content_length > 0 && (size_t)c.content_length <= limits_.body_bytes && check.post && !check.encoded &&
                          (limits_.api_key.empty() || bearer_matches(check.authorization, limits_.api_key));
            // Every body is read as JSON whatever its Content-Type says (curl -d sends
            // application/x-www-form-urlencoded): the lines are taken out, since cpp-httplib 0.11
            // would read such a body as a form (refusing one past 8 KiB with a bare 413) and a
            // multipart/form-data one as parts (a 400 for the head).
            erase_header_lines(c.bytes, c.head_end, [](const std::string& name, const std::string&) { return iequals(name, "Content-Type"); });
            // "Expect: 100-continue" is answered here or not at all (the lines taken out of the
            // head, so that the pool's thread sends no 100): an HTTP/1.1 client whose body is waited
            // for gets its 100 now; an HTTP/1.0 client's expectation is ignored (RFC 9110 10.1.1).
            const auto expect = [](const std::string& name, const std::string& value) { return iequals(name, "Expect") && value == "100-continue"; };
            if (erase_header_lines(c.bytes, c.head_end, expect) && check.http11 && c.wait_body && b.size() < c.head_end + (size_t)c.content_length) {
                static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
                (void)send(fd, kContinue, sizeof kContinue - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            }
            buffered_ += c.bytes.size();
            buffered_ -= before;
            c.scanned = c.head_end;
            return true;
        }
        c.line_start = i + 1;
    }
    c.scanned = b.size();
    if (b.size() > limits_.head_bytes) return refuse(fd, c, 431, too_long, "headers_too_large"), false;
    if (c.lines > 0 && b.size() - c.line_start - (b.back() == '\r') > limits_.line_bytes)  // (a read may end between CR and LF)
        return refuse(fd, c, 431, "a header line is longer than " + std::to_string(limits_.line_bytes) + " bytes", "headers_too_large"), false;
    return true;
}

// The request is here: the socket (blocking again) and its bytes to `ready`.
void RequestGate::hand_on(int fd, Conn& c) {
    ArrivedRequest a;
    a.fd = fd;
    a.bytes = std::move(c.bytes);
    a.read_deadline = c.deadline;
    buffered_ -= a.bytes.size();
    epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
    --waiting_;
    if (--per_address_[c.address] == 0) per_address_.erase(c.address);
    conns_.erase(fd);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    ready_(std::move(a));
}

// The gate's own answer (a small JSON error, as the API's), then the lingering close.
void RequestGate::refuse(int fd, Conn& c, int status, const std::string& message, const std::string& code) {
    const std::string body = error_body(status, message, "", code).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    const std::string text = "HTTP/1.1 " + std::to_string(status) + " " + reason(status) +
                             "\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " + std::to_string(body.size()) +
                             "\r\n\r\n" + body;
    (void)send(fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);  // small: whole into an empty send buffer
    if (refused_) refused_(status);
    linger(fd, c);
}

// From waiting (or just answered) to lingering: the writing side shut, what comes read and dropped
// until the client closes or 2 s pass.
void RequestGate::linger(int fd, Conn& c) {
    buffered_ -= c.bytes.size();
    c.bytes.clear();
    c.bytes.shrink_to_fit();
    if (!c.address.empty()) {
        --waiting_;
        if (--per_address_[c.address] == 0) per_address_.erase(c.address);
        c.address.clear();
    }
    c.lingering = true;
    c.deadline = Clock::now() + std::chrono::seconds(2);
    shutdown(fd, SHUT_WR);
}

// Closed: what the client sent and the gate has not read is read first (closing over unread
// bytes resets the connection, and the client may lose an answer not yet read).
void RequestGate::drop(int fd) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    buffered_ -= c.bytes.size();
    if (!c.address.empty()) {
        --waiting_;
        if (--per_address_[c.address] == 0) per_address_.erase(c.address);
    }
    epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
    char buf[4096];
    for (int i = 0; i < 16 && recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0; ++i) {
    }
    close(fd);
    conns_.erase(it);
}

void RequestGate::expire(Clock::time_point now) {
    std::vector<int> late;
    for (const auto& [fd, c] : conns_)
        if (now >= c->deadline) late.push_back(fd);
    for (int fd : late) {
        Conn& c = *conns_.at(fd);
        if (c.lingering) {
            drop(fd);
            continue;
        }
        refuse(fd, c, 408,
               c.head_end == std::string::npos ? "the request's headers did not arrive within " + std::to_string((int)limits_.head_s) + " s"
                                               : "the request's body did not arrive within " + std::to_string((int)limits_.request_s) + " s",
               "request_timeout");
    }
}

}  // namespace tpx
