// Device selection.
#include "worker/device.h"

#include <cstdlib>
#include <string>

#include "common/cuda_check.h"
#include "common/mpi_check.h"

namespace tpx {

int local_rank() {
    MPI_Comm local;
    int rank = 0, lr = 0;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local));
    MPI_CHECK(MPI_Comm_rank(local, &lr));
    MPI_CHECK(MPI_Comm_free(&local));
    for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"}) {
        const char* v = std::getenv(var);
        if (v && std::atoi(v) != lr)
            throw Error("local rank " + std::to_string(lr) + " from MPI's host split disagrees with " + var + "=" + v, kExitBadInput);
    }
    return lr;
}

int select_device() {
    int lr = local_rank(), count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) count = 0;
    if (lr >= count) {
        const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
        throw Error("local rank " + std::to_string(lr) + " needs CUDA device " + std::to_string(lr) + " but " + std::to_string(count) +
                        " device(s) are visible (CUDA_VISIBLE_DEVICES=" + (visible ? visible : "unset") +
                        (e != cudaSuccess ? std::string(", ") + cudaGetErrorString(e) : std::string()) + ")",
                    kExitBadInput);
    }
    CUDA_CHECK(cudaSetDevice(lr));
    return lr;
}

}  // namespace tpx
