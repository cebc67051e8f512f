// torch.save archives. libzip 1.7 (Debian's) validates the archive and reads data.pkl, but does
// not say where an entry's data starts; that is taken from the central directory's local-header
// offsets (read here, cross-checked entry by entry against libzip's listing) and the local
// header's own name and extra-field lengths (torch pads the extra field so data is 64-aligned).
#include "loader/torch_zip.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "loader/regular_file.h"
#include "loader/safetensors.h"

namespace tpx {
namespace {

constexpr uint64_t kMaxPickleBytes = 256u << 20;     // a pickle of tensor headers; 8B's is ~30 KB
constexpr uint64_t kMaxDirectoryBytes = 256u << 20;  // the central directory

uint64_t le(const unsigned char* p, int n) {
    uint64_t v = 0;
    for (int k = n; k-- > 0;) v = (v << 8) | p[k];
    return v;
}

class File {
public:
    explicit File(const std::string& path) : path_(path), fd_(open_checkpoint_file(path)) {
        struct stat st{};
        if (::fstat(fd_, &st) != 0) throw CheckpointError(path + ": cannot stat: " + std::strerror(errno));
        size_ = (uint64_t)st.st_size;
    }
    ~File() { ::close(fd_); }
    uint64_t size() const { return size_; }
    std::string read(uint64_t offset, uint64_t bytes, const char* what) const {
        if (offset > size_ || bytes > size_ - offset)
            throw CheckpointError(path_ + ": " + what + " at offset " + std::to_string(offset) + " (" + std::to_string(bytes) +
                                  " bytes) runs past the end of the " + std::to_string(size_) + "-byte file (truncated?)");
        std::string out(bytes, '\0');
        for (uint64_t got = 0; got < bytes;) {
            ssize_t r = ::pread(fd_, out.data() + got, bytes - got, (off_t)(offset + got));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) throw CheckpointError(path_ + ": cannot read " + what + ": " + (r == 0 ? "unexpected end of file" : std::strerror(errno)));
            got += (uint64_t)r;
        }
        return out;
    }

private:
    std::string path_;
    int fd_;
    uint64_t size_ = 0;
};

struct DirectoryEntry {
    std::string name;
    uint64_t local_header = 0;
};

// The central directory's entries, in order (zip64 where torch writes it: always).
std::vector<DirectoryEntry> read_central_directory(const std::string& path, const File& f, uint64_t* bytes_read) {
    auto fail = [&](const std::string& why) -> void { throw CheckpointError(path + ": zip central directory: " + why); };
    const uint64_t tail_len = std::min<uint64_t>(f.size(), 22 + 65535 + 20);
    const std::string tail = f.read(f.size() - tail_len, tail_len, "the end of central directory");
    const auto* t = reinterpret_cast<const unsigned char*>(tail.data());
    int64_t eocd = -1;
    for (int64_t i = (int64_t)tail_len - 22; i >= 0 && eocd < 0; --i)
        if (le(t + i, 4) == 0x06054b50) eocd = i;
    if (eocd < 0) fail("no end-of-central-directory record (truncated?)");
    uint64_t entries = le(t + eocd + 10, 2), size = le(t + eocd + 12, 4), offset = le(t + eocd + 16, 4);
    if (entries == 0xffff || size == 0xffffffff || offset == 0xffffffff) {
        if (eocd < 20 || le(t + eocd - 20, 4) != 0x07064b50) fail("zip64 sizes without a zip64 locator");
        const std::string rec = f.read(le(t + eocd - 20 + 8, 8), 56, "the zip64 end of central directory");
        const auto* r = reinterpret_cast<const unsigned char*>(rec.data());
        if (le(r, 4) != 0x06064b50) fail("the zip64 locator points at no zip64 record");
        entries = le(r + 32, 8), size = le(r + 40, 8), offset = le(r + 48, 8);
    }
    if (size > kMaxDirectoryBytes) fail(std::to_string(size) + " bytes, over the limit of " + std::to_string(kMaxDirectoryBytes));
    const std::string dir = f.read(offset, size, "the central directory");
    *bytes_read += tail_len + size;
    const auto* d = reinterpret_cast<const unsigned char*>(dir.data());
    std::vector<DirectoryEntry> out;
    uint64_t at = 0;
    for (uint64_t e = 0; e < entries; ++e) {
        if (at + 46 > size || le(d + at, 4) != 0x02014b50) fail("entry " + std::to_string(e) + " is not where the directory says");
        const uint64_t name_len = le(d + at + 28, 2), extra_len = le(d + at + 30, 2), comment_len = le(d + at + 32, 2);
        if (at + 46 + name_len + extra_len + comment_len > size) fail("entry " + std::to_string(e) + " runs past its end");
        DirectoryEntry de{std::string(reinterpret_cast<const char*>(d + at + 46), name_len), le(d + at + 42, 4)};
        // The zip64 extra field holds, in order, whichever of the 32-bit fields are 0xffffffff.
        const bool big_usize = le(d + at + 24, 4) == 0xffffffff, big_csize = le(d + at + 20, 4) == 0xffffffff;
        if (de.local_header == 0xffffffff) {
            for (uint64_t x = at + 46 + name_len; x + 4 <= at + 46 + name_len + extra_len;) {
                const uint64_t id = le(d + x, 2), len = le(d + x + 2, 2);
                if (id == 0x0001) {
                    const uint64_t skip = 8 * (big_usize + big_csize);
                    if (len < skip + 8) fail("entry '" + de.name + "' has a zip64 field too short for its offset");
                    de.local_header = le(d + x + 4 + skip, 8);
                }
                x += 4 + len;
            }
        }
        out.push_back(std::move(de));
        at += 46 + name_len + extra_len + comment_len;
    }
    return out;
}

struct ZipCloser {
    void operator()(zip_t* z) const { zip_discard(z); }
};

}  // namespace

namespace {

// torch.save writes ARCHIVE/byteorder ("little" or "big", torch 1.10 on); torch.load swaps a big
// one's bytes, tpx reads little-endian data only: any other order is refused by name (an archive
// without the entry is older, and little-endian).
void check_byteorder(const std::string& path, zip_t* z, const std::vector<zip_stat_t>& stats, const std::string& prefix,
                     uint64_t& header_bytes) {
    for (size_t i = 0; i < stats.size(); ++i) {
        if (stats[i].name != prefix + "byteorder") continue;
        std::string order((size_t)std::min<uint64_t>(stats[i].size, 16), '\0');
        zip_file_t* zf = zip_fopen_index(z, (zip_uint64_t)i, 0);
        const zip_int64_t got = zf ? zip_fread(zf, order.data(), order.size()) : -1;
        if (zf) zip_fclose(zf);
        if (got != (zip_int64_t)order.size()) throw CheckpointError(path + ": cannot read " + prefix + "byteorder");
        header_bytes += order.size();
        if (order != "little")
            throw CheckpointError(path + ": " + prefix + "byteorder says '" + order +
                                  "': tpx reads little-endian archives only (as torch.save writes them on x86 and ARM)");
    }
}

}  // namespace

TorchArchive open_torch_archive(const std::string& path) {
    TorchArchive a;
    a.file = path;
    int code = 0;
    require_regular_file(path);
    std::unique_ptr<zip_t, ZipCloser> z(zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code));
    if (!z) {
        zip_error_t e;
        zip_error_init_with_code(&e, code);
        std::string why = zip_error_strerror(&e);
        zip_error_fini(&e);
        throw CheckpointError(path + ": not a zip archive as torch.save writes (libzip: " + why + "; truncated?)");
    }
    // Every entry's name, size and compression, and the one ARCHIVE/data.pkl.
    const zip_int64_t n = zip_get_num_entries(z.get(), 0);
    std::vector<zip_stat_t> stats((size_t)std::max<zip_int64_t>(n, 0));
    int64_t pickle = -1;
    for (zip_int64_t i = 0; i < n; ++i) {
        zip_stat_t& s = stats[(size_t)i];
        if (zip_stat_index(z.get(), (zip_uint64_t)i, 0, &s) != 0 || !(s.valid & ZIP_STAT_NAME))
            throw CheckpointError(path + ": zip entry " + std::to_string(i) + " cannot be listed (libzip: " + zip_strerror(z.get()) + ")");
        const std::string name = s.name;
        const size_t slash = name.find('/');
        if (slash != std::string::npos && name.substr(slash) == "/data.pkl") pickle = i;
    }
    if (pickle < 0) throw CheckpointError(path + ": a zip archive without ARCHIVE/data.pkl: not written by torch.save");
    const std::string prefix = std::string(stats[(size_t)pickle].name).substr(0, std::string(stats[(size_t)pickle].name).find('/') + 1);
    a.prefix = prefix;

    // The pickle, parsed before anything else is read.
    const uint64_t pickle_bytes = stats[(size_t)pickle].size;
    if (pickle_bytes > kMaxPickleBytes)
        throw CheckpointError(path + ": " + prefix + "data.pkl is " + std::to_string(pickle_bytes) + " bytes, over the limit of " +
                              std::to_string(kMaxPickleBytes));
    std::string text(pickle_bytes, '\0');
    zip_file_t* zf = zip_fopen_index(z.get(), (zip_uint64_t)pickle, 0);
    const zip_int64_t got = zf ? zip_fread(zf, text.data(), pickle_bytes) : -1;
    const std::string why = zf ? zip_file_strerror(zf) : zip_strerror(z.get());
    if (zf) zip_fclose(zf);
    if (got != (zip_int64_t)pickle_bytes) throw CheckpointError(path + ": cannot read " + prefix + "data.pkl (libzip: " + why + ")");
    a.header_bytes += pickle_bytes;
    a.tensors = parse_torch_pickle(path, text);
    check_byteorder(path, z.get(), stats, prefix, a.header_bytes);

    // Where each needed storage's data starts: its local header, after the name and extra field.
    File f(path);
    std::vector<DirectoryEntry> dir = read_central_directory(path, f, &a.header_bytes);
    if ((zip_int64_t)dir.size() != n) throw CheckpointError(path + ": the central directory lists " + std::to_string(dir.size()) +
                                                          " entries, libzip " + std::to_string(n));
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < dir.size(); ++i) {
        if (dir[i].name != stats[i].name) throw CheckpointError(path + ": central directory entry " + std::to_string(i) + " is '" +
                                                                dir[i].name + "', libzip lists '" + stats[i].name + "'");
        index[dir[i].name] = i;
    }
    for (const PickledTensor& t : a.tensors) {
        if (a.storages.count(t.storage_key)) continue;
        const std::string entry = prefix + "data/" + t.storage_key;
        auto it = index.find(entry);
        if (it == index.end())
            throw CheckpointError(path + ": tensor '" + t.name + "' is stored in " + entry + ", which the archive does not have");
        const zip_stat_t& s = stats[it->second];
        if (s.comp_method != ZIP_CM_STORE)
            throw CheckpointError(path + ": entry " + entry + " (tensor '" + t.name + "') is compressed (method " +
                                  std::to_string(s.comp_method) + "); tpx reads only stored entries, as torch.save writes them");
        const uint64_t lh = dir[it->second].local_header;
        const std::string h = f.read(lh, 30, "a local header");
        const auto* p = reinterpret_cast<const unsigned char*>(h.data());
        if (le(p, 4) != 0x04034b50 || le(p + 26, 2) != entry.size())
            throw CheckpointError(path + ": the local header of " + entry + " is not at offset " + std::to_string(lh));
        const uint64_t data = lh + 30 + le(p + 26, 2) + le(p + 28, 2);
        a.header_bytes += 30;
        if (data > f.size() || s.size > f.size() - data)
            throw CheckpointError(path + ": entry " + entry + " (" + std::to_string(s.size) + " bytes at offset " + std::to_string(data) +
                                  ") runs past the end of the " + std::to_string(f.size()) + "-byte file (truncated?)");
        a.storages[t.storage_key] = {data, s.size};
    }
    // Each tensor's elements lie inside its storage, and the storage inside its entry.
    for (const PickledTensor& t : a.tensors) {
        const TorchArchive::Entry& e = a.storages[t.storage_key];
        if ((unsigned __int128)t.storage_numel * dtype_size(t.dtype) > e.bytes)
            throw CheckpointError(path + ": tensor '" + t.name + "': its storage data/" + t.storage_key + " of " +
                                  std::to_string(t.storage_numel) + " x " + dtype_name(t.dtype) + " is larger than its " +
                                  std::to_string(e.bytes) + "-byte entry");
        __int128 last = t.storage_offset;  // (wide: a hostile stride must not wrap around)
        bool empty = false;
        for (size_t d = 0; d < t.shape.size(); ++d) {
            if (t.shape[d] == 0) empty = true;
            else last += (__int128)(t.shape[d] - 1) * t.stride[d];
        }
        if (!empty && last >= t.storage_numel)
            throw CheckpointError(path + ": tensor '" + t.name + "' " + shape_string(t.shape) + " at storage offset " +
                                  std::to_string(t.storage_offset) + " reaches past the end of its " +
                                  std::to_string(t.storage_numel) + "-element storage");
    }
    return a;
}

}  // namespace tpx
