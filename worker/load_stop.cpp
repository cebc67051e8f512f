// A serve's load that stops on rank 0's word (see load_stop.h).
#include "worker/load_stop.h"

#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>

#include "common/check.h"
#include "common/error.h"
#include "common/log.h"
#include "common/mpi_check.h"

namespace tpx {
namespace {

constexpr int kWordTag = 7101;
constexpr auto kPoll = std::chrono::milliseconds(20);

}  // namespace

LoadStop::LoadStop(std::function<bool()> asked, double timeout_s, int delay_ms) : asked_(std::move(asked)), timeout_s_(timeout_s) {
    control_.delay_ms = delay_ms;
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm_));
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &world_));
    int provided = MPI_THREAD_SINGLE;
    MPI_CHECK(MPI_Query_thread(&provided));
    threads_ok_ = provided >= MPI_THREAD_SERIALIZED;
    if (!threads_ok_ && rank_ == 0) log_info("serve: this MPI takes calls from one thread only: a stop asked while loading waits for the load");
}

// Freed once every rank is past its load (main's reset, or the exit after a stop); while an
// exception unwinds the job is about to be aborted, and no MPI call is made.
LoadStop::~LoadStop() {
    if (std::uncaught_exceptions() || comm_ == MPI_COMM_NULL) return;
    MPI_Comm_free(&comm_);
}

bool LoadStop::run(const std::function<void()>& read) {
    if (world_ > 1 && rank_ != 0) MPI_CHECK(MPI_Irecv(&word_, 1, MPI_INT, 0, kWordTag, comm_, &request_));
    reads_done_ = false;
    std::exception_ptr watch_error;  // an MPI call of the watcher that failed, rethrown here
    std::thread watcher;
    if (threads_ok_)
        watcher = std::thread([this, &watch_error] {
            try {
                watch();
            } catch (...) {
                watch_error = std::current_exception();
            }
        });
    bool stopped_here = false;
    try {
        read();
    } catch (const ReadStopped&) {
        stopped_here = true;
    } catch (...) {
        reads_done_ = true;
        if (watcher.joinable()) watcher.join();
        throw;
    }
    reads_done_ = true;
    if (watcher.joinable()) watcher.join();
    if (watch_error) std::rethrow_exception(watch_error);
    if (rank_ == 0) {
        if (!told_) tell(0);
    } else if (world_ > 1) {
        wait_for_word();
        if (word_ == 1) control_.stop = true;
    }
    const bool stopped = control_.stop.load();
    TPX_CHECK(stopped || !stopped_here, "the load's reads stopped, but rank 0 did not ask it");
    return stopped;
}

void LoadStop::watch() {
    while (!reads_done_) {
        if (rank_ == 0 && asked_()) {
            control_.stop = true;
            tell(1);
            return;
        }
        if (rank_ != 0 && world_ > 1) {
            int done = 0;
            MPI_CHECK(MPI_Test(&request_, &done, MPI_STATUS_IGNORE));
            if (done) {
                if (word_ == 1) control_.stop = true;
                return;
            }
        }
        std::this_thread::sleep_for(kPoll);
    }
}

void LoadStop::tell(int word) {
    static int words[2] = {0, 1};  // outlive the sends, which are not waited for
    told_ = true;
    for (int r = 1; r < world_; ++r) {
        MPI_Request sent = MPI_REQUEST_NULL;
        MPI_CHECK(MPI_Isend(&words[word], 1, MPI_INT, r, kWordTag, comm_, &sent));
        MPI_CHECK(MPI_Request_free(&sent));
    }
}

void LoadStop::wait_for_word() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    for (int done = 0;;) {
        MPI_CHECK(MPI_Test(&request_, &done, MPI_STATUS_IGNORE));
        if (done) return;
        if (timeout_s_ > 0 && std::chrono::steady_clock::now() > deadline) {
            char seconds[32];
            std::snprintf(seconds, sizeof(seconds), "%g", timeout_s_);
            throw Error(where() + ": rank 0 did not finish loading within " + seconds + " s of this rank (backend.collective_timeout_s)");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

}  // namespace tpx
