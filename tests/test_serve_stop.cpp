// `tpx serve` stopping: SIGTERM (and Ctrl-C, SIGUSR1, without mpirun forwarding signals) finishes
// what is in flight and leaves no process; a stop while the ranks load or start, or with
// connections that send no call, ends cleanly within seconds; two signals at once stop it as
// asked; a killed rank ends the server within 10 s with a 500 naming it. tiny-text at tp 2, the
// OpenAI Node SDK as the client where a test needs one (those skip without it).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "serve_client.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using namespace serve_test;

// SIGTERM mid-request: the request finishes, tpx serve exits 0, no process of the job is left.
// env: how the server starts (Open MPI settings); to_group: the signal to tpx serve's whole
// process group (its own: tests/process.h), as a terminal's Ctrl-C sends it.
void sigterm_drains(const std::string& env, int sig = SIGTERM, bool to_group = false) {
    Server server("grace_s = 20\n", "--step-delay-ms 100", "serve: ready", kModel, env);
    tpx_test::Background call = tpx_test::start_background(client_command(server, "long", "20"));
    json m = wait_for_metrics(server, [](const json& j) { return j["running"] == 1; });
    ASSERT_EQ(m["running"], 1) << m.dump();
    kill(to_group ? -server.pid() : server.pid(), sig);
    int code = server.wait(40);
    EXPECT_EQ(code, 0) << server.err();
    EXPECT_NE(server.err().find("stopped by"), std::string::npos) << server.err();
    ASSERT_EQ(tpx_test::wait_background(call, 20), 0);
    json r = json::parse(tpx_test::read_text(call.out_path));
    EXPECT_EQ(r["status"], 200) << r.dump();
    EXPECT_EQ(r["tokens"], 20) << r.dump();
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

TEST(Serve, SigtermFinishesInFlightRequestsAndLeavesNoProcess) {
    SKIP_WITHOUT_SDK();
    sigterm_drains("");
}

// Ctrl-C reaches the whole foreground group: it drains as SIGTERM to tpx serve does, exit 0
// (mpirun has a group of its own, so only tpx gets the signal).
TEST(Serve, CtrlCToTheWholeGroupDrainsAndExitsZero) {
    SKIP_WITHOUT_SDK();
    sigterm_drains("", SIGINT, /*to_group=*/true);
}

// SIGUSR1, the signal tpx serve drains its ranks with, sent to tpx serve itself: a drain too (it
// ended tpx by the default action, and mpirun ended the ranks mid-request).
TEST(Serve, SigusrOneToTpxServeDrainsAsSigtermDoes) {
    SKIP_WITHOUT_SDK();
    sigterm_drains("", SIGUSR1);
}

// The drain does not rest on mpirun passing SIGUSR1 on (on the GPU machine it did not): with
// Open MPI told to forward no signal, the same.
TEST(Serve, SigtermDrainsWithoutMpirunForwardingSignals) {
    SKIP_WITHOUT_SDK();
    sigterm_drains("OMPI_MCA_ess_base_forward_signals=none");
}

// The status line of GET `path` on 127.0.0.1:port ("" where no answer came).
std::string status_of(int port, const std::string& path) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons((uint16_t)port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string got;
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
    if (connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0 && send(fd, request.data(), request.size(), MSG_NOSIGNAL) > 0) {
        char buf[4096];
        for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) got.append(buf, (size_t)n);
    }
    close(fd);
    return got.substr(0, got.find("\r\n"));
}

// Two stop signals at once (a double Ctrl-C; a supervisor's SIGTERM and an operator's; two kinds,
// which the kernel does not merge): the drain still reaches rank 0, which takes no new call (one
// signal right behind the first skipped the drain, and /health answered 200 for about a second,
// until mpirun ended the ranks), and the second ends the job at once. Whichever comes first,
// tpx serve says it stopped (it said "failed", exit 1): drained (exit 0), or at the second signal
// (128 + the signal handled last); no process is left.
TEST(Serve, TwoSignalsAtOnceStopTheServerAtOnce) {
    Server server("", "", "serve: ready");
    const int port = std::stoi(server.base().substr(server.base().rfind(':') + 1));
    ASSERT_EQ(status_of(port, "/health"), "HTTP/1.1 200 OK");
    const auto t0 = std::chrono::steady_clock::now();
    kill(server.pid(), SIGTERM);
    kill(server.pid(), SIGINT);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_NE(status_of(port, "/health"), "HTTP/1.1 200 OK") << "rank 0 still took calls 0.5 s after two signals";
    const int code = server.wait(20);
    const std::string err = server.err();
    const bool drained = code == 0 && err.find("stopped by") != std::string::npos;
    const bool ended = (code == 128 + SIGTERM || code == 128 + SIGINT) && err.find("stopped at a second signal (") != std::string::npos;
    EXPECT_TRUE(drained || ended) << "exit " << code << "\n" << err;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 15);
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

// SIGTERM to every process of the job at once (Slurm's cancel, a process manager's group kill,
// `pkill -f JOB`): mpirun, signalled itself, ends the ranks with a status not 0, which tpx serve
// reported as the job's failure (exit 1). It is a stop: 128 + SIGTERM (or 0, where the ranks'
// drain ended before mpirun acted), "stopped by", nothing left.
TEST(Serve, SigtermToEveryProcessOfTheJobIsAStop) {
    Server server("", "", "serve: ready");
    const std::vector<int> pids = tpx_test::pids_matching(server.job());
    ASSERT_GE(pids.size(), 4u) << "tpx serve, mpirun and two ranks";
    for (int pid : pids) kill(pid, SIGTERM);
    const int code = server.wait(20);
    const std::string err = server.err();
    EXPECT_TRUE(code == 128 + SIGTERM || code == 0) << "exit " << code << "\n" << err;
    EXPECT_NE(err.find("stopped by"), std::string::npos) << err;
    EXPECT_EQ(err.find("failed"), std::string::npos) << err;
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

// A rank's failure that two stop signals follow is still the job's failure (exit 1, "failed"),
// not a stop asked for: also in the 2 s before mpirun's "noticed" line (the signals 0.3 s after
// the kill).
TEST(Serve, TwoSignalsAfterARankFailedStillEndInFailure) {
    Server server("", "--step-delay-ms 100");
    int victim = -1;
    for (int pid : tpx_test::pids_matching("tpx-worker --job " + server.job()))
        if (tpx_test::env_of(pid, "OMPI_COMM_WORLD_RANK") == "1") victim = pid;
    ASSERT_GT(victim, 0) << "rank 1 not found";
    kill(victim, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    kill(server.pid(), SIGTERM);
    kill(server.pid(), SIGINT);
    const int code = server.wait(30);
    EXPECT_EQ(code, 1) << server.err();
    EXPECT_NE(server.err().find("failed after"), std::string::npos) << server.err();
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

// A stop asked while the ranks read their weights (each read held 10 s here: the load would take
// 20 s or more) ends every rank's reads at rank 0's word: exit 0 within seconds, nothing left.
// `only_rank0`: the signal to rank 0 alone, as where rank 1 runs on a host no signal reaches.
void stop_while_loading(bool only_rank0) {
    Server server("", "--read-delay-ms 10000", "serve: listening");
    int rank0 = -1;
    for (int pid : tpx_test::pids_matching("tpx-worker --job " + server.job()))
        if (tpx_test::env_of(pid, "OMPI_COMM_WORLD_RANK") == "0") rank0 = pid;
    ASSERT_GT(rank0, 0) << "rank 0 not found";
    const auto t0 = std::chrono::steady_clock::now();
    kill(only_rank0 ? rank0 : server.pid(), only_rank0 ? SIGUSR1 : SIGTERM);
    const int code = server.wait(40);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(code, 0) << server.err();
    EXPECT_LT(seconds, 8) << server.err();
    EXPECT_NE(server.err().find("serve: stopped while loading"), std::string::npos) << server.err();
    EXPECT_EQ(server.err().find("serve: ready"), std::string::npos) << server.err();
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

TEST(Serve, SigtermWhileLoadingEndsEveryRanksReads) { stop_while_loading(false); }

// Connections that hold a server thread without a call: one idle, two sending their headers a
// byte at a time, one its body (cpp-httplib waits 5 s for each byte, so those never time out). A
// drain shuts them instead of waiting on them: exit 0 within seconds, not `tpx serve` ending the
// job (exit 1) once grace_s + 5 s have passed.
TEST(Serve, SigtermEndsConnectionsThatSendNoCall) {
    Server server("grace_s = 20\n");
    const int port = std::stoi(server.base().substr(server.base().rfind(':') + 1));
    std::vector<int> socks;
    for (int i = 0; i < 4; ++i) {
        const int fd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_port = htons((uint16_t)port);
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to), 0) << std::strerror(errno);
        socks.push_back(fd);
    }
    const std::string post = std::string("POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ") + kKey +
                             "\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    ASSERT_EQ(send(socks[3], post.data(), post.size(), MSG_NOSIGNAL), (ssize_t)post.size());
    std::atomic<bool> stop{false};
    std::thread dribble([&] {
        const std::string head = "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + std::string(200, 'a');
        for (size_t i = 0; i < head.size() && !stop; ++i) {
            for (size_t k = 1; k < 3; ++k) (void)send(socks[k], &head[i], 1, MSG_NOSIGNAL);
            (void)send(socks[3], " ", 1, MSG_NOSIGNAL);
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
    });
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const auto t0 = std::chrono::steady_clock::now();
    kill(server.pid(), SIGTERM);
    const int code = server.wait(40);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    stop = true;
    dribble.join();
    for (int fd : socks) close(fd);
    EXPECT_EQ(code, 0) << server.err();
    // Under the 5 s after which a drain shuts even connections inside a handler: a connection
    // sending its body, taken for one inside a call, would be shut only then.
    EXPECT_LT(seconds, 4.5) << server.err();
    EXPECT_NE(server.err().find("serve: stopped"), std::string::npos) << server.err();
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

// SIGTERM as mpirun starts the ranks, before they have their handlers (or exist): the drain signal
// reaches each rank once it catches it (sent at once, it ended them: exit 138), and the job
// stops cleanly. Also where the ranks take more than 2 s to appear (a loaded host; here an
// mpirun that waits 3 s first): rank 0 runs on this host, so the signal waits up to 10 s for it
// rather than going to mpirun after 2 s (which passed it to ranks without their handlers, or died
// of it). And with a wrapper that runs mpirun as its child (no exec): the ranks are found among
// tpx's descendants (the signal to the wrapper ended it and left the job running).
TEST(Serve, SigtermAsTheRanksStartStopsCleanly) {
    const std::string dir = tpx_test::temp_dir();
    std::ofstream(dir + "/slow_mpirun.sh") << "#!/bin/sh\nsleep 3\nexec mpirun \"$@\"\n";
    std::ofstream(dir + "/mpirun_child.sh") << "#!/bin/sh\nsleep 3\nmpirun \"$@\"\n";
    for (const char* script : {"/slow_mpirun.sh", "/mpirun_child.sh"}) fs::permissions(dir + script, fs::perms::owner_all);
    struct Start {
        int delay_ms;
        std::string mpirun;
    };
    for (const Start& start : {Start{0, "mpirun"}, Start{100, "mpirun"}, Start{0, dir + "/slow_mpirun.sh"}, Start{0, dir + "/mpirun_child.sh"}}) {
        std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << kModel << "\"\n[parallel]\ntp = 2\n[serve]\nport = 0\n[launch]\nmpirun = \""
                                         << start.mpirun << "\"\n";
        const std::string how = start.mpirun + " and " + std::to_string(start.delay_ms) + " ms:\n";
        tpx_test::Background s = tpx_test::start_background(tpx_test::tpx_bin("tpx") + " serve " + dir + "/job.toml --read-delay-ms 10000");
        for (int i = 0; i < 2000 && tpx_test::read_text(s.err_path).find(start.mpirun + " ") == std::string::npos; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        std::this_thread::sleep_for(std::chrono::milliseconds(start.delay_ms));
        kill(s.pid, SIGTERM);
        const int code = tpx_test::wait_background(s, 40);
        const std::string err = tpx_test::read_text(s.err_path);
        EXPECT_EQ(code, 0) << how << err;
        EXPECT_EQ(err.find("exited on signal"), std::string::npos) << how << err;
        EXPECT_TRUE(tpx_test::pids_matching(dir + "/job.toml").empty()) << "a process of the job outlived tpx serve";
    }
    fs::remove_all(dir);
}

TEST(Serve, RankZerosWordStopsARankNoSignalReached) { stop_while_loading(true); }

TEST(Serve, KilledRankEndsTheServerWithin10s) {
    SKIP_WITHOUT_SDK();
    Server server("", "--step-delay-ms 100");
    tpx_test::Background call = tpx_test::start_background(client_command(server, "long", "200"));
    tpx_test::Background streamed = tpx_test::start_background(client_command(server, "long_stream", "200"));
    json m = wait_for_metrics(server, [](const json& j) { return j["running"] == 2; });
    ASSERT_EQ(m["running"], 2) << m.dump();
    int victim = -1;
    for (int pid : tpx_test::pids_matching("tpx-worker --job " + server.job()))
        if (tpx_test::env_of(pid, "OMPI_COMM_WORLD_RANK") == "1") victim = pid;
    ASSERT_GT(victim, 0) << "rank 1 not found";
    auto t0 = std::chrono::steady_clock::now();
    kill(victim, SIGKILL);
    int code = server.wait(30);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(code, 0) << server.err();
    EXPECT_NE(code, -1) << "tpx serve did not end";
    EXPECT_LT(seconds, 10) << server.err();
    ASSERT_EQ(tpx_test::wait_background(call, 20), 0);
    json r = json::parse(tpx_test::read_text(call.out_path));
    EXPECT_EQ(r["status"], 500) << r.dump();
    EXPECT_NE(r["message"].get<std::string>().find("rank 1"), std::string::npos) << r.dump();
    // The stream: its 200 went out first; it ends with the error, then [DONE] (as vLLM's does).
    ASSERT_EQ(tpx_test::wait_background(streamed, 20), 0);
    json s = json::parse(tpx_test::read_text(streamed.out_path));
    EXPECT_EQ(s["status"], 200) << s.dump();
    ASSERT_EQ(s["last"].size(), 2u) << s.dump();
    EXPECT_NE(s["last"][0].get<std::string>().find("\"rank_failed\""), std::string::npos) << s.dump();
    EXPECT_EQ(s["last"][1], "data: [DONE]") << s.dump();
    EXPECT_TRUE(tpx_test::pids_matching(server.job()).empty()) << "a process of the job outlived tpx serve";
}

}  // namespace
