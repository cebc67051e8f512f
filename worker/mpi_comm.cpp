// MPI collectives in chunks below INT_MAX elements (MPI counts are int), each started as a
// non-blocking call and finished within backend.collective_timeout_s (see mpi_comm.h).
#include "worker/mpi_comm.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "common/mpi_check.h"

namespace tpx {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kStallTag = 7001;  // "I am waiting in collective #n" after a timeout
constexpr double kListenSeconds = 1.0;

}  // namespace

MpiCommunicator::MpiCommunicator(double timeout_s) : timeout_s_(timeout_s) {
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, double timeout_s) : comm_(comm), owned_(true), timeout_s_(timeout_s) {
    MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &world_));
}

MpiCommunicator::~MpiCommunicator() {
    if (owned_) MPI_Comm_free(&comm_);
}

// Rank `r` of this communicator as a rank of MPI_COMM_WORLD (what messages name).
int MpiCommunicator::world_rank(int r) const {
    if (comm_ == MPI_COMM_WORLD) return r;
    MPI_Group mine, world;
    int out = r;
    MPI_Comm_group(comm_, &mine);
    MPI_Comm_group(MPI_COMM_WORLD, &world);
    MPI_Group_translate_ranks(mine, 1, &r, world, &out);
    MPI_Group_free(&mine);
    MPI_Group_free(&world);
    return out;
}

void MpiCommunicator::finish(MPI_Request request, const char* what, double spin_s) {
    ++calls_;
    if (timeout_s_ <= 0 && spin_s == kSpinForever) {
        MPI_CHECK(MPI_Wait(&request, MPI_STATUS_IGNORE));
        return;
    }
    const auto start = Clock::now();
    for (int done = 0;;) {
        MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
        if (done) return;
        const double waited = std::chrono::duration<double>(Clock::now() - start).count();
        if (timeout_s_ > 0 && waited > timeout_s_) stalled(what);
        // Past spin_s, a pause of a hundredth of the wait so far (at most 1 ms): the answer comes
        // at most 1% late.
        if (waited > spin_s) std::this_thread::sleep_for(std::chrono::duration<double>(std::min(waited * 0.01, 1e-3)));
        else sched_yield();  // ranks may share cores (--oversubscribe)
    }
}

// Every rank that times out tells the others so and listens for a while: the ranks not heard
// from are the ones that did not join (a waiting rank times out within the listening window of
// the others: in lockstep they entered the collective within milliseconds of each other).
void MpiCommunicator::stalled(const char* what) {
    static uint64_t mine;  // outlives this frame: the sends are never waited for (the job ends)
    mine = calls_;
    std::vector<MPI_Request> sends(world_);
    for (int r = 0; r < world_; ++r)
        if (r != rank_) MPI_Isend(&mine, 1, MPI_UINT64_T, r, kStallTag, comm_, &sends[r]);
    std::set<int> heard = {rank_};
    const auto until = Clock::now() + std::chrono::duration<double>(kListenSeconds);
    while (Clock::now() < until && (int)heard.size() < world_) {
        int flag = 0;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, kStallTag, comm_, &flag, &st) == MPI_SUCCESS && flag) {
            uint64_t theirs = 0;
            MPI_Recv(&theirs, 1, MPI_UINT64_T, st.MPI_SOURCE, kStallTag, comm_, MPI_STATUS_IGNORE);
            heard.insert(st.MPI_SOURCE);
        } else {
            sched_yield();
        }
    }
    std::string missing, waiting;
    for (int r = 0; r < world_; ++r) {
        std::string& list = heard.count(r) ? waiting : missing;
        if (r != rank_) list += (list.empty() ? "" : ", ") + std::to_string(world_rank(r));
    }
    char seconds[32];
    std::snprintf(seconds, sizeof(seconds), "%g", timeout_s_);
    throw Error(where() + ": " + what + " #" + std::to_string(calls_) + " waited more than " + seconds +
                    " s (backend.collective_timeout_s): " +
                    (missing.empty() ? std::string("every other rank answered that it waits too (so this rank may have been the "
                                                   "one stopped)")
                                     : "rank" + std::string(missing.find(',') == std::string::npos ? " " : "s ") + missing +
                                           " did not join (stopped or stuck)") +
                    (waiting.empty() || missing.empty() ? "" : "; ranks waiting with this one: " + waiting),
                kExitRuntime);
}

void MpiCommunicator::all_reduce_sum(float* data, size_t n) {
    if (world_ == 1) return;
    for (size_t done = 0; done < n;) {
        int count = (int)std::min<size_t>(n - done, INT_MAX / 2);
        MPI_Request request;
        MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data + done, count, MPI_FLOAT, MPI_SUM, comm_, &request));
        finish(request, "all-reduce");
        done += (size_t)count;
    }
}

void MpiCommunicator::all_gather(const float* in, size_t n, float* out) {
    TPX_CHECK(n * (size_t)world_ < (size_t)INT_MAX, "all_gather of " + std::to_string(n) + " elements per rank is too large for MPI");
    MPI_Request request;
    MPI_CHECK(MPI_Iallgather(in, (int)n, MPI_FLOAT, out, (int)n, MPI_FLOAT, comm_, &request));
    finish(request, "all-gather");
}

void MpiCommunicator::all_gather_bytes(const void* in, size_t bytes, void* out) {
    TPX_CHECK(bytes * (size_t)world_ < (size_t)INT_MAX, "all_gather of " + std::to_string(bytes) + " bytes per rank is too large for MPI");
    MPI_Request request;
    MPI_CHECK(MPI_Iallgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, comm_, &request));
    finish(request, "all-gather");
}

void MpiCommunicator::broadcast(void* data, size_t bytes, int root) { broadcast_chunks(data, bytes, root, kSpinForever); }

void MpiCommunicator::broadcast_patiently(void* data, size_t bytes, int root, double spin_s) { broadcast_chunks(data, bytes, root, spin_s); }

void MpiCommunicator::broadcast_chunks(void* data, size_t bytes, int root, double spin_s) {
    char* p = static_cast<char*>(data);
    for (size_t done = 0; done < bytes;) {
        int count = (int)std::min<size_t>(bytes - done, INT_MAX / 2);
        MPI_Request request;
        MPI_CHECK(MPI_Ibcast(p + done, count, MPI_BYTE, root, comm_, &request));
        finish(request, "broadcast", spin_s);
        done += (size_t)count;
    }
}

void MpiCommunicator::barrier() {
    MPI_Request request;
    MPI_CHECK(MPI_Ibarrier(comm_, &request));
    finish(request, "barrier");
}

std::string MpiCommunicator::broadcast_string(const std::string& s) {
    uint64_t size = s.size();
    broadcast(&size, sizeof(size), 0);
    std::string out = rank_ == 0 ? s : std::string(size, '\0');
    broadcast(out.data(), size, 0);
    return out;
}

}  // namespace tpx
