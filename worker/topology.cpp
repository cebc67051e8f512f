// Local rank and the Slurm cross-check.
#include "worker/topology.h"

#include <cstdlib>
#include <string>

#include "common/mpi_check.h"

namespace tpx {

int local_rank() {
    MPI_Comm local;
    int rank = 0, lr = 0;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local));
    MPI_CHECK(MPI_Comm_rank(local, &lr));
    MPI_CHECK(MPI_Comm_free(&local));
    if (const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK"); v && std::atoi(v) != lr)
        throw Error("local rank " + std::to_string(lr) + " from MPI's host split disagrees with OMPI_COMM_WORLD_LOCAL_RANK=" + v,
                    kExitBadInput);
    return lr;
}

std::vector<int> ranks_on_this_host() {
    MPI_Comm local;
    int rank = 0, size = 0;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local));
    MPI_CHECK(MPI_Comm_size(local, &size));
    std::vector<int> ranks((size_t)size);
    MPI_CHECK(MPI_Allgather(&rank, 1, MPI_INT, ranks.data(), 1, MPI_INT, local));
    MPI_CHECK(MPI_Comm_free(&local));
    return ranks;
}

void check_srun_environment(int rank, int world) {
    int lr = local_rank();
    struct {
        const char* var;
        int mpi;
        const char* what;
    } checks[] = {{"SLURM_PROCID", rank, "MPI rank"}, {"SLURM_NTASKS", world, "MPI world size"}, {"SLURM_LOCALID", lr, "local rank"}};
    for (const auto& c : checks) {
        const char* v = std::getenv(c.var);
        if (!v) throw Error(std::string("started with --launched-by srun but ") + c.var + " is not set", kExitBadInput);
        if (std::atoi(v) != c.mpi)
            throw Error(std::string(c.var) + "=" + v + " disagrees with the " + c.what + " " + std::to_string(c.mpi) +
                            " (is srun's --mpi=pmix plugin the one Open MPI was built for?)",
                        kExitBadInput);
    }
}

}  // namespace tpx
