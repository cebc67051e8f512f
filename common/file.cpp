// Whole-or-nothing output files; FIFOs and devices written in place (common/output_path.h).
#include "common/file.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/output_path.h"
#include "common/temporaries.h"

namespace tpx {

std::string written_path(const std::string& path) {
    std::filesystem::path p = path;
    for (int hop = 0; hop < 40; ++hop) {  // the kernel's own limit on a chain of links
        std::error_code ec;
        if (!std::filesystem::is_symlink(p, ec)) return p.string();
        const std::filesystem::path target = std::filesystem::read_symlink(p, ec);
        if (ec) throw Error(path + ": cannot read the symlink " + p.string() + ": " + ec.message());
        p = target.is_absolute() ? target : p.parent_path() / target;
    }
    std::error_code ec;
    if (!std::filesystem::is_symlink(p, ec)) return p.string();
    throw Error(path + ": a chain of more than 40 symlinks (a loop?); nothing written");
}

std::string temp_path_for(const std::string& path) {
    std::string suffix = ".tmp-" + std::to_string(::getpid());
    if (!is_stream_target(path)) return written_path(path) + suffix;
    std::string name = std::filesystem::path(path).filename().string();
    return (std::filesystem::temp_directory_path() / ("tpx-" + name + suffix)).string();
}

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write, bool binary, double stream_wait_s) {
    OutputSet one;
    one.add(path, write, binary);
    one.commit(stream_wait_s);
}

namespace {

// Closes a file descriptor when it goes.
struct Fd {
    int fd = -1;
    explicit Fd(int f) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

// SIGPIPE held for the thread while it lives, and one raised meanwhile taken back: a reader that
// goes early (`head -1 < FIFO`) is a write's EPIPE, named, rather than a silent death.
class NoSigpipe {
public:
    NoSigpipe() {
        sigemptyset(&pipe_);
        sigaddset(&pipe_, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
    }
    ~NoSigpipe() {
        const timespec now{0, 0};
        while (sigtimedwait(&pipe_, nullptr, &now) == SIGPIPE) {
        }
        pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    }
    NoSigpipe(const NoSigpipe&) = delete;
    NoSigpipe& operator=(const NoSigpipe&) = delete;

private:
    sigset_t pipe_, old_;
};

// Opens a FIFO or device for writing: /dev/stdout and /dev/stderr as this process has them (its
// descriptor's offset and append mode shared, as a shell's redirection set them); a FIFO with no
// reader is waited for, up to `wait_s` (0: as long as it takes, as `cat > FIFO` would), and a
// reader that never came is reported as not within `stated_s` (the whole wait where several
// FIFOs share one).
int open_stream(const std::string& path, double wait_s, double stated_s) {
    if (const int standard = standard_stream(path); standard >= 0) {
        const int fd = ::fcntl(standard, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) throw Error(path + ": cannot write: " + std::strerror(errno));
        return fd;
    }
    struct stat st;
    const bool fifo = ::stat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait_s);
    for (;;) {
        const int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) {
            ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
            return fd;
        }
        if (errno != ENXIO || !fifo) throw Error(path + ": cannot open for writing: " + std::strerror(errno));
        if (wait_s > 0 && std::chrono::steady_clock::now() > deadline) {
            std::ostringstream what;
            what << path << ": no process opened this FIFO for reading within " << std::setprecision(3) << stated_s << " s; nothing was written to it";
            throw Error(what.str());
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

// tmp's bytes copied into the FIFO or device `path` (open_stream's wait_s and stated_s), tmp
// removed first: nothing is left behind however this ends (a FIFO's reader may be waited for).
void copy_into_stream(const std::string& tmp, const std::string& path, double wait_s, double stated_s) {
    Fd in(::open(tmp.c_str(), O_RDONLY | O_CLOEXEC));
    const int open_err = errno;
    std::remove(tmp.c_str());
    if (in.fd < 0) throw Error(path + ": cannot read back " + tmp + ": " + std::strerror(open_err));
    Fd out(open_stream(path, wait_s, stated_s));
    NoSigpipe no_sigpipe;
    char buffer[1 << 16];
    for (;;) {
        const ssize_t got = ::read(in.fd, buffer, sizeof(buffer));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) throw Error(path + ": cannot read back " + tmp + ": " + std::strerror(errno));
        if (got == 0) return;
        for (ssize_t done = 0; done < got;) {
            const ssize_t put = ::write(out.fd, buffer + done, (size_t)(got - done));
            if (put < 0 && errno == EINTR) continue;
            if (put < 0) throw Error(path + ": cannot write: " + std::strerror(errno));
            done += put;
        }
    }
}

// The temporary file tmp, made empty and this process's own before anything writes it: what
// was at its name (a leftover, or a symlink planted there so that the write would go through it
// into another file) removed first, and the file created exclusively, not following a link.
// Where a file is at `path`, its permission bits are returned for commit() to give the new file
// just before the rename (as `mv` would leave them; setuid, setgid and sticky are dropped, as a
// shell's `>` drops them): meanwhile the temporary file stays writable by its owner, so that a
// read-only output is replaced, not refused after the run (mode -1: none there). Messages call
// the file `named`. kOwnerOnly: 0600 from the start and after the rename, whatever was there.
// Returns the file's identity too, which commit() checks again before the rename: writers that
// open tmp by name have a link swapped in meanwhile caught there (though by then written
// through), so a secret is written through `fd`, the descriptor that made the file, instead.
struct OwnTemporary {
    dev_t dev;
    ino_t ino;
    int mode;
    int fd;  // open for writing: the caller's to close
};
OwnTemporary make_own_temporary(const std::string& tmp, const std::string& path, const std::string& named, Access access) {
    if (::unlink(tmp.c_str()) != 0 && errno != ENOENT && errno != ENOTDIR)
        throw Error(named + ": cannot remove " + tmp + " (in the way of the file written): " + std::strerror(errno));
    const bool owner_only = access == Access::kOwnerOnly;
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, owner_only ? 0600 : 0666));
    if (fd.fd < 0) throw Error(named + ": cannot create the file " + tmp + ": " + std::strerror(errno));
    struct stat st;
    int mode = -1;
    if (owner_only) {  // (open's 0600 is cut by the umask: 0277 would leave the owner unable to write)
        mode = 0600;
        if (::fchmod(fd.fd, 0600) != 0) throw Error(named + ": cannot make " + tmp + " its owner's alone: " + std::strerror(errno));
    } else if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
        mode = (int)(st.st_mode & 0777);
        (void)::fchmod(fd.fd, (mode_t)mode | S_IRUSR | S_IWUSR);
    }
    if (::fstat(fd.fd, &st) != 0) throw Error(named + ": cannot look at " + tmp + ": " + std::strerror(errno));
    const int kept = fd.fd;
    fd.fd = -1;
    return {st.st_dev, st.st_ino, mode, kept};
}

// text through fd (EINTR retried). Errors name `path`.
void write_all(int fd, const std::string& text, const std::string& path) {
    for (size_t at = 0; at < text.size();) {
        const ssize_t n = ::write(fd, text.data() + at, text.size() - at);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw Error(path + ": write failed: " + (n < 0 ? std::strerror(errno) : "nothing written"));
        at += (size_t)n;
    }
}

}  // namespace

std::string write_new_private_file(const std::string& folder, const std::string& prefix, const std::string& suffix, const std::string& text) {
    std::string name = (std::filesystem::path(folder) / (prefix + "-XXXXXX" + suffix)).string();
    Fd fd(::mkstemps(name.data(), (int)suffix.size()));
    if (fd.fd < 0) throw Error(name + ": cannot be created: " + std::strerror(errno));
    try {
        write_all(fd.fd, text, name);
        const int made = fd.fd;  // a full disk may show only at the close
        fd.fd = -1;
        if (::close(made) != 0) throw Error(name + ": write failed: " + std::strerror(errno));
    } catch (...) {
        std::remove(name.c_str());
        throw;
    }
    return name;
}

void write_file_atomically(const std::string& path, const std::string& text, double stream_wait_s, Access access) {
    OutputSet one;
    one.add(path, [&](std::ostream& out) { out << text; }, false, access);
    one.commit(stream_wait_s);
}

OutputSet::~OutputSet() {
    for (const Staged& f : staged_) {
        std::remove(f.tmp.c_str());
        unregister_temporary(f.slot);
    }
}

void OutputSet::add_file(const std::string& given, const std::function<void(const std::string& tmp)>& write_to) {
    stage(given, Access::kAsUsual, [&](const std::string& tmp, int) { write_to(tmp); });
}

void OutputSet::stage(const std::string& given, Access access, const std::function<void(const std::string& tmp, int fd)>& write_to) {
    const std::string path = is_stream_target(given) ? given : written_path(given);
    const std::string named = path == given ? given : given + " (where its symlink leads: " + path + ")";
    if (access == Access::kOwnerOnly && is_stream_target(path))  // its reader would get the secret
        throw Error(named + ": is a FIFO or device: a file that carries a secret is written only as a file of its own");
    std::string tmp = temp_path_for(path);
    // Two outputs on one device (/dev/null twice) share a name in the temporary folder.
    for (const Staged& f : staged_)
        if (f.tmp == tmp) tmp += "-" + std::to_string(staged_.size());
    const int slot = register_temporary(tmp);
    try {
        const OwnTemporary own = make_own_temporary(tmp, path, named, access);
        Fd fd(own.fd);
        if (access != Access::kOwnerOnly) {  // the writer opens tmp by name
            ::close(fd.fd);
            fd.fd = -1;
        }
        write_to(tmp, fd.fd);
        const int made = fd.fd;  // closed here: a full disk or a network file system's late error shows at the close
        fd.fd = -1;
        if (made >= 0 && ::close(made) != 0) throw Error(named + ": write failed: " + std::strerror(errno));
        staged_.push_back({tmp, path, named, slot, own.dev, own.ino, own.mode});
    } catch (...) {
        std::remove(tmp.c_str());
        unregister_temporary(slot);
        throw;
    }
}

void OutputSet::add(const std::string& path, const std::function<void(std::ostream&)>& write, bool binary, Access access) {
    const auto write_to = [&](const std::string& tmp, int fd) {
        if (fd >= 0) {  // kOwnerOnly: through the descriptor that made the file, never by its name
            std::ostringstream text;
            write(text);
            if (!text) throw Error(path + ": the text to write could not be made");
            return write_all(fd, text.str(), path);
        }
        std::ofstream out(tmp, binary ? std::ios::binary | std::ios::trunc : std::ios::trunc);
        if (!out) throw Error(path + ": cannot create the file: " + std::strerror(errno));
        write(out);
        out.close();  // flushes: a full disk shows here
        if (!out) throw Error(path + ": write failed: " + std::strerror(errno));
    };
    stage(path, access, write_to);
}

void OutputSet::commit(double stream_wait_s) {
    std::vector<Staged> streams, files;
    for (const Staged& f : staged_) (is_stream_target(f.path) ? streams : files).push_back(f);
    // What is not moved into place by the end is removed, with the old versions set aside below.
    std::vector<std::pair<std::string, int>> left;  // paths and their register_temporary slots
    for (const Staged& f : staged_) left.push_back({f.tmp, f.slot});
    staged_.clear();
    struct Cleanup {
        std::vector<std::pair<std::string, int>>& paths;
        ~Cleanup() {
            for (const auto& [p, slot] : paths) {
                std::remove(p.c_str());
                unregister_temporary(slot);
            }
        }
    } cleanup{left};
    // FIFOs and devices first: their bytes are copied in and may fail (/dev/full), and cannot be
    // taken back. One wait for all their readers: stream_wait_s from now.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(stream_wait_s);
    for (const Staged& f : streams) {
        const double left_s = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
        copy_into_stream(f.tmp, f.path, stream_wait_s > 0 ? std::max(left_s, 0.001) : 0.0, stream_wait_s);
    }
    // Each file's old version kept under a second name (a hard link, as long as the temporary
    // name, which the writability check proved fits) until every file is in place, so that a
    // failed rename (an immutable file, a folder put there meanwhile) puts all of them back. Where
    // the file system takes no hard link, that file has no way back.
    // A terminating signal waits for the files' renames or their undoing (its handler would remove
    // the old versions set aside), then removes what is left and ends the process.
    HoldTerminatingSignals hold;
    std::vector<std::string> old(files.size());
    std::vector<bool> existed(files.size());
    for (size_t i = 0; i < files.size(); ++i) {
        struct stat st;
        existed[i] = ::lstat(files[i].path.c_str(), &st) == 0;
        if (!existed[i]) continue;
        std::string aside = files[i].tmp;
        aside.replace(aside.rfind(".tmp-"), 5, ".old-");
        ::unlink(aside.c_str());  // a leftover of an earlier process of this PID
        const int slot = register_temporary(aside);
        if (::link(files[i].path.c_str(), aside.c_str()) == 0) {
            old[i] = aside;
            left.push_back({aside, slot});
        } else {
            unregister_temporary(slot);
        }
    }
    for (size_t i = 0; i < files.size(); ++i) {
        struct stat st;
        bool own = ::lstat(files[i].tmp.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == files[i].dev && st.st_ino == files[i].ino;
        int err = 0;
        if (own && files[i].mode >= 0) {  // the old file's bits, on the file itself (opened without following a link)
            Fd fd(::open(files[i].tmp.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
            own = fd.fd >= 0 && ::fstat(fd.fd, &st) == 0 && st.st_dev == files[i].dev && st.st_ino == files[i].ino;
            if (own && ::fchmod(fd.fd, (mode_t)files[i].mode) != 0) err = errno;
        }
        if (own && err == 0 && std::rename(files[i].tmp.c_str(), files[i].path.c_str()) == 0) continue;
        if (own && err == 0) err = errno;
        std::string not_back;
        for (size_t k = 0; k < i; ++k) {  // back as they were
            const bool back = !old[k].empty() ? std::rename(old[k].c_str(), files[k].path.c_str()) == 0
                                              : !existed[k] && std::remove(files[k].path.c_str()) == 0;
            if (!back) not_back += (not_back.empty() ? "" : ", ") + files[k].path;
        }
        std::string streams_written;
        for (const Staged& f : streams) streams_written += (streams_written.empty() ? "" : ", ") + f.path;
        throw Error(files[i].named + ": cannot move the finished file into place: " +
                    (own ? std::string(std::strerror(err)) : "its temporary file " + files[i].tmp + " was replaced while it was written") +
                    (i == 0 ? "" : not_back.empty() ? "; the run's other files were put back as they were" : "; not put back: " + not_back) +
                    (streams_written.empty() ? "" : " (already written, as FIFOs and devices cannot be taken back: " + streams_written + ")"));
    }
}

}  // namespace tpx
