// MPI_CHECK(stmt): an MPI call that must return MPI_SUCCESS. The communicator's error handler
// must be MPI_ERRORS_RETURN for this to see errors (the worker sets it on MPI_COMM_WORLD).
#pragma once

#include <mpi.h>

#include <string>

#include "common/check.h"

#define MPI_CHECK(stmt)                                                          \
    do {                                                                         \
        int tpx_mpi_err_ = (stmt);                                               \
        if (tpx_mpi_err_ != MPI_SUCCESS) {                                       \
            char tpx_mpi_msg_[MPI_MAX_ERROR_STRING];                             \
            int tpx_mpi_len_ = 0;                                                \
            MPI_Error_string(tpx_mpi_err_, tpx_mpi_msg_, &tpx_mpi_len_);         \
            ::tpx::fail_check("MPI", #stmt, __FILE__, __LINE__,                  \
                              std::string(tpx_mpi_msg_, tpx_mpi_len_));          \
        }                                                                        \
    } while (0)
