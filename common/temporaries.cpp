// The registry of temporary files a terminating signal removes (common/temporaries.h).
#include "common/temporaries.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace tpx {
namespace {

// Fixed storage a handler can read: a name's bytes are written once, before its slot is
// published (release; the handler reads the state with acquire), and never written again.
constexpr int kSlots = 256;
constexpr size_t kNameBytes = 4096;
char g_names[kSlots][kNameBytes];
std::atomic<int> g_state[kSlots];  // 0 free, 1 registered, 2 released
std::atomic<int> g_next{0};
std::atomic<int> g_holds{0};     // HoldTerminatingSignals alive
std::atomic<int> g_held_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler reads these");

void remove_registered() {
    const int n = std::min(g_next.load(std::memory_order_acquire), kSlots);
    for (int i = 0; i < n; ++i)
        if (g_state[i].load(std::memory_order_acquire) == 1) ::unlink(g_names[i]);
}

void end_by(int sig) {
    remove_registered();
    ::signal(sig, SIG_DFL);
    ::raise(sig);
}

void on_terminating_signal(int sig) {
    if (g_holds.load(std::memory_order_acquire) > 0) {
        int none = 0;
        g_held_signal.compare_exchange_strong(none, sig);
        return;
    }
    end_by(sig);
}

}  // namespace

void remove_temporaries_on_signals() {
    struct sigaction sa = {};
    sa.sa_handler = on_terminating_signal;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) ::sigaction(sig, &sa, nullptr);
}

int register_temporary(const std::string& path) {
    if (path.size() >= kNameBytes) return -1;
    const int slot = g_next.fetch_add(1, std::memory_order_acq_rel);
    if (slot >= kSlots) return -1;
    std::memcpy(g_names[slot], path.c_str(), path.size() + 1);
    g_state[slot].store(1, std::memory_order_release);
    return slot;
}

void unregister_temporary(int slot) {
    if (slot >= 0 && slot < kSlots) g_state[slot].store(2, std::memory_order_release);
}

HoldTerminatingSignals::HoldTerminatingSignals() { g_holds.fetch_add(1, std::memory_order_acq_rel); }

HoldTerminatingSignals::~HoldTerminatingSignals() {
    if (g_holds.fetch_sub(1, std::memory_order_acq_rel) == 1)
        if (const int sig = g_held_signal.exchange(0); sig != 0) end_by(sig);
}

}  // namespace tpx
