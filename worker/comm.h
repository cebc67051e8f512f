// The collectives the executor needs, behind one interface: MPI on the CPU backend, NCCL on
// GPUs. Every call is collective over the world: all ranks call it in the same order.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tpx {

class Communicator {
public:
    virtual ~Communicator() = default;
    virtual int rank() const = 0;
    virtual int world() const = 0;
    // In place: data[i] = sum over ranks of data[i].
    virtual void all_reduce_sum(float* data, size_t n) = 0;
    // out = the ranks' `in` blocks of n elements, rank 0's first.
    virtual void all_gather(const float* in, size_t n, float* out) = 0;
    virtual void broadcast(void* data, size_t bytes, int root) = 0;
    virtual void barrier() = 0;
};

}  // namespace tpx
