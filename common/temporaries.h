// Temporary files that a terminating signal (SIGTERM, SIGINT, SIGHUP) must not leave behind: a
// run's staged outputs (OutputSet, common/file.h) and tpx convert's HDF5 file register theirs
// while they exist; the handlers remove_temporaries_on_signals installs remove them, then end the
// process as the signal would have. What must stay true, since the handler may run on any thread
// at any moment: a registered name is never changed (slots are not reused within a process), and
// no handler removes anything while outputs are being moved into place (a commit holds the
// signal back until it has finished or put everything back). SIGKILL leaves the files.
#pragma once

#include <string>

namespace tpx {

// Installs the handlers: once, early in main, where nothing else handles those signals.
void remove_temporaries_on_signals();

// A slot for `path` (-1 when none is left or the name is too long: then it is not removed on a
// signal), and its release.
int register_temporary(const std::string& path);
void unregister_temporary(int slot);

// While one lives, a terminating signal is held: its handler only notes it, and the note is acted
// on (the temporaries removed, the process ended by the signal) when the last one goes.
class HoldTerminatingSignals {
public:
    HoldTerminatingSignals();
    ~HoldTerminatingSignals();
    HoldTerminatingSignals(const HoldTerminatingSignals&) = delete;
    HoldTerminatingSignals& operator=(const HoldTerminatingSignals&) = delete;
};

}  // namespace tpx
