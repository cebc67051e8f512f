// Running a job's mpirun from the launcher (`tpx run`, `tpx serve`): its stderr relayed line by
// line, signals to tpx passed on, and an mpirun that lingers after the job failed ended by
// force. Should tpx itself die (SIGKILL), mpirun gets SIGTERM from the kernel
// (PR_SET_PDEATHSIG), so no rank outlives it.
#pragma once

#include <string>
#include <vector>

namespace tpx {

struct MpirunSettings {
    std::string name = "tpx run";  // how messages begin
    // 0: the first SIGINT, SIGTERM or SIGHUP is passed on as SIGTERM (mpirun ends the ranks).
    // Otherwise the first of those, or this signal itself sent to tpx, is passed on as this
    // signal, to the ranks on this host directly (tpx's tpx-worker descendants; rank 0 drains
    // and tells the others: `tpx serve`; to mpirun when rank 0 has not been seen among this
    // host's ranks rank0_wait_s after the signal), and mpirun gets SIGTERM only when it has not
    // ended drain_s later, or at a second signal.
    int drain_signal = 0;
    double drain_s = 0;
    // How long the drain signal waits for rank 0 to appear among this host's ranks before it goes
    // to mpirun (which passes it to ranks that may not have their handlers yet, or dies of it): 2 s
    // where rank 0 may run on another host, longer where the job puts it here (a loaded host may
    // take more than 2 s to start it).
    double rank0_wait_s = 2;
};

struct MpirunOutcome {
    int code = 0;       // mpirun's exit status (128 + N when a signal N ended it)
    int signal = 0;     // the signal that interrupted tpx, if any (the last)
    int signals = 0;    // how many arrived
    bool failing = false;  // its stderr said the job was failing (before a second signal, where one came)
    double seconds = 0;
};

// For tpx's closing line: mpirun's own exit status where it differs from tpx's (exit_code),
// and the signal its status tells of ("; mpirun's 137: signal 9, Killed"); "" where they agree.
std::string mpirun_status_note(int mpirun_code, int exit_code);

// Starts `cmd` and waits for it, then ends what it left running (a wrapper's mpirun, a killed
// mpirun's ranks: tpx is their child subreaper meanwhile); throws Error when the pipe or the fork
// fails.
MpirunOutcome run_mpirun(std::vector<std::string> cmd, const MpirunSettings& settings);

}  // namespace tpx
