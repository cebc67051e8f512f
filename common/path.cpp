// Names that mean a file of whichever process opens them (common/path.h).
#include "common/path.h"

#include <regex>

namespace tpx {

std::string process_relative_name(const std::string& path) {
    static const std::regex own(R"(^/(dev/(stdin|stdout|stderr|fd/[0-9]+)|proc/(self|thread-self)(/.*)?|proc/[0-9]+/fd/[0-9]+)$)");
    std::filesystem::path p = std::filesystem::path(path).lexically_normal();
    for (int hop = 0; hop < 40; ++hop) {  // the kernel's own limit on a chain of links
        if (std::regex_match(p.string(), own)) return p.string();
        std::error_code ec;
        // A link among the folders (a link to /proc/self): the folders resolved.
        const std::filesystem::path folders = std::filesystem::weakly_canonical(p.parent_path(), ec) / p.filename();
        if (!ec && std::regex_match(folders.string(), own)) return folders.string();
        if (!std::filesystem::is_symlink(p, ec)) return "";
        const std::filesystem::path target = std::filesystem::read_symlink(p, ec);
        if (ec) return "";
        p = (target.is_absolute() ? target : p.parent_path() / target).lexically_normal();
    }
    return "";
}

}  // namespace tpx
