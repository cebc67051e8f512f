// MPI collectives in chunks below INT_MAX elements (MPI counts are int).
#include "worker/mpi_comm.h"

#include <algorithm>
#include <climits>
#include <vector>

#include "common/mpi_check.h"

namespace tpx {

MpiCommunicator::MpiCommunicator() {
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_));
}

void MpiCommunicator::all_reduce_sum(float* data, size_t n) {
    if (world_ == 1) return;
    for (size_t done = 0; done < n;) {
        int count = (int)std::min<size_t>(n - done, INT_MAX / 2);
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + done, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
        done += (size_t)count;
    }
}

void MpiCommunicator::all_gather(const float* in, size_t n, float* out) {
    TPX_CHECK(n * (size_t)world_ < (size_t)INT_MAX, "all_gather of " + std::to_string(n) + " elements per rank is too large for MPI");
    MPI_CHECK(MPI_Allgather(in, (int)n, MPI_FLOAT, out, (int)n, MPI_FLOAT, MPI_COMM_WORLD));
}

void MpiCommunicator::all_gather_bytes(const void* in, size_t bytes, void* out) {
    TPX_CHECK(bytes * (size_t)world_ < (size_t)INT_MAX, "all_gather of " + std::to_string(bytes) + " bytes per rank is too large for MPI");
    MPI_CHECK(MPI_Allgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, MPI_COMM_WORLD));
}

void MpiCommunicator::broadcast(void* data, size_t bytes, int root) {
    char* p = static_cast<char*>(data);
    for (size_t done = 0; done < bytes;) {
        int count = (int)std::min<size_t>(bytes - done, INT_MAX / 2);
        MPI_CHECK(MPI_Bcast(p + done, count, MPI_BYTE, root, MPI_COMM_WORLD));
        done += (size_t)count;
    }
}

void MpiCommunicator::barrier() { MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }

std::string MpiCommunicator::broadcast_string(const std::string& s) {
    uint64_t size = s.size();
    broadcast(&size, sizeof(size), 0);
    std::string out = rank_ == 0 ? s : std::string(size, '\0');
    broadcast(out.data(), size, 0);
    return out;
}

}  // namespace tpx
