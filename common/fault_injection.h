// The environment variables tpx-worker reads for itself, all of them here: the failure tests'
// hooks, and settings that once were variables (refused, naming the job key that replaced
// them). Everything else a run needs is in the job file ([backend], [backend.tuning], ...).
//   TPX_FAULT=RANK:STAGE  rank RANK throws at STAGE: plan, load, decode or allreduce
//   TPX_STEP_DELAY_MS=N   each decode (or serve) step pauses N ms: a slow rank, for timeout tests
#pragma once

namespace tpx {

// Throws Error("injected failure at STAGE (TPX_FAULT=...)") when TPX_FAULT names this rank and
// stage. The variable is read once per process.
void maybe_inject_fault(const char* stage, int rank);

// TPX_STEP_DELAY_MS in milliseconds; 0 when unset.
int injected_step_delay_ms();

// Throws JobError when a TPX_* variable that used to be a setting is set: it would be ignored.
void refuse_retired_variables();

}  // namespace tpx
