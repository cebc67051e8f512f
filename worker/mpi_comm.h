// Communicator over MPI_COMM_WORLD (the CPU backend's collectives, and every backend's own
// between ranks: the plan, the reports). Errors come back as CheckError through MPI_CHECK (the
// world's error handler is MPI_ERRORS_RETURN). A collective that waits longer than the job's
// backend.collective_timeout_s (default 120 s; also the longest a rank waits for a peer still
// loading its weights) asks the other ranks which of them are waiting too, and throws naming
// the ranks that did not join: a rank that hangs (stopped, deadlocked) ends the job instead of
// holding every other rank forever.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <limits>
#include <string>

#include "worker/comm.h"

namespace tpx {

class MpiCommunicator : public Communicator {
public:
    // Over MPI_COMM_WORLD. timeout_s: the job's backend.collective_timeout_s; 0 waits forever.
    explicit MpiCommunicator(double timeout_s);
    // Over `comm` (a pipeline stage's tp group, from MPI_Comm_split); rank() and world() are the
    // rank within it and its size; messages name world ranks. Takes ownership of `comm`.
    MpiCommunicator(MPI_Comm comm, double timeout_s);
    ~MpiCommunicator() override;
    MpiCommunicator(const MpiCommunicator&) = delete;
    MpiCommunicator& operator=(const MpiCommunicator&) = delete;
    double timeout_s() const { return timeout_s_; }
    int rank() const override { return rank_; }
    int world() const override { return world_; }
    void all_reduce_sum(float* data, size_t n) override;
    void all_gather(const float* in, size_t n, float* out) override;
    void broadcast(void* data, size_t bytes, int root) override;
    void barrier() override;

    // out = every rank's `bytes` bytes, rank 0's first.
    void all_gather_bytes(const void* in, size_t bytes, void* out);
    // Rank 0's string on every rank.
    std::string broadcast_string(const std::string& s);
    // broadcast() for a wait that may be long (a serve follower's wait for rank 0's next step):
    // after `spin_s` of polling it pauses between polls (a hundredth of the wait so far, at most
    // 1 ms), sparing the core an idle server's ranks would otherwise each keep busy.
    void broadcast_patiently(void* data, size_t bytes, int root, double spin_s);

private:
    static constexpr double kSpinForever = std::numeric_limits<double>::infinity();
    void broadcast_chunks(void* data, size_t bytes, int root, double spin_s);
    // Waits for `request`, started by collective `what`, within the timeout; polls without
    // pause for `spin_s`, then with pauses.
    void finish(MPI_Request request, const char* what, double spin_s = kSpinForever);
    [[noreturn]] void stalled(const char* what);

    int world_rank(int r) const;

    MPI_Comm comm_ = MPI_COMM_WORLD;
    bool owned_ = false;
    int rank_ = 0, world_ = 1;
    double timeout_s_ = 0;  // 0: wait forever
    uint64_t calls_ = 0;  // collectives started, for the message
};

}  // namespace tpx
