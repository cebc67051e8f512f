// Output files are written whole or not at all (common/file.h): a failure keeps the old file,
// leaves no temporary beside it and names the path.
#include <gtest/gtest.h>

#include <filesystem>
#include <stdexcept>

#include "common/error.h"
#include "common/file.h"
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
