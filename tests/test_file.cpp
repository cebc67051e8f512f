// Output files are written whole or not at all (common/file.h): a failure keeps the old file,
// leaves no temporary beside it and names the path.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <thread>

#include "common/error.h"
#include "common/file.h"
#include "common/path.h"
#include "process.h"

namespace fs = std::filesystem;

namespace {

size_t entries(const std::string& dir) {
    size_t n = 0;
    for (const auto& e : fs::directory_iterator(dir)) (void)e, ++n;
    return n;
}

}  // namespace

TEST(AtomicFile, WritesTheWholeFileOverTheOldOne) {
    std::string dir = tpx_test::temp_dir(), path = dir + "/out.json";
    tpx::write_file_atomically(path, "old\n");
    tpx::write_file_atomically(path, std::string(1 << 20, 'x'));
    EXPECT_EQ(tpx_test::read_text(path), std::string(1 << 20, 'x'));
    EXPECT_EQ(entries(dir), 1u);
    fs::remove_all(dir);
}

TEST(AtomicFile, AWriterThatFailsLeavesTheOldFileAndNoTemporary) {
    std::string dir = tpx_test::temp_dir(), path = dir + "/out.json";
    tpx::write_file_atomically(path, "old\n");
    EXPECT_THROW(tpx::write_file_atomically(path,
                                            [](std::ostream& out) {
                                                out << "half of it";
                                                throw std::runtime_error("the writer failed");
                                            }),
                 std::runtime_error);
    EXPECT_EQ(tpx_test::read_text(path), "old\n");
    EXPECT_EQ(entries(dir), 1u) << "a temporary file was left behind";
    fs::remove_all(dir);
}

TEST(AtomicFile, ASymlinkIsWrittenThroughAndStaysALink) {
    const std::string dir = tpx_test::temp_dir(), real = dir + "/real.json", link = dir + "/out.json", chain = dir + "/chain.json";
    tpx::write_file_atomically(real, "old\n");
    fs::create_symlink("real.json", link);  // relative: to the link's own folder
    fs::create_symlink(link, chain);
    tpx::write_file_atomically(link, "new\n");
    EXPECT_TRUE(fs::is_symlink(link)) << "the link was replaced by a file";
    EXPECT_EQ(tpx_test::read_text(real), "new\n");
    tpx::write_file_atomically(chain, "newer\n");  // a link to a link: to the end of the chain
    EXPECT_TRUE(fs::is_symlink(chain) && fs::is_symlink(link));
    EXPECT_EQ(tpx_test::read_text(real), "newer\n");
    EXPECT_EQ(entries(dir), 3u) << "a temporary or set-aside file was left behind";
    // A dangling link makes its target, as `echo > link` does.
    const std::string dangling = dir + "/dangling.json";
    fs::create_symlink("made.json", dangling);
    tpx::write_file_atomically(dangling, "made\n");
    EXPECT_TRUE(fs::is_symlink(dangling));
    EXPECT_EQ(tpx_test::read_text(dir + "/made.json"), "made\n");
    // A failure names the link as given and where it leads (a folder in the temporary file's way).
    fs::create_directories(tpx::temp_path_for(link) + "/x");
    try {
        tpx::write_file_atomically(link, "x");
        FAIL() << "no error";
    } catch (const tpx::Error& e) {
        EXPECT_NE(std::string(e.what()).find(link + " (where its symlink leads: " + real + ")"), std::string::npos) << e.what();
    }
    fs::remove_all(tpx::temp_path_for(link));
    // A chain of 40 links (the kernel's limit) is followed; a loop is named, and nothing is written.
    std::string prev = "real.json";
    for (int i = 1; i <= 40; ++i) {
        const std::string name = "l" + std::to_string(i);
        fs::create_symlink(prev, dir + "/" + name);
        prev = name;
    }
    tpx::write_file_atomically(dir + "/l40", "long\n");
    EXPECT_EQ(tpx_test::read_text(real), "long\n");
    for (int i = 1; i <= 40; ++i) fs::remove(dir + "/l" + std::to_string(i));
    fs::create_symlink("b.json", dir + "/a.json");
    fs::create_symlink("a.json", dir + "/b.json");
    try {
        tpx::write_file_atomically(dir + "/a.json", "x");
        FAIL() << "no error";
    } catch (const tpx::Error& e) {
        EXPECT_NE(std::string(e.what()).find(dir + "/a.json"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::is_symlink(dir + "/a.json") && fs::is_symlink(dir + "/b.json"));
    EXPECT_EQ(entries(dir), 7u);
    fs::remove_all(dir);
}

TEST(AtomicFile, ALinkPlantedAtTheTemporaryNameIsNotWrittenThrough) {
    // Someone who can guess the PID plants PATH.tmp-PID -> another file: the write must not go
    // into that file, nor the link be renamed over PATH.
    const std::string dir = tpx_test::temp_dir(), path = dir + "/out.json", victim = dir + "/input.jsonl";
    tpx::write_file_atomically(victim, "input\n");
    fs::create_symlink(victim, tpx::temp_path_for(path));
    tpx::write_file_atomically(path, "output\n");
    EXPECT_EQ(tpx_test::read_text(victim), "input\n");
    EXPECT_FALSE(fs::is_symlink(path));
    EXPECT_EQ(tpx_test::read_text(path), "output\n");
    EXPECT_EQ(entries(dir), 2u);
    fs::remove_all(dir);
}

TEST(AtomicFile, AReplacedFileKeepsItsMode) {
    const std::string dir = tpx_test::temp_dir(), path = dir + "/out.json";
    tpx::write_file_atomically(path, "old\n");
    const fs::perms mode = fs::perms::owner_all | fs::perms::group_exec;  // no umask makes this one
    fs::permissions(path, mode | fs::perms::set_uid);
    tpx::write_file_atomically(path, "new\n");
    EXPECT_EQ(fs::status(path).permissions() & (fs::perms::all | fs::perms::set_uid), mode) << "setuid is dropped, as by a shell's >";
    EXPECT_EQ(tpx_test::read_text(path), "new\n");
    fs::remove_all(dir);
}

// A file that carries a secret is its owner's alone from the start, new or over a wider one.
TEST(AtomicFile, AnOwnerOnlyFileIsNeverWiderThan0600) {
    const std::string dir = tpx_test::temp_dir(), path = dir + "/job.toml";
    const fs::perms rw = fs::perms::owner_read | fs::perms::owner_write;
    tpx::write_file_atomically(path, "key\n", 0, tpx::Access::kOwnerOnly);
    EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, rw);
    fs::permissions(path, fs::perms::all);
    tpx::write_file_atomically(path, "key 2\n", 0, tpx::Access::kOwnerOnly);
    EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, rw) << "an old file's bits are not kept";
    EXPECT_EQ(tpx_test::read_text(path), "key 2\n");
    tpx::write_file_atomically(path, "no key\n");
    EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, rw) << "as usual: the old file's bits";
    struct Umask {  // the temporary file while it is written, under a usual umask
        mode_t was = ::umask(022);
        ~Umask() { ::umask(was); }
    } umask;
    const std::string fresh = dir + "/new.toml", tmp = tpx::temp_path_for(fresh);
    fs::perms while_written = fs::perms::unknown;
    tpx::OutputSet set;
    set.add(fresh, [&](std::ostream& out) { while_written = fs::status(tmp).permissions(), out << "k\n"; }, false, tpx::Access::kOwnerOnly);
    set.commit();
    EXPECT_EQ(while_written & fs::perms::all, rw);
    EXPECT_EQ(tpx_test::read_text(fresh), "k\n");
    // A link swapped in at the temporary name while the text is made: the secret goes to the
    // file tpx made, never through the link, and the swap is refused.
    std::ofstream(dir + "/other") << "theirs\n";
    tpx::OutputSet swapped;
    EXPECT_THROW(
        {
            swapped.add(dir + "/s.toml", [&](std::ostream& out) {
                fs::remove(tpx::temp_path_for(dir + "/s.toml"));
                fs::create_symlink(dir + "/other", tpx::temp_path_for(dir + "/s.toml"));
                out << "key\n";
            }, false, tpx::Access::kOwnerOnly);
            swapped.commit();
        },
        tpx::Error);
    EXPECT_EQ(tpx_test::read_text(dir + "/other"), "theirs\n");
    EXPECT_FALSE(fs::exists(dir + "/s.toml"));
    // A FIFO at the name: its reader would get the secret, so it is refused (before any wait).
    ASSERT_EQ(::mkfifo((dir + "/fifo.toml").c_str(), 0666), 0);
    try {
        tpx::write_file_atomically(dir + "/fifo.toml", "key\n", 0, tpx::Access::kOwnerOnly);
        ADD_FAILURE() << "a secret was written into a FIFO";
    } catch (const tpx::Error& e) {
        EXPECT_NE(std::string(e.what()).find("is a FIFO or device"), std::string::npos) << e.what();
    }
    fs::remove_all(dir);
}

// A read-only output (0444, not the writer's to write) is replaced as `mv` would, keeping its
// mode: the new file stays writable by its owner until its rename (its mode copied at creation
// once made the run's result fail after the run). Root ignores the mode, so as root the writes
// run in a child as nobody.
TEST(AtomicFile, AReadOnlyFileIsReplacedKeepingItsMode) {
    const std::string dir = tpx_test::temp_dir(), path = dir + "/out.json";
    fs::permissions(dir, fs::perms::all);
    if (geteuid() == 0)  // nobody must reach the folder
        for (fs::path p = fs::path(dir).parent_path(); !p.empty() && p != p.root_path(); p = p.parent_path())
            if ((fs::status(p).permissions() & fs::perms::others_exec) == fs::perms::none)
                GTEST_SKIP() << p << " is closed to other users: the write as nobody cannot reach " << dir;
    auto as_user = [&](const std::function<void()>& what) {
        if (geteuid() != 0) {
            what();
            return 0;
        }
        const pid_t pid = fork();
        if (pid == 0) {
            if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
            try {
                what();
            } catch (const std::exception& e) {
                std::fprintf(stderr, "%s\n", e.what());
                _exit(1);
            }
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
    };
    ASSERT_EQ(as_user([&] {
                  tpx::write_file_atomically(path, "old\n");
                  fs::permissions(path, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
              }),
              0);
    EXPECT_EQ(as_user([&] { tpx::write_file_atomically(path, "new\n"); }), 0);
    EXPECT_EQ(tpx_test::read_text(path), "new\n");
    EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
    EXPECT_EQ(entries(dir), 1u) << "no temporary file left";
    fs::remove_all(dir);
}

// A path a user types is made absolute as the kernel reads it: ".." after a symlink stays.
TEST(Paths, DotDotPastASymlinkIsLeftForTheSystem) {
    const std::string dir = fs::canonical(tpx_test::temp_dir()).string();  // no link of its own
    fs::create_directories(dir + "/sub/dir");
    fs::create_directories(dir + "/plain");
    fs::create_symlink("sub/dir", dir + "/via");
    EXPECT_EQ(tpx::absolute_path(dir + "/plain/../x.jsonl"), dir + "/x.jsonl");
    EXPECT_EQ(tpx::absolute_path(dir + "/./plain//./y"), dir + "/plain/y");
    EXPECT_EQ(tpx::absolute_path(dir + "/via/../x.jsonl"), dir + "/via/../x.jsonl");
    EXPECT_EQ(tpx::absolute_path(dir + "/via/a/../../x.jsonl"), dir + "/via/a/../../x.jsonl");
    EXPECT_EQ(tpx::absolute_path(dir + "/plain/"), dir + "/plain/");
    EXPECT_EQ(tpx::absolute_path("/../.."), "/");
    // The kernel's reading: the file a shell would open.
    tpx::write_file_atomically(dir + "/sub/x.jsonl", "under sub\n");
    EXPECT_EQ(tpx_test::read_text(tpx::absolute_path(dir + "/via/../x.jsonl")), "under sub\n");
    EXPECT_EQ(tpx::absolute_path(dir + "/plain/."), dir + "/plain/");  // still names a folder
    EXPECT_EQ(tpx::absolute_path(dir + "/plain/sub/.."), dir + "/plain/");
    struct Cwd {  // back where it was, whatever happens
        fs::path was = fs::current_path();
        ~Cwd() { fs::current_path(was); }
    } cwd;
    fs::current_path(dir);
    EXPECT_EQ(tpx::absolute_path("plain/../z"), dir + "/z");
    fs::remove_all(dir);
}

TEST(AtomicFile, AFolderThatDoesNotExistIsNamed) {
    std::string dir = tpx_test::temp_dir(), path = dir + "/missing/out.json";
    try {
        tpx::write_file_atomically(path, "x");
        FAIL() << "no error";
    } catch (const tpx::Error& e) {
        std::string m = e.what();
        EXPECT_NE(m.find(path), std::string::npos) << m;
        EXPECT_NE(m.find("No such file or directory"), std::string::npos) << m;
    }
    EXPECT_EQ(entries(dir), 0u);
    fs::remove_all(dir);
}

TEST(AtomicFile, AFolderInTheWayIsNamedAndTheTemporaryRemoved) {
    std::string dir = tpx_test::temp_dir(), path = dir + "/out.json";
    fs::create_directory(path);
    try {
        tpx::write_file_atomically(path, "x");
        FAIL() << "no error";
    } catch (const tpx::Error& e) {
        std::string m = e.what();
        EXPECT_NE(m.find(path + ": cannot move the finished file into place"), std::string::npos) << m;
    }
    EXPECT_EQ(entries(dir), 1u) << "only the folder";
    EXPECT_TRUE(fs::is_directory(path));
    fs::remove_all(dir);
}

// Two FIFOs share one wait of 2 s: the first one's reader comes after 1.2 s, the second one's
// never. The second is reported against the whole wait, not the 0.8 s the first left it (the
// outputs go into place in the order added).
TEST(OutputSetFifos, AReaderThatNeverCameIsReportedAgainstTheWholeWait) {
    std::string dir = tpx_test::temp_dir(), first = dir + "/first.fifo", second = dir + "/second.fifo";
    ASSERT_EQ(mkfifo(first.c_str(), 0644), 0);
    ASSERT_EQ(mkfifo(second.c_str(), 0644), 0);
    std::string got;
    std::thread reader([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(1200));
        const int fd = ::open(first.c_str(), O_RDONLY);
        char buf[64];
        for (ssize_t n; fd >= 0 && (n = ::read(fd, buf, sizeof buf)) > 0;) got.append(buf, (size_t)n);
        if (fd >= 0) ::close(fd);
    });
    std::string message;
    try {
        tpx::OutputSet outputs;
        outputs.add(first, [](std::ostream& out) { out << "results\n"; });
        outputs.add(second, [](std::ostream& out) { out << "table\n"; });
        outputs.commit(2.0);
    } catch (const tpx::Error& e) {
        message = e.what();
    }
    reader.join();
    EXPECT_EQ(got, "results\n");
    EXPECT_NE(message.find(second + ": no process opened this FIFO for reading within 2 s"), std::string::npos) << message;
    fs::remove_all(dir);
}
