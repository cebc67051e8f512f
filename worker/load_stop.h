// `tpx serve` asked to stop (SIGTERM, or SIGUSR1 from the launcher) while its ranks read their
// weights: rank 0 tells every other rank, each rank's reads end (loader ReadStopped), and the
// ranks leave the load together, to exit 0, instead of reading to the end first. Ranks on other
// hosts, whom the launcher's signal does not reach, learn it from rank 0's word.
#pragma once

#include <mpi.h>

#include <atomic>
#include <functional>

#include "loader/checkpoint.h"

namespace tpx {

class LoadStop {
public:
    // Collective over MPI_COMM_WORLD (a duplicate of it carries the one word). `asked`: rank 0's
    // question, polled from a thread of its own while the reads run (the other ranks' is not
    // consulted); `timeout_s`: how long a rank done with its reads waits for rank 0's word
    // (backend.collective_timeout_s; 0: for ever); `delay_ms`: ReadControl::delay_ms.
    LoadStop(std::function<bool()> asked, double timeout_s, int delay_ms);
    ~LoadStop();
    LoadStop(const LoadStop&) = delete;
    LoadStop& operator=(const LoadStop&) = delete;

    // For Checkpoint::set_control of every checkpoint `read` goes through.
    const ReadControl* control() const { return &control_; }
    // Runs `read` (the weights' reads) while rank 0's word is watched; true when the load was
    // stopped, on every rank alike. `read` makes no MPI call (the watching thread does).
    bool run(const std::function<void()>& read);

private:
    void watch();          // rank 0: polls `asked`; the others: wait for rank 0's word
    void tell(int word);   // rank 0: the word (1: stop, 0: go on) to every other rank
    void wait_for_word();  // the others, after their reads: rank 0's word, within timeout_s

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, world_ = 1;
    bool threads_ok_ = false;  // MPI allows a second thread's calls (MPI_THREAD_SERIALIZED)
    std::function<bool()> asked_;
    double timeout_s_ = 0;
    ReadControl control_;
    MPI_Request request_ = MPI_REQUEST_NULL;
    int word_ = -1;  // rank 0's word as received
    bool told_ = false;
    std::atomic<bool> reads_done_{false};
};

}  // namespace tpx
