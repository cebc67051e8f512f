// Communicator over MPI_COMM_WORLD (the CPU backend's collectives). Errors come back as
// CheckError through MPI_CHECK (the world's error handler is MPI_ERRORS_RETURN).
#pragma once

#include <string>

#include "worker/comm.h"

namespace tpx {

class MpiCommunicator : public Communicator {
public:
    MpiCommunicator();
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

private:
    int rank_ = 0, world_ = 1;
};

}  // namespace tpx
