// `tpx refit URL PATH`: asks a running `tpx serve` to read new weights in place
// (POST URL/v1/admin/refit, docs/SERVE.md) and prints the per-rank table it answers with.
// Exit 0 when refitted, 2 when the server refused the checkpoint (its old weights still serve),
// 1 otherwise (unreachable, refit turned off, or the server failed and is ending).
#include <httplib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json_object.h"
#include "common/path.h"
#include "jobs/job.h"
#include "launcher/command.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;
using nlohmann::json;

namespace tpx {
namespace {

// Text from the server as printable text: control bytes (an escape sequence) as '?'.
std::string printable(std::string text) {
    for (char& c : text)
        if (((unsigned char)c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) c = '?';
    return text;
}

// Why no answer came, in words (httplib names the step that failed).
std::string no_answer_reason(httplib::Error e) {
    switch (e) {
        case httplib::Error::Connection: return "cannot connect (is tpx serve running there?)";
        case httplib::Error::Read: return "the connection ended, or --timeout passed, before an answer";
        case httplib::Error::Write: return "the connection ended while the call was sent";
        default: return httplib::to_string(e);
    }
}

// The server's table: one line per rank (json's type_error where the answer is not shaped so).
void print_refit(const json& r) {
    if (!r.contains("ranks") || !r["ranks"].is_array() || !r.contains("path") || !r["path"].is_string())
        throw json::other_error::create(501, "no \"path\" and \"ranks\"", nullptr);
    std::printf("refit from %s: %.3f s (%.3f s draining, %lld sequences aborted), %.3f GB at %.2f GB/s\n",
                r.value("path", "").c_str(), r.value("seconds", 0.0), r.value("drain_seconds", 0.0), (long long)r.value("aborted", 0),
                r.value("bytes", 0.0) / 1e9, r.value("gb_per_s", 0.0));
    std::printf("%5s  %-24s %14s %10s %10s %10s %8s\n", "rank", "host", "bytes", "check s", "read s", "seconds", "GB/s");
    for (const json& x : r.value("ranks", json::array()))
        std::printf("%5d  %-24s %14.0f %10.3f %10.3f %10.3f %8.2f\n", x.value("rank", 0), x.value("host", "").c_str(), x.value("bytes", 0.0),
                    x.value("check_seconds", 0.0), x.value("read_seconds", 0.0), x.value("seconds", 0.0), x.value("gb_per_s", 0.0));
    std::fflush(stdout);
}

}  // namespace

int cmd_refit(const Args& args) {
    po::options_description options("tpx refit options");
    std::string url, path, api_key, api_key_file;
    options.add_options()("url", po::value(&url)->required(), "the server, e.g. http://127.0.0.1:8000")(
        "path", po::value(&path)->required(), "the new checkpoint (same architecture, tensor names, shapes and dtypes)")(
        "abort", "end the requests in flight (finish_reason \"abort\") instead of letting them finish first")(
        "api-key", po::value(&api_key), "the server's [serve] api_key, when it has one (on the command line, which other users' ps shows)")(
        "api-key-file", po::value(&api_key_file), "a file whose first line is the server's api_key (kept off the command line)")(
        "timeout", po::value<double>()->default_value(3600), "seconds to wait for the answer (in-flight requests finish first)");
    po::positional_options_description positional;
    positional.add("url", 1).add("path", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx refit URL PATH [--abort] [--api-key KEY | --api-key-file FILE]", options, positional, vm)) return 0;
    if (vm.count("api-key") && vm.count("api-key-file")) throw JobError("--api-key and --api-key-file: give the key one way");
    if (vm.count("api-key-file")) {
        const std::string named = "--api-key-file " + api_key_file;
        std::error_code ec;
        if (fs::is_directory(api_key_file, ec)) throw JobError(named + ": is a folder, not a file");
        std::ifstream in(api_key_file);
        if (!in) throw JobError(named + ": cannot be opened: " + std::strerror(errno));
        char line[1027];  // a key's 1,024 characters, a CR, a LF: a longer first line is no key
        in.getline(line, sizeof line);
        if (in.gcount() == 0) throw JobError(named + ": has no line");
        if (in.fail() && !in.eof()) throw JobError(named + ": its first line is longer than a key's 1,024 characters");
        api_key = line;
        if ((std::streamsize)api_key.size() < in.gcount() - (in.eof() ? 0 : 1)) throw JobError(named + ": its first line holds a NUL byte");
        if (!api_key.empty() && api_key.back() == '\r') api_key.pop_back();
        if (api_key.empty()) throw JobError(named + ": its first line is empty");
    }
    if (!api_key_allowed(api_key))
        throw JobError((vm.count("api-key-file") ? "--api-key-file " + api_key_file + ": its key" : std::string("--api-key")) +
                       " may hold only up to 1,024 visible ASCII characters, as [serve] api_key");
    // The path is sent absolute (the ranks' working folder is not this shell's): where it
    // exists here as tpx's paths are made absolute, else only joined to this folder, for the
    // server to name what is missing there.
    std::error_code ec;
    const fs::path absolute = fs::absolute(path, ec);
    if (!ec) path = fs::exists(path, ec) ? absolute_path(absolute) : absolute.lexically_normal().string();
    while (!url.empty() && url.back() == '/') url.pop_back();
    // http://HOST:PORT (or HOST:PORT), nothing after: the endpoint's path is the server's.
    static const std::regex kUrl(R"(^(http://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(:([0-9]{1,5}))?$)");
    std::smatch m;
    if (!std::regex_match(url, m, kUrl) || (m[4].matched && (std::stoi(m[4].str()) < 1 || std::stoi(m[4].str()) > 65535)))
        throw JobError("URL \"" + url + "\" is not http://HOST:PORT (the server's address, as tpx serve prints it)");
    const double timeout = vm["timeout"].as<double>();
    if (!(timeout > 0 && timeout <= 1e6)) {
        std::ostringstream given;
        given << timeout;
        throw JobError("--timeout " + given.str() + " must be more than 0 and at most 1e6 seconds");
    }
    httplib::Client client(url);
    client.set_read_timeout(std::chrono::milliseconds((int64_t)(timeout * 1000)));
    if (!api_key.empty()) client.set_bearer_token_auth(api_key);
    json body = {{"path", path}, {"abort", vm.count("abort") > 0}};
    httplib::Result res = client.Post("/v1/admin/refit", body.dump(), "application/json");
    if (!res) throw Error("no answer from " + url + ": " + no_answer_reason(res.error()));
    json answer;  // (null where the answer is not JSON)
    try {
        answer = parse_json_bounded(res->body);
    } catch (const json::exception&) {
    }
    if (res->status == 200) {
        try {
            print_refit(answer);
            return kExitOk;
        } catch (const json::exception&) {
            throw Error(url + " answered 200 with no refit's table: is it tpx serve? (" + printable(res->body.substr(0, 200)) + ")");
        }
    }
    const json* error = answer.is_object() && answer.contains("error") && answer["error"].is_object() ? &answer["error"] : nullptr;
    const std::string message = error && error->contains("message") && (*error)["message"].is_string()
                                    ? (*error)["message"].get<std::string>() : res->body.substr(0, 2000);
    std::fprintf(stderr, "tpx refit: %s answered %d: %s\n", url.c_str(), res->status, printable(message).c_str());
    // The call's fault (the path, the key, refits turned off) is bad input; the rest the run's.
    return res->status == 400 || res->status == 401 || res->status == 403 ? kExitBadInput : kExitRuntime;
}

}  // namespace tpx
