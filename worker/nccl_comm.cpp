// NCCL communicator, the one-shot all-reduce's IPC setup, and the watchdog sync.
#include "worker/nccl_comm.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "common/cuda_check.h"
#include "common/fault_injection.h"
#include "common/log.h"
#include "worker/mpi_comm.h"

namespace tpx {

NcclComm::NcclComm(MpiCommunicator& mpi, cudaStream_t stream, double timeout_s, const KernelConfig& tuning)
    : stream_(stream), tuning_(tuning), launch_(stream, tuning_), timeout_s_(timeout_s), world_(mpi.world()), rank_(mpi.rank()) {
    ncclUniqueId id;
    if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    mpi.broadcast(&id, sizeof(id), 0);
    NCCL_CHECK(ncclCommInitRank(&comm_, world_, id, rank_));
    setup_oneshot(mpi, tuning);
}

NcclComm::~NcclComm() {
    if (comm_) ncclCommDestroy(comm_);
    release_oneshot();
}

namespace {

// Collective. Why the ranks' GPUs cannot map each other's memory (not all on one host, a GPU
// not visible, no peer access), "" if they can; with `check` false only the gather is done.
std::string peer_problem(MpiCommunicator& mpi, int world, int rank, bool check) {
    std::string why;
    // Where each rank's GPU is: host name and PCI bus id.
    struct Where {
        char host[64];
        char bus[32];
    };
    Where mine{};
    std::vector<Where> all(world);
    std::strncpy(mine.host, identity().host.c_str(), sizeof(mine.host) - 1);
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetPCIBusId(mine.bus, sizeof(mine.bus), device));
    mpi.all_gather_bytes(&mine, sizeof(mine), all.data());
    for (int r = 0; r < world && check && why.empty(); ++r) {
        if (std::strncmp(all[r].host, mine.host, sizeof(mine.host)) != 0) {
            why = "ranks on more than one host";
            break;
        }
        int peer = 0, can = 0;
        if (cudaDeviceGetByPCIBusId(&peer, all[r].bus) != cudaSuccess) {
            cudaGetLastError();
            why = "rank " + std::to_string(r) + "'s GPU " + all[r].bus + " is not visible to rank " + std::to_string(rank);
        } else if (peer != device && (cudaDeviceCanAccessPeer(&can, device, peer) != cudaSuccess || !can)) {
            cudaGetLastError();
            why = "GPU " + std::string(all[r].bus) + " (rank " + std::to_string(r) + ") and GPU " + mine.bus + " (rank " +
                  std::to_string(rank) + ") have no peer access";
        }
    }
    return why;
}

}  // namespace

// Collective: every rank says whether it can take part; the one-shot path is on only if all
// can. Each rank's flags and buffers are one cudaMalloc block, zeroed before the handles are
// exchanged (the exchange is the barrier that keeps a fast peer's first flag from being wiped).
void NcclComm::setup_oneshot(MpiCommunicator& mpi, const KernelConfig& tuning) {
    std::string why;
    if (!tuning.oneshot) why = "backend.tuning.oneshot = false";
    if (world_ > cuda::kOneShotMaxRanks) why = "more than " + std::to_string(cuda::kOneShotMaxRanks) + " ranks";

    const std::string peers = peer_problem(mpi, world_, rank_, why.empty());
    if (why.empty()) why = peers;

    const size_t capacity = kOneShotBytes / sizeof(__nv_bfloat16);
    const size_t flag_bytes = sizeof(uint32_t) * cuda::kOneShotBlocks * cuda::kOneShotMaxRanks;
    const size_t data_offset = (flag_bytes + 255) / 256 * 256;
    const size_t ll_offset = data_offset + 2 * (size_t)world_ * capacity * sizeof(__nv_bfloat16);
    const size_t bytes = ll_offset + 2 * (size_t)world_ * kExchangeUnits * sizeof(uint2);
    cudaIpcMemHandle_t handle{};
    if (why.empty()) {
        CUDA_CHECK(cudaMalloc(&oneshot_base_, bytes));
        CUDA_CHECK(cudaMemset(oneshot_base_, 0, bytes));
        CUDA_CHECK(cudaDeviceSynchronize());
        if (cudaIpcGetMemHandle(&handle, oneshot_base_) != cudaSuccess) {
            why = std::string("cudaIpcGetMemHandle failed: ") + cudaGetErrorString(cudaGetLastError());
        }
    }
    // Every rank takes part in each agreement, ready or not, so that none waits alone; the first
    // rank that is not ready is named.
    auto agree = [&](const std::string& failure) {
        char ready = why.empty();
        std::vector<char> all_ready(world_);
        mpi.all_gather_bytes(&ready, 1, all_ready.data());
        for (int r = 0; r < world_ && why.empty(); ++r)
            if (!all_ready[r]) why = "rank " + std::to_string(r) + " " + failure;
    };
    std::vector<cudaIpcMemHandle_t> handles(world_);
    mpi.all_gather_bytes(&handle, sizeof(handle), handles.data());
    agree("cannot take part");

    if (why.empty()) {
        oneshot_.rank = rank_;
        oneshot_.world = world_;
        oneshot_.capacity = capacity;
        oneshot_.ll_units = kExchangeUnits;
        for (int r = 0; r < world_ && why.empty(); ++r) {
            char* base = nullptr;
            if (r == rank_) {
                base = static_cast<char*>(oneshot_base_);
            } else {
                void* p = nullptr;
                cudaError_t e = cudaIpcOpenMemHandle(&p, handles[r], cudaIpcMemLazyEnablePeerAccess);
                if (e != cudaSuccess) {
                    cudaGetLastError();
                    why = "cudaIpcOpenMemHandle of rank " + std::to_string(r) + "'s buffer failed: " + cudaGetErrorString(e);
                    break;
                }
                oneshot_mapped_.push_back(p);
                base = static_cast<char*>(p);
            }
            oneshot_.flags[r] = reinterpret_cast<uint32_t*>(base);
            oneshot_.data[r] = reinterpret_cast<__nv_bfloat16*>(base + data_offset);
            oneshot_.ll[r] = reinterpret_cast<uint2*>(base + ll_offset);
        }
    }
    agree("could not map its peers' buffers");
    if (!why.empty()) {
        release_oneshot();
        oneshot_status_ = "one-shot all-reduce off (" + why + "): NCCL for every all-reduce";
    } else {
        CUDA_CHECK(cudaMalloc(&oneshot_.counters, sizeof(uint32_t) * (cuda::kOneShotBlocks + 2)));
        CUDA_CHECK(cudaMemset(oneshot_.counters, 0, sizeof(uint32_t) * (cuda::kOneShotBlocks + 2)));
        CUDA_CHECK(cudaHostAlloc(&oneshot_error_host_, sizeof(int), cudaHostAllocMapped));
        *oneshot_error_host_ = 0;
        CUDA_CHECK(cudaHostGetDevicePointer(&oneshot_.error, oneshot_error_host_, 0));
        // Half the host's timeout: the kernel gives up first, so that the host can name the rank.
        // (A timeout of 0, waiting forever, is the largest wait the kernels can count.)
        oneshot_.timeout_ns = timeout_s_ > 0 ? (uint64_t)(timeout_s_ * 0.5e9) : UINT64_MAX;
        oneshot_status_ = "one-shot all-reduce over CUDA IPC for messages up to " + std::to_string(kOneShotBytes >> 10) +
                          " KiB, NCCL above";
        fused_ = tuning.fused_all_reduce;
        oneshot_status_ += fused_ ? "; batch-1 decode sums it in the GEMVs (backend.tuning.fused_all_reduce = false: off)"
                                  : "; not fused into the GEMVs (backend.tuning.fused_all_reduce = false)";
    }
    if (rank_ == 0) log_info(oneshot_status_);
}

// Nothing is freed while an exception unwinds: a kernel may still be using the buffers.
void NcclComm::release_oneshot() {
    if (std::uncaught_exceptions()) return;
    for (void* p : oneshot_mapped_) cudaIpcCloseMemHandle(p);
    oneshot_mapped_.clear();
    if (oneshot_base_) cudaFree(oneshot_base_);
    if (oneshot_.counters) cudaFree(oneshot_.counters);
    if (oneshot_error_host_) cudaFreeHost(oneshot_error_host_);
    oneshot_base_ = nullptr;
    oneshot_error_host_ = nullptr;
    oneshot_ = cuda::OneShotPeers{};
}

int NcclComm::oneshot_missing_rank() const {
    if (!oneshot_error_host_) return -1;
    int e = *const_cast<volatile int*>(oneshot_error_host_);
    return e > 0 ? e - 1 : -1;
}

void NcclComm::abort() {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
}

void NcclComm::all_reduce(__nv_bfloat16* data, size_t n) { all_reduce(data, data, n); }

// The failure tests' hook (TPX_FAULT=R:allreduce): rank R dies in its next all-reduce, fused or not.
void NcclComm::maybe_fail() const { maybe_inject_fault("allreduce", rank_); }

void NcclComm::all_reduce(const __nv_bfloat16* in, __nv_bfloat16* out, size_t n) {
    maybe_fail();
    // Every rank must take the same path: n is the same on all ranks, and so is the alignment
    // (activations are stream-ordered allocations, 256-byte aligned, at offsets fixed by shapes
    // that tensor parallelism makes equal).
    if (oneshot() && cuda::oneshot_all_reduce_applies(in, out, n, oneshot_)) {
        cuda::oneshot_all_reduce(in, out, n, oneshot_, launch_);
        return;
    }
    NCCL_CHECK(ncclAllReduce(in, out, n, ncclBfloat16, ncclSum, comm_, stream_));
}

bool NcclComm::push_applies(int64_t K, int64_t N, const __nv_bfloat16* x, const __nv_bfloat16* w) const {
    return fused_ && oneshot() && cuda::gemv_push_applies(K, N, x, w, oneshot_);
}

void NcclComm::gemv_push(int64_t K, int64_t N, const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, uint32_t seq) {
    maybe_fail();
    cuda::gemv_push({K, N, x, w, bias, seq}, oneshot_, launch_);
}

cuda::ExchangeIn NcclComm::exchange_in(uint32_t seq) const { return cuda::exchange_in(oneshot_, seq); }

void NcclComm::exchange_advance(uint32_t calls) { cuda::exchange_advance(oneshot_, calls, launch_); }

void NcclComm::all_gather(const __nv_bfloat16* in, size_t n, __nv_bfloat16* out) {
    NCCL_CHECK(ncclAllGather(in, out, n, ncclBfloat16, comm_, stream_));
}

void NcclComm::sync() { sync_with_watchdog(stream_, this, timeout_s_); }

void sync_with_watchdog(cudaStream_t stream, NcclComm* comm, double timeout_s) {
    auto start = std::chrono::steady_clock::now();
    for (;;) {
        cudaError_t e = cudaStreamQuery(stream);
        if (e != cudaSuccess && e != cudaErrorNotReady) CUDA_CHECK(e);
        if (comm && comm->oneshot_missing_rank() >= 0) {
            int r = comm->oneshot_missing_rank();
            comm->abort();
            throw Error("rank " + std::to_string(r) + " did not reach a one-shot all-reduce within " + std::to_string((int)timeout_s) +
                        " s (stopped or stuck?); NCCL communicator aborted");
        }
        if (e == cudaSuccess) return;
        if (comm && comm->comm_handle()) {
            ncclResult_t async = ncclSuccess;
            NCCL_CHECK(ncclCommGetAsyncError(comm->comm_handle(), &async));
            if (async != ncclSuccess && async != ncclInProgress) {
                comm->abort();
                throw Error(std::string("NCCL reported an asynchronous error: ") + ncclGetErrorString(async) + "; communicator aborted");
            }
        }
        if (timeout_s > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s) {
            if (comm) comm->abort();
            throw Error("the GPU stream did not finish within " + std::to_string((int)timeout_s) +
                        " s (a peer rank stopped in a collective?); NCCL communicator aborted");
        }
        // Polled without sleeping for the first 20 ms: a 50 us sleep (60 to 110 us with the
        // kernel's timer slack) landed on every decode step's critical path.
        if (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(20)) std::this_thread::yield();
        else std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
}

}  // namespace tpx
