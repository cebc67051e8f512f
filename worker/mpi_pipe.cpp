// The boundary communicators and their waits (see mpi_pipe.h).
#include "worker/mpi_pipe.h"

#include <sched.h>

#include <chrono>
#include <climits>
#include <cstdio>

#include "common/check.h"
#include "common/error.h"
#include "common/log.h"
#include "common/mpi_check.h"

namespace tpx {
namespace {

constexpr int kToFirstTag = 7101;  // last stage -> world rank 0 (the tags of send_next are micro-batch indices)

// Boundary b joins stage b's ranks (local 0..tp-1) and stage b+1's (local tp..2tp-1). A stage
// borders two boundaries, one of each parity, so two splits (even, then odd) make them all.
MPI_Comm split_boundaries(const PipeLayout& l, int parity, MPI_Comm* to_prev, MPI_Comm* to_next) {
    int color = MPI_UNDEFINED;
    if (l.stage % 2 == parity && !l.last()) color = l.stage;                  // as sender: boundary `stage`
    else if ((l.stage - 1) % 2 == parity && !l.first()) color = l.stage - 1;  // as receiver: boundary `stage - 1`
    MPI_Comm comm = MPI_COMM_NULL;
    MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, color, l.rank, &comm));
    if (comm != MPI_COMM_NULL) {
        MPI_CHECK(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
        *(color == l.stage ? to_next : to_prev) = comm;
    }
    return comm;
}

}  // namespace

MpiPipe::MpiPipe(const PipeLayout& layout, double timeout_s) : layout_(layout), timeout_s_(timeout_s) {
    split_boundaries(layout_, 0, &to_prev_, &to_next_);
    split_boundaries(layout_, 1, &to_prev_, &to_next_);
}

MpiPipe::~MpiPipe() {
    if (to_prev_ != MPI_COMM_NULL) MPI_Comm_free(&to_prev_);
    if (to_next_ != MPI_COMM_NULL) MPI_Comm_free(&to_next_);
}

void MpiPipe::wait(MPI_Request& request, const char* what, int peer) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    for (int done = 0;;) {
        MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
        if (done) return;
        if (timeout_s_ > 0 && std::chrono::steady_clock::now() > deadline) {
            char seconds[32];
            std::snprintf(seconds, sizeof(seconds), "%g", timeout_s_);
            throw Error(where() + ": " + what + " rank " + std::to_string(peer) + " (pipeline stage " + std::to_string(peer / layout_.tp) +
                            ") waited more than " + seconds + " s (backend.collective_timeout_s): that stage stopped or is stuck",
                        kExitRuntime);
        }
        sched_yield();  // ranks may share cores (--oversubscribe)
    }
}

void MpiPipe::send_next(const void* data, size_t bytes, int tag) {
    TPX_CHECK(to_next_ != MPI_COMM_NULL, "send_next on the last pipeline stage");
    TPX_CHECK(bytes < (size_t)INT_MAX, "a pipeline send of " + std::to_string(bytes) + " bytes is too large for MPI");
    sends_.emplace_back();
    MPI_CHECK(MPI_Isend(data, (int)bytes, MPI_BYTE, layout_.tp + layout_.tp_rank, tag, to_next_, &sends_.back()));
}

void MpiPipe::recv_prev(void* data, size_t bytes, int tag) {
    TPX_CHECK(to_prev_ != MPI_COMM_NULL, "recv_prev on the first pipeline stage");
    TPX_CHECK(bytes < (size_t)INT_MAX, "a pipeline receive of " + std::to_string(bytes) + " bytes is too large for MPI");
    MPI_Request request;
    MPI_CHECK(MPI_Irecv(data, (int)bytes, MPI_BYTE, layout_.tp_rank, tag, to_prev_, &request));
    wait(request, "a receive from", layout_.rank - layout_.tp);
}

void MpiPipe::wait_sends() {
    for (MPI_Request& r : sends_) wait(r, "a send to", layout_.rank + layout_.tp);
    sends_.clear();
}

void MpiPipe::send_to_first(const void* data, size_t bytes) {
    TPX_CHECK(bytes < (size_t)INT_MAX, "a pipeline send of " + std::to_string(bytes) + " bytes is too large for MPI");
    MPI_Request request;
    MPI_CHECK(MPI_Isend(data, (int)bytes, MPI_BYTE, 0, kToFirstTag, MPI_COMM_WORLD, &request));
    wait(request, "a send to", 0);
}

void MpiPipe::recv_from_last(void* data, size_t bytes) {
    TPX_CHECK(bytes < (size_t)INT_MAX, "a pipeline receive of " + std::to_string(bytes) + " bytes is too large for MPI");
    const int last = (layout_.pp - 1) * layout_.tp;
    MPI_Request request;
    MPI_CHECK(MPI_Irecv(data, (int)bytes, MPI_BYTE, last, kToFirstTag, MPI_COMM_WORLD, &request));
    wait(request, "a receive from", last);
}

}  // namespace tpx
