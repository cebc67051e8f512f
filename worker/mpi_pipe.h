// Point to point between pipeline stages over MPI (the CPU backend): a communicator per stage
// boundary (stage s's ranks, then stage s+1's), each rank talking to the rank of the same tp_rank
// in the stage before and after it, and the last stage's tp rank 0 answering world rank 0.
// Every wait ends within the job's backend.collective_timeout_s with an error naming the peer rank and its
// stage, so a stage that stopped ends the job instead of holding the others on a receive.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <vector>

namespace tpx {

// Where a rank sits: rank = stage x tp + tp_rank.
struct PipeLayout {
    int rank = 0, stage = 0, pp = 1, tp = 1, tp_rank = 0;
    bool first() const { return stage == 0; }
    bool last() const { return stage == pp - 1; }
};

class MpiPipe {
public:
    // Collective over MPI_COMM_WORLD: every rank builds its pipe at the same point.
    MpiPipe(const PipeLayout& layout, double timeout_s);
    ~MpiPipe();
    MpiPipe(const MpiPipe&) = delete;
    MpiPipe& operator=(const MpiPipe&) = delete;

    // To the next stage's rank of this tp_rank, not waited for: `data` must stay until wait_sends().
    void send_next(const void* data, size_t bytes, int tag);
    // From the previous stage's rank of this tp_rank, within the timeout.
    void recv_prev(void* data, size_t bytes, int tag);
    // Every send_next done (received), within the timeout.
    void wait_sends();
    // The last stage's tp rank 0 to world rank 0 (sampling's inputs), blocking within the timeout.
    void send_to_first(const void* data, size_t bytes);
    void recv_from_last(void* data, size_t bytes);

    const PipeLayout& layout() const { return layout_; }
    // The boundary communicators (MPI_COMM_NULL on the first and last stage): stage s-1's ranks
    // then stage s's, and stage s's then stage s+1's. The GPU pipe builds NCCL over them.
    MPI_Comm prev_comm() const { return to_prev_; }
    MPI_Comm next_comm() const { return to_next_; }

private:
    void wait(MPI_Request& request, const char* what, int peer_world_rank);

    PipeLayout layout_;
    double timeout_s_ = 0;
    MPI_Comm to_prev_ = MPI_COMM_NULL, to_next_ = MPI_COMM_NULL;  // boundary communicators
    std::vector<MPI_Request> sends_;
};

}  // namespace tpx
