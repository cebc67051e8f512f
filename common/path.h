// Asking what is at a path the user gave, without std::filesystem's throwing calls: those end
// in "internal error: filesystem error: ..." on a symlink loop or an unreadable folder. Each
// layer turns the system's reason into its own typed error (JobError, CheckpointError), named
// by the template argument, whose message names the path.
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace tpx {

// The type of what `path` leads to, following symlinks: not_found when nothing is there (or a
// component is not a folder). When the system cannot say (a symlink loop, no permission to
// look), throws E("<prefix><path>: <the system's reason>").
template <typename E>
std::filesystem::file_type path_type(const std::filesystem::path& path, const std::string& prefix = "") {
    std::error_code ec;
    const std::filesystem::file_status st = std::filesystem::status(path, ec);
    if (st.type() == std::filesystem::file_type::not_found) return st.type();
    if (ec || st.type() == std::filesystem::file_type::none)
        throw E(prefix + path.string() + ": cannot be looked at: " + ec.message() +
                (ec == std::errc::too_many_symbolic_link_levels ? " (a symlink loop?)" : ""));
    return st.type();
}

template <typename E>
bool path_exists(const std::filesystem::path& path, const std::string& prefix = "") {
    return path_type<E>(path, prefix) != std::filesystem::file_type::not_found;
}

// Whether anything is at `path` itself, a dangling symlink included (the link is not followed).
template <typename E>
bool anything_at(const std::filesystem::path& path, const std::string& prefix = "") {
    std::error_code ec;
    const std::filesystem::file_status st = std::filesystem::symlink_status(path, ec);
    if (st.type() == std::filesystem::file_type::not_found) return false;
    if (ec || st.type() == std::filesystem::file_type::none)
        throw E(prefix + path.string() + ": cannot be looked at: " + ec.message());
    return true;
}

template <typename E>
bool is_folder(const std::filesystem::path& path, const std::string& prefix = "") {
    return path_type<E>(path, prefix) == std::filesystem::file_type::directory;
}

// Whether `path` leads to a regular file, following symlinks: false for nothing there and for
// anything else (a folder, a FIFO, a device); never a throw.
inline bool is_regular(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Whether a std::filesystem query's error says the system could not look (a name too long, no
// permission, a symlink loop) rather than that nothing is there.
inline bool looked_at_in_vain(const std::error_code& ec) {
    return ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory;
}

// The name along `path`'s chain of symlinks (itself first, lexically normal, or with its folders
// resolved) that means a file of whichever process opens it: /dev/stdin, /dev/stdout,
// /dev/stderr, /dev/fd/N, /proc/self/..., /proc/thread-self/..., /proc/PID/fd/N; "" when there is
// none. Such a name means one file to tpx and another to a rank.
std::string process_relative_name(const std::string& path);

// `path` made absolute (against the current folder) and tidied as the kernel would read it:
// "." and repeated '/' dropped, and "a/.." dropped only where no symlink came before. Past a
// link, ".." stays for the system to resolve (via/../x, via a link to sub/dir, is sub/x, as a
// shell opens it; lexically_normal would make it x). A name ending in '/', "/." or "/.." keeps a
// final '/'. Never throws: what cannot be looked at counts as no link, and where the current
// folder is gone a relative path comes back as given, lexically normal.
std::string absolute_path(const std::filesystem::path& path);

// The folder of the running program (tpx and tpx-worker share one); empty when the system
// cannot say.
inline std::filesystem::path program_folder() {
    std::error_code ec;
    const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::filesystem::path() : self.parent_path();
}

}  // namespace tpx
