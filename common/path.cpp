// Paths as the system reads them: absolute_path, and the names that mean a file of whichever
// process opens them (common/path.h).
#include "common/path.h"

#include <unistd.h>

#include <regex>

namespace tpx {

std::string absolute_path(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path whole = path.is_absolute() ? path : fs::absolute(path, ec);
    if (ec || path.empty()) return path.lexically_normal().string();
    fs::path out = whole.root_path();
    bool linked = false;  // a component so far was a symlink: from there on ".." stays
    for (const fs::path& part : whole.relative_path()) {
        const std::string name = part.string();
        if (name.empty() || name == ".") continue;
        if (name == "..") {
            if (!linked && out.has_relative_path()) out = out.parent_path();
            else if (out.has_relative_path()) out /= part;
            continue;
        }
        out /= part;
        if (!linked && fs::is_symlink(out, ec)) linked = true;
    }
    // A name that ends in '/', "/." or "/.." names a folder: it keeps its '/' (an output so
    // named is refused as a folder).
    std::string s = out.string();
    const std::string typed = path.string(), last = path.filename().string();
    if ((typed.back() == '/' || last == "." || last == "..") && s.back() != '/') s += '/';
    return s;
}

std::string process_relative_name(const std::string& path) {
    static const std::regex own(R"(^/(dev/(stdin|stdout|stderr|fd/[0-9]+)|proc/(self|thread-self)(/.*)?|proc/[0-9]+/fd/[0-9]+)$)");
    std::filesystem::path p = std::filesystem::path(path).lexically_normal();
    for (int hop = 0; hop < 40; ++hop) {  // the kernel's own limit on a chain of links
        if (std::regex_match(p.string(), own)) return p.string();
        std::error_code ec;
        // A link among the folders (a link to /proc/self): the folders resolved, this process's
        // /proc/PID (and /proc/PID/task/TID) named as the links to it are.
        std::string folders = (std::filesystem::weakly_canonical(p.parent_path(), ec) / p.filename()).string();
        const std::string mine = "/proc/" + std::to_string(::getpid());
        if (!ec && (folders == mine || folders.rfind(mine + "/", 0) == 0)) {
            folders = "/proc/self" + folders.substr(mine.size());
            static const std::regex task(R"(^/proc/self/task/[0-9]+)");
            folders = std::regex_replace(folders, task, "/proc/thread-self", std::regex_constants::format_first_only);
        }
        if (!ec && std::regex_match(folders, own)) return folders;
        if (!std::filesystem::is_symlink(p, ec)) return "";
        const std::filesystem::path target = std::filesystem::read_symlink(p, ec);
        if (ec) return "";
        p = (target.is_absolute() ? target : p.parent_path() / target).lexically_normal();
    }
    return "";
}

}  // namespace tpx
