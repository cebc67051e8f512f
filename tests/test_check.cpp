// Check macros: a failed call's message names the library, the statement, file:line, the
// host and (inside a worker) the rank; MPI errors come back as CheckError, not an abort.
#include <gtest/gtest.h>
#include <unistd.h>

#include "common/log.h"
#include "common/mpi_check.h"

namespace {

std::string hostname() {
    char buf[256] = {0};
    gethostname(buf, sizeof(buf) - 1);
    return buf;
}

}  // namespace

TEST(Check, TpxCheckNamesStatementFileAndHost) {
    try {
        int heads = 6, tp = 4;
        TPX_CHECK(heads % tp == 0, "heads=" + std::to_string(heads) + " tp=" + std::to_string(tp));
        FAIL() << "TPX_CHECK did not throw";
    } catch (const tpx::CheckError& e) {
        std::string m = e.what();
        EXPECT_NE(m.find("heads % tp == 0"), std::string::npos) << m;
        EXPECT_NE(m.find("test_check.cpp:"), std::string::npos) << m;
        EXPECT_NE(m.find("heads=6 tp=4"), std::string::npos) << m;
        EXPECT_NE(m.find(hostname()), std::string::npos) << m;
        EXPECT_EQ(e.exit_code(), tpx::kExitRuntime);
    }
}

TEST(Check, MpiCheckReportsRankAndMpiMessage) {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        ASSERT_EQ(MPI_Init(nullptr, nullptr), MPI_SUCCESS);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rank = -1, world = 0;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
    tpx::set_identity(rank, world);
    int value = 1;
    try {
        // A negative count is invalid: MPI returns an error instead of aborting.
        MPI_CHECK(MPI_Bcast(&value, -1, MPI_INT, 0, MPI_COMM_WORLD));
        FAIL() << "MPI_CHECK did not throw";
    } catch (const tpx::CheckError& e) {
        std::string m = e.what();
        EXPECT_EQ(m.rfind("rank 0 (" + hostname() + "): MPI call `MPI_Bcast(", 0), 0u) << m;
        EXPECT_NE(m.find("MPI_ERR_COUNT"), std::string::npos) << m;
    }
    tpx::set_identity(-1, 0);
    MPI_Finalize();
}
