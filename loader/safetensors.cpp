// Safetensors header validation (the rules of huggingface/safetensors' `read_metadata` and
// `validate`) and an atomic writer. Nothing here trusts a number from the file before checking
// it against the file's size, so a corrupt file gives a message, never a crash or a huge
// allocation.
#include "loader/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "common/file.h"
#include "common/json_object.h"
#include "loader/regular_file.h"

namespace tpx {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& file, const std::string& message) {
    throw CheckpointError(file + ": " + message);
}

// Strict UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF); returns the offset of the
// first bad byte or `n` when the text is valid.
size_t utf8_error_at(const unsigned char* s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        size_t len;
        uint32_t cp;
        if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f;
        else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f;
        else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07;
        else return i;
        if (i + len > n) return i;
        for (size_t k = 1; k < len; ++k) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return n;
}

uint64_t as_u64(const std::string& file, const std::string& tensor, const char* field, const json& v) {
    if (!v.is_number_unsigned())
        fail(file, "tensor '" + tensor + "': " + field + " holds " + v.dump() + ", not a non-negative integer");
    return v.get<uint64_t>();
}

TensorInfo parse_tensor(const std::string& file, const std::string& name, const json& entry) {
    if (!entry.is_object()) fail(file, "tensor '" + name + "': header entry is " + entry.dump() + ", not an object");
    TensorInfo t;
    t.name = name;
    t.file = file;
    auto field = [&](const char* key) -> const json& {
        auto it = entry.find(key);
        if (it == entry.end()) fail(file, "tensor '" + name + "': header entry lacks '" + key + "'");
        return *it;
    };
    const json& dtype = field("dtype");
    if (!dtype.is_string()) fail(file, "tensor '" + name + "': dtype is " + dtype.dump() + ", not a string");
    if (!parse_dtype(dtype.get<std::string>(), t.dtype))
        fail(file, "tensor '" + name + "': unknown dtype \"" + dtype.get<std::string>() +
                       "\" (known: BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2)");
    const json& shape = field("shape");
    if (!shape.is_array()) fail(file, "tensor '" + name + "': shape is " + shape.dump() + ", not an array");
    for (const json& d : shape) {
        const uint64_t n = as_u64(file, name, "shape", d);
        if (n > (uint64_t)INT64_MAX) fail(file, "tensor '" + name + "': shape holds " + d.dump() + ", larger than 2^63 - 1");
        t.shape.push_back((int64_t)n);
    }
    const json& offsets = field("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2)
        fail(file, "tensor '" + name + "': data_offsets is " + offsets.dump() + ", not [begin, end]");
    uint64_t begin = as_u64(file, name, "data_offsets", offsets[0]);
    uint64_t end = as_u64(file, name, "data_offsets", offsets[1]);
    if (end < begin)
        fail(file, "tensor '" + name + "': data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                       "] end before begin");
    // numel * size must not overflow and must equal end - begin.
    uint64_t bytes = dtype_size(t.dtype);
    for (int64_t d : t.shape)
        if (__builtin_mul_overflow(bytes, (uint64_t)d, &bytes))
            fail(file, "tensor '" + name + "': shape " + shape_string(t.shape) + " x " + dtype_name(t.dtype) +
                           " overflows 64 bits");
    if (bytes != end - begin)
        fail(file, "tensor '" + name + "': shape " + shape_string(t.shape) + " x " + dtype_name(t.dtype) + " = " +
                       std::to_string(bytes) + " bytes, but data_offsets [" + std::to_string(begin) + ", " +
                       std::to_string(end) + "] span " + std::to_string(end - begin));
    t.offset = begin;  // relative to the data section until the caller adds 8 + N
    t.nbytes = bytes;
    return t;
}

}  // namespace

int64_t TensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

SafetensorsHeader parse_safetensors_header(const std::string& file, const char* text, uint64_t len,
                                           uint64_t file_size) {
    size_t bad = utf8_error_at(reinterpret_cast<const unsigned char*>(text), len);
    if (bad != len) fail(file, "header is not valid UTF-8 (bad byte at header offset " + std::to_string(bad) + ")");
    if (len == 0 || text[0] != '{') fail(file, "header does not start with '{' (not a safetensors JSON header)");

    // Duplicate names are an error in the reference; nlohmann keeps the last silently, so
    // the parser callback watches every top-level key.
    std::set<std::string> seen;
    std::string duplicate;
    auto watch = [&](int depth, json::parse_event_t event, json& parsed) {
        if (depth == 1 && event == json::parse_event_t::key) {
            std::string key = parsed.get<std::string>();
            if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
        }
        return true;
    };
    json header;
    try {
        header = json::parse(text, text + len, limit_depth<json>(watch));
    } catch (const json::exception& e) {
        fail(file, "header is not valid JSON: " + strip_json_tag(e));
    }
    if (!duplicate.empty()) fail(file, "tensor '" + duplicate + "' appears twice in the header");
    if (!header.is_object()) fail(file, "header is JSON but not an object");

    SafetensorsHeader h;
    h.header_len = len;
    for (auto it = header.begin(); it != header.end(); ++it) {
        if (it.key() == "__metadata__") {
            if (!it->is_object()) fail(file, "__metadata__ is " + it->dump() + ", not an object of strings");
            for (auto m = it->begin(); m != it->end(); ++m) {
                if (!m->is_string()) fail(file, "__metadata__ key '" + m.key() + "' holds " + m->dump() + ", not a string");
                h.metadata[m.key()] = m->get<std::string>();
            }
            continue;
        }
        h.tensors.push_back(parse_tensor(file, it.key(), *it));
    }

    // Data offsets must tile [0, data size) in order: no gap, no overlap.
    std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
        return a.offset != b.offset ? a.offset < b.offset : a.nbytes < b.nbytes;
    });
    uint64_t expected = 0;
    std::string previous = "(start of data)";
    for (const TensorInfo& t : h.tensors) {
        if (t.offset != expected)
            fail(file, "tensor '" + t.name + "': data_offsets begin at " + std::to_string(t.offset) + " but " +
                           previous + " ends at " + std::to_string(expected) +
                           (t.offset > expected ? " (a gap)" : " (an overlap)") +
                           ": offsets must be contiguous from 0");
        expected = t.offset + t.nbytes;
        previous = "'" + t.name + "'";
    }
    uint64_t data_start = 8 + len;
    if (data_start + expected != file_size)
        fail(file, "file is " + std::to_string(file_size) + " bytes, but 8 + header " + std::to_string(len) +
                       " + data " + std::to_string(expected) + " = " + std::to_string(data_start + expected) +
                       (file_size > data_start + expected ? " (trailing bytes)" : " (truncated)"));
    for (TensorInfo& t : h.tensors) t.offset += data_start;
    return h;
}

SafetensorsHeader read_safetensors_header(const std::string& path, uint64_t* bytes_read) {
    const int fd = open_checkpoint_file(path);
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st;
    if (fstat(fd, &st) != 0) fail(path, std::string("cannot stat: ") + std::strerror(errno));
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) fail(path, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
    unsigned char prefix[8];
    if (::pread(fd, prefix, 8, 0) != 8) fail(path, std::string("cannot read the header length: ") + std::strerror(errno));
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
    if (n > kMaxSafetensorsHeader)
        fail(path, "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxSafetensorsHeader));
    if (8 + n > size)
        fail(path, "header length " + std::to_string(n) + " runs past the end of the " + std::to_string(size) + "-byte file");
    std::string text(n, '\0');
    uint64_t got = 0;
    while (got < n) {
        ssize_t r = ::pread(fd, text.data() + got, n - got, 8 + got);
        if (r <= 0) fail(path, std::string("cannot read the header: ") + (r == 0 ? "unexpected end of file" : std::strerror(errno)));
        got += (uint64_t)r;
    }
    if (bytes_read) *bytes_read = 8 + n;
    return parse_safetensors_header(path, text.data(), n, size);
}

void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    uint64_t offset = 0;
    std::vector<uint64_t> sizes;
    for (const TensorData& t : tensors) {
        uint64_t bytes = dtype_size(t.dtype);
        for (int64_t d : t.shape) bytes *= (uint64_t)d;
        header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
        sizes.push_back(bytes);
        offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    write_file_atomically(
        path,
        [&](std::ostream& out) {
            uint64_t n = text.size();
            unsigned char prefix[8];
            for (int i = 0; i < 8; ++i) prefix[i] = (unsigned char)(n >> (8 * i));
            out.write(reinterpret_cast<const char*>(prefix), 8);
            out.write(text.data(), (std::streamsize)text.size());
            for (size_t i = 0; i < tensors.size(); ++i) out.write(static_cast<const char*>(tensors[i].data), (std::streamsize)sizes[i]);
        },
        /*binary=*/true);
}

}  // namespace tpx
