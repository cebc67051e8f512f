// The request gate of `tpx serve` (server/request_gate.h): request heads checked as RFC 9112 asks
// a server to (check_request_head), and a running server (tiny-text, one rank, a pool of 18 HTTP
// threads) that keeps answering while more connections than its threads send their headers a
// byte at a time or nothing at all, refuses a long header and many headers before reading them
// whole, answers one request a connection (a request pipelined behind it is not read), and
// counts its own refusals in /metrics.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "server/auth.h"
#include "server/request_gate.h"
#include "serve_process.h"

namespace {

using tpx::check_request_head;
using tpx::HeadCheck;

const std::string kModel = std::string(TPX_SOURCE_DIR) + "/models/tiny-text";

tpx::GateLimits limits(int header_lines) {
    tpx::GateLimits l;
    l.header_lines = header_lines;
    return l;
}

TEST(RequestHead, WellFormedHeadsPass) {
    HeadCheck c = check_request_head("POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-length:  12 \r\nX-A:\r\n\r\n", limits(100));
    EXPECT_EQ(c.status, 0) << c.why;
    EXPECT_EQ(c.content_length, 12);
    c = check_request_head("GET /health HTTP/1.0\r\n\r\n", limits(100));  // HTTP/1.0 needs no Host
    EXPECT_EQ(c.status, 0) << c.why;
    EXPECT_EQ(c.content_length, -1);
    c = check_request_head("GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: \xe2\x9c\x93\tok\r\n\r\n", limits(100));  // obs-text and a tab in a value
    EXPECT_EQ(c.status, 0) << c.why;
}

TEST(RequestHead, MalformedHeadsAreNamed) {
    struct Case {
        std::string head, why;
        int status;
    };
    const std::vector<Case> cases = {
        {"GET / HTTP/1.1\nHost: x\r\n\r\n", "bare LF", 400},
        {"GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n", "bare CR", 400},
        {std::string("GET / HTTP/1.1\r\nHost: x\0\r\n\r\n", 26), "NUL", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", "obs-fold", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", "no colon", 400},
        {"GET /v1/models\t HTTP/1.1\r\nHost: x\r\n\r\n", "control character", 400},
        {"GET /v1/\x7fmodels HTTP/1.1\r\nHost: x\r\n\r\n", "control character", 400},
        {"GET /v1/models#top HTTP/1.1\r\nHost: x\r\n\r\n", "fragment", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", "empty name", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", "a space before its colon", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01\r\n\r\n", "control character", 400},
        {"GET / HTTP/1.1\r\nX-A: a\r\n\r\n", "needs a Host header", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n", "more than one Host", 400},
    };
    for (const Case& c : cases) {
        const HeadCheck r = check_request_head(c.head, limits(100));
        EXPECT_EQ(r.status, c.status) << c.why;
        EXPECT_NE(r.why.find(c.why), std::string::npos) << r.why;
    }
    std::string many = "GET / HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 100; ++i) many += "X-A: b\r\n";
    EXPECT_EQ(check_request_head(many + "\r\n", limits(100)).status, 431) << "101 header lines";
    EXPECT_EQ(check_request_head(many + "\r\n", limits(101)).status, 0);
    EXPECT_EQ(check_request_head("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(8 << 10, 'b') + "\r\n\r\n", limits(100)).status, 431)
        << "a header line past 8 KiB";
    // A body's length that readers could take differently: refused (RFC 9112 6.3).
    for (const char* length : {"Content-Length: 1, 1", "Content-Length: +1", "Content-Length: 0x10",
                               "Content-Length: 1\r\nContent-Length: 1", "Content-Length: 3\r\nTransfer-Encoding: chunked"}) {
        const HeadCheck r = check_request_head(std::string("POST / HTTP/1.1\r\nHost: x\r\n") + length + "\r\n\r\n", limits(100));
        EXPECT_EQ(r.status, 400) << length;
        EXPECT_EQ(r.content_length, -1) << length;
    }
}

// The API key's scheme in any case and after one or more spaces (RFC 9110 11.4); the key byte for byte.
TEST(RequestHead, BearerSchemeInAnyCaseTheKeyExactly) {
    for (const char* yes : {"Bearer k%41", "bearer k%41", "BEARER   k%41"}) EXPECT_TRUE(tpx::bearer_matches(yes, "k%41")) << yes;
    const std::string with_nul("Bearer k%41\0", 12);
    for (const std::string& no : {std::string("Bearer kA"), std::string("Bearer\tk%41"), std::string("Bearerk%41"), std::string("Bearer k%41 "),
                                  std::string("Basic k%41"), std::string("Bearer "), std::string("Bearer"), std::string(), std::string("Bearer k%4"),
                                  std::string("Bearer k%411"), std::string("Bearer K%41"), with_nul})
        EXPECT_FALSE(tpx::bearer_matches(no, "k%41")) << no;
}

// Absolute-form targets (RFC 9112 3.2.2) become origin form; others are left as they are.
TEST(RequestHead, AbsoluteFormTargetsBecomeOriginForm) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"GET http://127.0.0.1:8000/v1/models HTTP/1.1\r\nHost: x\r\n\r\n", "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"POST HTTPS://h/v1/completions?x=1 HTTP/1.1\r\n", "POST /v1/completions?x=1 HTTP/1.1\r\n"},
        {"GET http://h HTTP/1.1\r\n", "GET / HTTP/1.1\r\n"},
        {"GET http://h?q HTTP/1.1\r\n", "GET /?q HTTP/1.1\r\n"},
        {"GET /health HTTP/1.1\r\n", "GET /health HTTP/1.1\r\n"},
        {"OPTIONS * HTTP/1.1\r\n", "OPTIONS * HTTP/1.1\r\n"},
        {"GET ftp://h/x HTTP/1.1\r\n", "GET ftp://h/x HTTP/1.1\r\n"},
        {"GET /a HTTP/1.1\r\nX: http://h/b c\r\n", "GET /a HTTP/1.1\r\nX: http://h/b c\r\n"},
    };
    for (const auto& [in, want] : cases) {
        std::string bytes = in;
        EXPECT_EQ(tpx::to_origin_form(bytes), in.size() - want.size()) << in;
        EXPECT_EQ(bytes, want) << in;
    }
}

// A header line of 8,190 bytes (8 KiB with its CRLF, what cpp-httplib reads of one) passes, one
// more is refused (a '%' counting 3); the head says whether it is HTTP/1.1.
TEST(RequestHead, HeaderLinesUpToWhatCppHttplibReadsAndTheVersion) {
    const std::string line = "X: " + std::string(8190 - 3, 'a');
    HeadCheck c = check_request_head("GET / HTTP/1.1\r\nHost: x\r\n" + line + "\r\n\r\n", tpx::GateLimits{});
    EXPECT_EQ(c.status, 0) << c.why;
    EXPECT_TRUE(c.http11);
    EXPECT_EQ(check_request_head("GET / HTTP/1.1\r\nHost: x\r\n" + line + "a\r\n\r\n", tpx::GateLimits{}).status, 431);
    // A '%' counts 3: the gate hands it on escaped as "%25".
    EXPECT_EQ(check_request_head("GET / HTTP/1.1\r\nHost: x\r\n" + line.substr(0, 8190 - 3) + "%\r\n\r\n", tpx::GateLimits{}).status, 0);
    EXPECT_EQ(check_request_head("GET / HTTP/1.1\r\nHost: x\r\n" + line.substr(0, 8190 - 2) + "%\r\n\r\n", tpx::GateLimits{}).status, 431);
    EXPECT_FALSE(check_request_head("GET / HTTP/1.0\r\n\r\n", tpx::GateLimits{}).http11);
}

// "Expect: 100-continue" through a gate with an API key: a 100 only for an HTTP/1.1 POST body the
// gate waits for, one that carries the key (one 100, however many Expect lines); none for
// HTTP/1.0, nor for a body refused unread (past the limit, chunked, encoded, a GET's, a missing or
// wrong key); the Expect lines never reach the pool's thread, which would send its own 100.
TEST(RequestGate, OneHundredContinueOnlyWhereTheGateWaitsForAnHttp11Body) {
    tpx::GateLimits l;
    l.body_bytes = 1000;
    l.api_key = "k";
    std::mutex mutex;
    std::vector<std::string> handed;
    std::unique_ptr<tpx::RequestGate> gate;
    gate = std::make_unique<tpx::RequestGate>(
        l,
        [&](tpx::ArrivedRequest a) {
            {
                std::lock_guard<std::mutex> lock(mutex);
                handed.push_back(a.bytes);
            }
            gate->close_gracefully(a.fd);
        },
        nullptr);
    struct Case {
        std::string head;
        bool hundred;
        std::string what;
    };
    const std::string expect = "Expect: 100-continue\r\n", key = "authorization:  Bearer k \r\n";
    const std::vector<Case> cases = {
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + key + expect + expect + "Content-Length: 2\r\n\r\n", true, "HTTP/1.1, two Expect lines"},
        {"POST /v1/completions HTTP/1.0\r\n" + key + expect + "Content-Length: 2\r\n\r\n", false, "HTTP/1.0"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + key + expect + "Content-Length: 5000\r\n\r\n", false, "a body past the limit"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + key + expect + "Transfer-Encoding: chunked\r\n\r\n", false, "a chunked body"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer j\r\n" + expect + "Content-Length: 2\r\n\r\n", false, "a wrong key"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + expect + "Content-Length: 2\r\n\r\n", false, "no key"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer j\r\n" + key + expect + "Content-Length: 2\r\n\r\n", false,
         "a wrong key first (the server reads the first)"},
        {"GET /health HTTP/1.1\r\nHost: x\r\n" + key + expect + "Content-Length: 2\r\n\r\n", false, "a GET with a body"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + key + expect + "Content-Encoding: gzip\r\nContent-Length: 2\r\n\r\n", false,
         "an encoded body"},
        // As the server's handlers read the head (cpp-httplib drops a header with an empty value):
        // bodies they take are waited for here, never by a thread of the pool.
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: \r\n" + key + expect + "Content-Length: 2\r\n\r\n", true,
         "an empty Authorization before the key"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + key + expect + "Content-Encoding: identity\r\nContent-Length: 2\r\n\r\n", true,
         "Content-Encoding: identity"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + key + expect + "Content-Encoding:\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\n",
         true, "an empty Content-Encoding"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + key + expect + "Content-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n",
         true, "identity, then gzip (the first is read)"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + key + expect + "Content-Encoding: Identity\r\nContent-Length: 2\r\n\r\n", false,
         "Content-Encoding: Identity (refused as encoded)"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: bearer   k\r\n" + expect + "Content-Length: 2\r\n\r\n", true,
         "the scheme in lower case, three spaces"},
    };
    for (const Case& k : cases) {
        int sv[2];
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        timeval tv{5, 0};
        setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        gate->add(sv[0]);
        ASSERT_EQ(send(sv[1], k.head.data(), k.head.size(), MSG_NOSIGNAL), (ssize_t)k.head.size());
        // All the gate writes to the client (it writes nothing past a 100 here): the 100 is waited
        // for where it is due; elsewhere the body goes after the gate has had time to read the head.
        std::string stream;
        char buf[256];
        if (k.hundred) {
            const ssize_t n = recv(sv[1], buf, sizeof buf, 0);
            if (n > 0) stream.append(buf, (size_t)n);
        } else {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
        (void)send(sv[1], "{}", 2, MSG_NOSIGNAL);
        for (ssize_t r; (r = recv(sv[1], buf, sizeof buf, 0)) > 0;) stream.append(buf, (size_t)r);
        EXPECT_EQ(stream, k.hundred ? "HTTP/1.1 100 Continue\r\n\r\n" : "") << k.what;
        close(sv[1]);
    }
    gate->stop();
    ASSERT_EQ(handed.size(), cases.size());
    for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(handed[i].find("Expect"), std::string::npos) << cases[i].what << ": " << handed[i];
}

// Heads that come in pieces cut at awkward places: inside a CRLF before the request line, between
// the CR and LF of a header line of the longest length, inside the target's scheme, inside an
// Expect line and inside a percent escape. Each is handed on whole (none refused), as one read
// would have been, a header value's '%' escaped.
TEST(RequestGate, HeadsCutAnywhereAreReadAsWhole) {
    std::mutex mutex;
    std::vector<std::string> handed;
    std::atomic<int> refused{0};
    std::unique_ptr<tpx::RequestGate> gate;
    gate = std::make_unique<tpx::RequestGate>(
        tpx::GateLimits{},
        [&](tpx::ArrivedRequest a) {
            {
                std::lock_guard<std::mutex> lock(mutex);
                handed.push_back(a.bytes);
            }
            gate->close_gracefully(a.fd);
        },
        [&](int) { ++refused; });
    const std::string long_line = "X: " + std::string(8190 - 3, 'a');
    const std::vector<std::vector<std::string>> pieces = {
        {"\r", "\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"GET /health HTTP/1.1\r\nHost: x\r\n" + long_line + "\r", "\n\r\n"},
        {"POST htt", "p://h/v1/completions HTTP/1.1\r\nHost: x\r\nExp", "ect: 100-continue\r\nContent-Length: 2\r\n\r\n", "{}"},
        {"GET /v%41 HTTP/1.1\r\nHost: x\r\nX%41: a:%\r\nAuthorization: Bearer k%4", "1%\r\n\r\n"},
    };
    const std::vector<std::string> want = {"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                                           "GET /health HTTP/1.1\r\nHost: x\r\n" + long_line + "\r\n\r\n",
                                           "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                                           // a header value's '%' escaped for cpp-httplib, which decodes them (the target's
                                           // and the names' are left)
                                           "GET /v%41 HTTP/1.1\r\nHost: x\r\nX%41: a:%25\r\nAuthorization: Bearer k%2541%25\r\n\r\n"};
    for (const std::vector<std::string>& request : pieces) {
        int sv[2];
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        timeval tv{5, 0};
        setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        gate->add(sv[0]);
        for (const std::string& piece : request) {
            ASSERT_EQ(send(sv[1], piece.data(), piece.size(), MSG_NOSIGNAL), (ssize_t)piece.size());
            std::this_thread::sleep_for(std::chrono::milliseconds(100));  // each piece its own read
        }
        char buf[256];
        for (ssize_t r; (r = recv(sv[1], buf, sizeof buf, 0)) > 0;) {
        }
        close(sv[1]);
    }
    gate->stop();
    EXPECT_EQ(refused.load(), 0);
    ASSERT_EQ(handed.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(handed[i], want[i]) << "request " << i;
}

// The bytes the gate takes out of a head (an Expect line, an absolute-form target) leave its count
// of the bytes it holds: 300 such requests (about 13 KB taken out) through a gate that may hold 4
// KB are all handed on, none refused as holding too much.
TEST(RequestGate, BytesTakenOutOfHeadsLeaveItsCount) {
    tpx::GateLimits l;
    l.buffered_bytes = 4096;
    std::atomic<int> handed{0}, refused{0};
    std::string first;
    std::unique_ptr<tpx::RequestGate> gate;
    gate = std::make_unique<tpx::RequestGate>(
        l,
        [&](tpx::ArrivedRequest a) {
            if (handed++ == 0) first = a.bytes;
            gate->close_gracefully(a.fd);
        },
        [&](int) { ++refused; });
    for (int i = 0; i < 300; ++i) {
        int sv[2];
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        gate->add(sv[0]);
        const std::string head = "POST http://127.0.0.1:8000/v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                 "Content-Length: 2\r\n\r\n";
        ASSERT_EQ(send(sv[1], head.data(), head.size(), MSG_NOSIGNAL), (ssize_t)head.size());
        char buf[256];
        ASSERT_GT(recv(sv[1], buf, sizeof buf, 0), 0) << "request " << i << ": no 100 Continue";
        ASSERT_EQ(send(sv[1], "{}", 2, MSG_NOSIGNAL), 2);
        for (ssize_t n; (n = recv(sv[1], buf, sizeof buf, 0)) > 0;) {
        }
        close(sv[1]);
    }
    gate->stop();
    EXPECT_EQ(handed.load(), 300);
    EXPECT_EQ(refused.load(), 0);
    EXPECT_EQ(first, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
}

int connect_to(int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons((uint16_t)port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
        close(fd);
        return -1;
    }
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

// Sends `request` (what the server does not read is dropped), then reads until the server closes
// the connection (or 5 s pass without a byte).
std::string http_exchange(int port, const std::string& request) {
    const int fd = connect_to(port);
    if (fd < 0) return "(no connection)";
    for (size_t at = 0; at < request.size();) {
        const ssize_t n = send(fd, request.data() + at, request.size() - at, MSG_NOSIGNAL);
        if (n <= 0) break;  // the server answered and stopped reading
        at += (size_t)n;
    }
    std::string got;
    char buf[4096];
    for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) got.append(buf, (size_t)n);
    close(fd);
    return got;
}

int count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

TEST(ServeGate, SlowAndIdleConnectionsHoldNoThreadAndBadHeadsAreRefused) {
    tpx_test::ServeProcess server("[model]\npath = \"" + kModel + "\"\n[run]\nmax_batch = 1\n[serve]\nport = 0\nmax_queue = 1\n", "",
                                  "serve: ready");
    const int port = std::stoi(server.base().substr(server.base().rfind(':') + 1));
    // 40 connections (the pool has 18 threads): 20 sending their headers a byte every 200 ms, 20 idle.
    std::vector<int> held;
    for (int i = 0; i < 40; ++i) {
        held.push_back(connect_to(port));
        ASSERT_GE(held.back(), 0) << "connection " << i << ": " << std::strerror(errno);
    }
    std::atomic<bool> stop{false};
    std::thread dribble([&] {
        const std::string head = "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + std::string(100, 'a');
        for (size_t i = 0; i < head.size() && !stop; ++i) {
            for (int k = 0; k < 20; ++k) (void)send(held[k], &head[i], 1, MSG_NOSIGNAL);
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    for (int i = 0; i < 3; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::string got = http_exchange(port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
        EXPECT_NE(got.find("Connection: close"), std::string::npos) << "one request a connection\n" << got;
        // (Without the gate each call waited for a pool thread: 5 s and more, as the connections
        // held kept sending.)
        EXPECT_LT(s, 2.0) << "a call waited behind connections that send nothing";
    }
    // A header line past 32 KiB: 431 once that much has come, the rest not read.
    std::string got = http_exchange(port, "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(1 << 20, 'b') + "\r\n\r\n");
    EXPECT_EQ(got.rfind("HTTP/1.1 431", 0), 0u) << got.substr(0, 300);
    EXPECT_NE(got.find("headers_too_large"), std::string::npos) << got.substr(0, 300);
    std::string many = "GET /health HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 1000; ++i) many += "X-A: b\r\n";
    got = http_exchange(port, many + "\r\n");
    EXPECT_EQ(got.rfind("HTTP/1.1 431", 0), 0u) << got.substr(0, 300);
    got = http_exchange(port, "GET /health HTTP/1.1\r\nTransfer-Encoding : chunked\r\nHost: x\r\n\r\n");
    EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got.substr(0, 300);
    EXPECT_NE(got.find("a space before its colon"), std::string::npos) << got;
    // A bare LF is refused as it comes, not after the head's deadline.
    auto t0 = std::chrono::steady_clock::now();
    got = http_exchange(port, "GET /health HTTP/1.1\nHost: x\n\n");
    EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got.substr(0, 300);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
    // A request line with a trailing space (no HTTP/1.1 a reader agrees on): refused.
    got = http_exchange(port, "GET /health HTTP/1.1 \r\nHost: x\r\n\r\n");
    EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got.substr(0, 300);
    // A body past the server's limit: 413 at once, the body never waited for.
    t0 = std::chrono::steady_clock::now();
    got = http_exchange(port, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 900000000\r\n\r\n");
    EXPECT_EQ(got.rfind("HTTP/1.1 413", 0), 0u) << got.substr(0, 300);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
    {  // "Expect: 100-continue": the 100 comes from the gate before the body is sent, then the answer.
        const int fd = connect_to(port);
        ASSERT_GE(fd, 0);
        const std::string body = "{\"model\": \"job\", \"prompt\": \"hi\", \"max_tokens\": 1}";
        const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                                 "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
        ASSERT_EQ(send(fd, head.data(), head.size(), MSG_NOSIGNAL), (ssize_t)head.size());
        char buf[4096];
        const ssize_t n = recv(fd, buf, sizeof buf, 0);
        ASSERT_GT(n, 0) << "no 100 Continue";
        EXPECT_EQ(std::string(buf, (size_t)n), "HTTP/1.1 100 Continue\r\n\r\n");
        ASSERT_EQ(send(fd, body.data(), body.size(), MSG_NOSIGNAL), (ssize_t)body.size());
        std::string answer;
        for (ssize_t k; (k = recv(fd, buf, sizeof buf, 0)) > 0;) answer.append(buf, (size_t)k);
        close(fd);
        EXPECT_EQ(answer.rfind("HTTP/1.1 200", 0), 0u) << answer;
        EXPECT_EQ(count(answer, "100 Continue"), 0) << "a second 100 Continue\n" << answer;
    }
    // Two requests in one write: the first answered, the connection closed; the second never read.
    got = http_exchange(port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(count(got, "HTTP/1.1 "), 1) << got;
    EXPECT_NE(got.find("{\"status\":\"ok\"}"), std::string::npos) << got;
    // Empty lines before the request line are ignored (RFC 9112 2.2).
    got = http_exchange(port, "\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_NE(got.find("{\"status\":\"ok\"}"), std::string::npos) << got;
    // A target longer than cpp-httplib reads: 414, with its code.
    got = http_exchange(port, "GET /health?" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(got.rfind("HTTP/1.1 414", 0), 0u) << got.substr(0, 200);
    EXPECT_NE(got.find("\"uri_too_long\""), std::string::npos) << got.substr(0, 400);
    // An absolute-form target, as a client speaking to a proxy sends it.
    got = http_exchange(port, "GET http://127.0.0.1:" + std::to_string(port) + "/health HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_NE(got.find("{\"status\":\"ok\"}"), std::string::npos) << got;
    const std::string metrics = http_exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_NE(metrics.find("tpx_requests_total{status=\"431\"} 2"), std::string::npos) << metrics;
    EXPECT_NE(metrics.find("tpx_requests_total{status=\"400\"} 3"), std::string::npos) << metrics;
    stop = true;
    dribble.join();
    for (int fd : held) close(fd);
}

// A completion call with `body`, its sending side shut at once (nc -N): what the client reads,
// and in how many seconds.
std::string half_closed_call(int port, const std::string& body, double& seconds) {
    const int fd = connect_to(port);
    if (fd < 0) return "";
    const std::string call = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                             std::to_string(body.size()) + "\r\n\r\n" + body;
    (void)send(fd, call.data(), call.size(), MSG_NOSIGNAL);
    shutdown(fd, SHUT_WR);
    const auto t0 = std::chrono::steady_clock::now();
    std::string got;
    char buf[4096];
    for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) got.append(buf, (size_t)n);
    close(fd);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return got;
}

// /metrics once it holds `want` (the scheduler counts a cancelled call when it drops it, at its
// next step), or after 5 s.
std::string metrics_holding(int port, const std::string& want) {
    std::string metrics;
    for (int i = 0; i < 50 && metrics.find(want) == std::string::npos; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        metrics = http_exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    return metrics;
}

// A client that sends its call and shuts its sending side: the call is cancelled and the client
// reads a 499 saying so (it read an empty 200 before), counted as such; a stream so half-closed
// is cancelled too (it ran to its end before): its client reads the 200 and what was written
// before (here nothing past the head).
TEST(ServeGate, AHalfClosedCallIsCancelled) {
    tpx_test::ServeProcess server("[model]\npath = \"" + kModel + "\"\n[run]\nmax_new_tokens = 64\n[serve]\nport = 0\n", "--step-delay-ms 50",
                                  "serve: ready");
    const int port = std::stoi(server.base().substr(server.base().rfind(':') + 1));
    double s = 0;
    std::string got = half_closed_call(port, "{\"model\": \"job\", \"prompt\": \"hi\", \"max_tokens\": 64}", s);
    EXPECT_EQ(got.rfind("HTTP/1.1 499", 0), 0u) << got;
    EXPECT_NE(got.find("client_closed_request"), std::string::npos) << got;
    std::string metrics = metrics_holding(port, "tpx_requests_cancelled_total 1");
    EXPECT_NE(metrics.find("tpx_requests_total{status=\"499\"} 1"), std::string::npos) << metrics;
    EXPECT_NE(metrics.find("tpx_requests_cancelled_total 1"), std::string::npos) << metrics;

    got = half_closed_call(port, "{\"model\": \"job\", \"prompt\": \"hi\", \"max_tokens\": 64, \"stream\": true}", s);
    EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
    EXPECT_EQ(got.find("[DONE]"), std::string::npos) << got;
    EXPECT_LT(s, 2.0) << "64 steps of 50 ms would take 3.2 s: the stream was not cut short";
    metrics = metrics_holding(port, "tpx_requests_cancelled_total 2");
    EXPECT_NE(metrics.find("tpx_requests_cancelled_total 2"), std::string::npos) << metrics;
}

// A body nested 100,000 levels deep (200 KB, inside the body limit): a 400 naming the depth
// (printing or walking such a value recurses a frame a level), and the server goes on. A stream
// asked for over HTTP/1.0, which cannot read its chunked coding: a 400 naming `stream`.
TEST(ServeGate, ADeeplyNestedBodyAndAnHttp10StreamAreRefused) {
    tpx_test::ServeProcess server("[model]\npath = \"" + kModel + "\"\n[serve]\nport = 0\n", "", "serve: ready");
    const int port = std::stoi(server.base().substr(server.base().rfind(':') + 1));
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    for (const std::string& body : {"{\"model\": \"job\", \"messages\": [{\"role\": \"user\", \"content\": " + deep + "}]}",
                                    "{\"model\": \"job\", \"prompt\": \"hi\", \"stop\": " + deep + "}"}) {
        const std::string route = body.find("messages") != std::string::npos ? "/v1/chat/completions" : "/v1/completions";
        const std::string got = http_exchange(port, "POST " + route + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                                                        std::to_string(body.size()) + "\r\n\r\n" + body);
        EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got.substr(0, 300);
        EXPECT_NE(got.find("nested deeper than 512 levels"), std::string::npos) << got.substr(0, 300);
    }
    const std::string streamed = "{\"model\": \"job\", \"prompt\": \"hi\", \"max_tokens\": 2, \"stream\": true}";
    const std::string old = http_exchange(port, "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: " +
                                                    std::to_string(streamed.size()) + "\r\n\r\n" + streamed);
    EXPECT_NE(old.find(" 400 "), std::string::npos) << old;
    EXPECT_NE(old.find("streaming needs HTTP/1.1"), std::string::npos) << old;
    EXPECT_EQ(old.find("Transfer-Encoding"), std::string::npos) << old;
    const std::string health = http_exchange(port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(health.rfind("HTTP/1.1 200", 0), 0u) << health;
}

}  // namespace
