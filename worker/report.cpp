// Gathering is an all_gather of fixed-size records (numbers and a 64-byte host name).
#include "worker/report.h"

#include <sys/resource.h>

#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "common/log.h"

namespace tpx {
namespace {

constexpr int kNumbers = 7;
constexpr int kHost = 64;

}  // namespace

double peak_rss_bytes() {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss * 1024.0;  // Linux reports KiB
}

std::vector<RankReport> gather_reports(const RankReport& mine, Communicator& comm) {
    // The doubles and the host name travel as raw bytes inside a float all_gather.
    std::vector<char> record(kNumbers * sizeof(double) + kHost, 0);
    double numbers[kNumbers] = {mine.read_bytes, mine.header_bytes, mine.planned_read_bytes, mine.load_seconds,
                                mine.peak_rss_bytes, mine.weight_bytes, mine.kv_cache_bytes};
    std::memcpy(record.data(), numbers, sizeof(numbers));
    std::strncpy(record.data() + sizeof(numbers), mine.host.c_str(), kHost - 1);
    size_t floats = (record.size() + sizeof(float) - 1) / sizeof(float);
    record.resize(floats * sizeof(float));
    std::vector<float> all(floats * comm.world());
    comm.all_gather(reinterpret_cast<const float*>(record.data()), floats, all.data());
    std::vector<RankReport> out;
    for (int r = 0; r < comm.world(); ++r) {
        const char* p = reinterpret_cast<const char*>(all.data() + r * floats);
        double n[kNumbers];
        std::memcpy(n, p, sizeof(n));
        RankReport rep;
        rep.rank = r;
        rep.host = std::string(p + sizeof(n), strnlen(p + sizeof(n), kHost));
        rep.read_bytes = n[0], rep.header_bytes = n[1], rep.planned_read_bytes = n[2], rep.load_seconds = n[3];
        rep.peak_rss_bytes = n[4], rep.weight_bytes = n[5], rep.kv_cache_bytes = n[6];
        out.push_back(rep);
    }
    return out;
}

std::string format_reports(const std::vector<RankReport>& reports) {
    std::string s;
    char line[256];
    std::snprintf(line, sizeof(line), "%-5s %-16s %12s %12s %9s %12s %12s %12s\n", "rank", "host", "read", "planned", "load s",
                  "peak host", "weights", "kv cache");
    s += line;
    for (const RankReport& r : reports) {
        std::snprintf(line, sizeof(line), "%-5d %-16s %12s %12s %9.3f %12s %12s %12s\n", r.rank, r.host.c_str(),
                      human_bytes(r.read_bytes).c_str(), human_bytes(r.planned_read_bytes).c_str(), r.load_seconds,
                      human_bytes(r.peak_rss_bytes).c_str(), human_bytes(r.weight_bytes).c_str(), human_bytes(r.kv_cache_bytes).c_str());
        s += line;
    }
    return s;
}

std::string reports_json(const std::vector<RankReport>& reports) {
    nlohmann::json j = nlohmann::json::array();
    for (const RankReport& r : reports)
        j.push_back({{"rank", r.rank}, {"host", r.host}, {"read_bytes", r.read_bytes}, {"header_bytes", r.header_bytes},
                     {"planned_read_bytes", r.planned_read_bytes}, {"load_seconds", r.load_seconds},
                     {"peak_rss_bytes", r.peak_rss_bytes}, {"weight_bytes", r.weight_bytes}, {"kv_cache_bytes", r.kv_cache_bytes}});
    return j.dump(1);
}

}  // namespace tpx
