// Check macros for library calls: each failure records the library, the statement, file:line,
// host and rank, and throws CheckError; the worker's top level turns that into a job abort.
// MPI's macro is in common/mpi_check.h, CUDA/cuBLAS/NCCL's in common/cuda_check.h, so that this
// header needs neither library.
#pragma once

#include <string>

#include "common/error.h"

namespace tpx {

// Throws CheckError("rank R (host): LIB call `STMT` failed at FILE:LINE: DETAIL").
[[noreturn]] void fail_check(const char* library, const char* statement, const char* file,
                             int line, const std::string& detail);

}  // namespace tpx

// An invariant of tpx itself; `message` is any expression convertible to std::string.
#define TPX_CHECK(cond, message)                                                    \
    do {                                                                           \
        if (!(cond)) ::tpx::fail_check("tpx", #cond, __FILE__, __LINE__, (message)); \
    } while (0)
