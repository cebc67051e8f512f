// What each rank did, gathered on rank 0: bytes read (and what the plan said), load time,
// peak host memory, weights and KV cache held. Printed as a table and written as JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "worker/comm.h"

namespace tpx {

struct RankReport {
    int rank = 0;
    std::string host;
    double read_bytes = 0;       // tensor data read from the checkpoint
    double header_bytes = 0;     // headers, index and config
    double planned_read_bytes = 0;
    double load_seconds = 0;
    double peak_rss_bytes = 0;
    double weight_bytes = 0;     // weights held
    double kv_cache_bytes = 0;
};

// Collective; returns every rank's report on rank 0 (its own elsewhere).
std::vector<RankReport> gather_reports(const RankReport& mine, Communicator& comm);
std::string format_reports(const std::vector<RankReport>& reports);
std::string reports_json(const std::vector<RankReport>& reports);

double peak_rss_bytes();

}  // namespace tpx
