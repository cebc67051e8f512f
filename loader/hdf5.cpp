// The HDF5 reader and writer on the HDF5 C API. HDF5 is not thread-safe in Debian's serial
// build, so reads here are serial; each chunk of the result is one hyperslab read.
#include "loader/hdf5.h"

#include <hdf5.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "common/file.h"
#include "loader/checkpoint.h"
#include "loader/h5_id.h"
#include "loader/regular_file.h"

namespace tpx {
namespace {

// HDF5's own exit handler closes the files still open; one whose close failed (a full disk)
// it closes again, and crashes there (HDF5 1.10). tpx closes every file it opens itself, so the
// handler is turned off before any HDF5 call (a static of this file: before main).
const bool kNoHdf5AtExit = H5dont_atexit() >= 0;

// The HDF5 storage type of each dtype; 16-bit floats are stored as their bit patterns.
hid_t h5_type(DType t) {
    switch (t) {
        case DType::kF32: return H5T_NATIVE_FLOAT;
        case DType::kF64: return H5T_NATIVE_DOUBLE;
        case DType::kBF16: case DType::kF16: case DType::kU16: return H5T_NATIVE_UINT16;
        case DType::kI16: return H5T_NATIVE_INT16;
        case DType::kI32: return H5T_NATIVE_INT32;
        case DType::kU32: return H5T_NATIVE_UINT32;
        case DType::kI64: return H5T_NATIVE_INT64;
        case DType::kU64: return H5T_NATIVE_UINT64;
        case DType::kI8: return H5T_NATIVE_INT8;
        default: return H5T_NATIVE_UINT8;  // BOOL, U8, F8_*
    }
}

void write_string_attribute(hid_t obj, const char* name, const std::string& value) {
    H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type, value.empty() ? 1 : value.size());
    H5Tset_strpad(type, H5T_STR_NULLPAD);
    H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
    H5Id attr(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!attr.ok() || H5Awrite(attr, type, value.empty() ? "" : value.data()) < 0)
        throw Error(std::string("HDF5: cannot write attribute ") + name);
}

bool read_string_attribute(hid_t obj, const char* name, std::string& out) {
    if (H5Aexists(obj, name) <= 0) return false;
    H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    H5Id type(H5Aget_type(attr), H5Tclose);
    size_t size = H5Tget_size(type);
    H5Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem, size);
    H5Tset_strpad(mem, H5T_STR_NULLPAD);
    std::string s(size, '\0');
    if (H5Aread(attr, mem, s.data()) < 0) return false;
    s.resize(strnlen(s.c_str(), size));
    out = s;
    return true;
}

class Hdf5Checkpoint : public Checkpoint {
public:
    explicit Hdf5Checkpoint(const std::string& path) : Checkpoint(path) {}
    const char* format() const override { return "hdf5"; }
    // A hyperslab read takes the slice's bytes exactly.
    uint64_t read_bytes(const std::string& name, const Slice& slice) const override {
        const TensorInfo& t = tensor(name);
        uint64_t n = 1;
        for (int64_t d : slice_shape(t, slice)) n *= (uint64_t)d;
        return n * dtype_size(t.dtype);
    }
    void open();
    using Checkpoint::read;
    void read(const std::vector<ReadRequest>& requests, ReadSink& sink) override;

private:
    void read_one(const ReadRequest& r, ReadSink& sink);
    std::unique_ptr<H5Id> file_holder_;
};

void Hdf5Checkpoint::open() {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors are reported by us, with the file named
    require_regular_file(path_);
    hid_t f = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) throw CheckpointError(path_ + ": not an HDF5 file tpx can open");
    file_holder_ = std::make_unique<H5Id>(f, H5Fclose);
    read_string_attribute(f, "config.json", config_json_);
    read_string_attribute(f, "generation_config.json", generation_config_json_);
    if (H5Lexists(f, "tensors", H5P_DEFAULT) <= 0) throw CheckpointError(path_ + ": has no /tensors group (not written by tpx convert)");
    H5Id group(H5Gopen2(f, "tensors", H5P_DEFAULT), H5Gclose);
    H5G_info_t info;
    H5Gget_info(group, &info);
    std::vector<TensorInfo> tensors;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
        char name[4096];
        ssize_t n = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name), H5P_DEFAULT);
        if (n <= 0 || n >= (ssize_t)sizeof(name)) throw CheckpointError(path_ + ": unreadable dataset name at index " + std::to_string(i));
        H5Id ds(H5Dopen2(group, name, H5P_DEFAULT), H5Dclose);
        if (!ds.ok()) throw CheckpointError(path_ + ": cannot open dataset /tensors/" + name);
        TensorInfo t;
        t.name = name;
        t.file = path_;
        std::string dtype;
        if (!read_string_attribute(ds, "dtype", dtype) || !parse_dtype(dtype, t.dtype))
            throw CheckpointError(path_ + ": dataset /tensors/" + name + " has no valid \"dtype\" attribute");
        H5Id type(H5Dget_type(ds), H5Tclose);
        if (H5Tget_size(type) != dtype_size(t.dtype))
            throw CheckpointError(path_ + ": dataset /tensors/" + name + " stores " + std::to_string(H5Tget_size(type)) +
                                  "-byte elements but its dtype " + dtype + " is " + std::to_string(dtype_size(t.dtype)));
        H5Id space(H5Dget_space(ds), H5Sclose);
        int rank = H5Sget_simple_extent_ndims(space);
        std::vector<hsize_t> dims(rank > 0 ? rank : 0);
        if (rank > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
        for (hsize_t d : dims) t.shape.push_back((int64_t)d);
        t.nbytes = (uint64_t)t.numel() * dtype_size(t.dtype);
        haddr_t addr = H5Dget_offset(ds);  // only for contiguous storage
        t.offset = addr == HADDR_UNDEF ? 0 : (uint64_t)addr;
        tensors.push_back(std::move(t));
    }
    set_tensors(std::move(tensors));
}

// One request after another: the library is serial.
void Hdf5Checkpoint::read(const std::vector<ReadRequest>& requests, ReadSink& sink) {
    for (const ReadRequest& r : requests) checked(r);
    for (const ReadRequest& r : requests) read_one(r, sink);
}

void Hdf5Checkpoint::read_one(const ReadRequest& r, ReadSink& sink) {
    const std::string& name = r.tensor;
    const Slice& slice = r.slice;
    DType dst_type = r.dst_type;
    const TensorInfo& t = tensor(name);
    std::vector<int64_t> out_shape = slice_shape(t, slice);
    size_t src_size = dtype_size(t.dtype), dst_size = dtype_size(dst_type);
    int64_t numel = 1;
    for (int64_t d : out_shape) numel *= d;
    if (numel == 0) return;

    H5Id ds(H5Dopen2(*file_holder_, ("tensors/" + name).c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw CheckpointError(path_ + ": cannot open dataset /tensors/" + name);
    H5Id file_space(H5Dget_space(ds), H5Sclose);
    int rank = (int)out_shape.size();          // of the slice's source (one entry of dim 0 when slice.index >= 0)
    const int lead = slice.index >= 0 ? 1 : 0;  // the file's dims before the source's

    // The result is delivered in runs of whole leading-dimension rows that fit the sink's chunk.
    int64_t rows = rank == 0 ? 1 : out_shape[0];
    int64_t row_elems = rows == 0 ? 0 : numel / rows;
    uint64_t chunk = sink.chunk_bytes();
    int64_t rows_per_chunk = std::max<int64_t>(1, (int64_t)std::min<uint64_t>(chunk / std::max<uint64_t>(1, row_elems * dst_size), rows));
    TPX_CHECK((uint64_t)row_elems * dst_size <= chunk, "HDF5 read: one row of '" + name + "' exceeds the sink's chunk");
    std::vector<char> scratch;
    for (int64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
        int64_t n = std::min(rows_per_chunk, rows - r0);
        std::vector<hsize_t> start(rank + lead), count(rank + lead);
        if (lead) start[0] = (hsize_t)slice.index, count[0] = 1;
        for (int d = 0; d < rank; ++d) {
            start[lead + d] = d == slice.dim ? (hsize_t)slice.start : 0;
            count[lead + d] = (hsize_t)out_shape[d];
        }
        if (rank > 0) {
            start[lead] += (hsize_t)r0;
            count[lead] = (hsize_t)n;
        }
        uint64_t elems = (uint64_t)n * row_elems;
        H5Id mem_space(rank + lead == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, (const hsize_t*)&elems, nullptr), H5Sclose);
        if (rank + lead > 0) H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
        uint64_t offset = (uint64_t)r0 * row_elems * dst_size, bytes = elems * dst_size;
        before_read();  // before the sink's buffer is taken: a stop returns none unfilled
        char* memory = static_cast<char*>(sink.acquire(r, offset, bytes));
        void* target = memory;
        if (dst_type != t.dtype) {
            scratch.resize(elems * src_size);
            target = scratch.data();
        }
        if (H5Dread(ds, h5_type(t.dtype), mem_space, rank + lead == 0 ? H5S_ALL : (hid_t)file_space, H5P_DEFAULT, target) < 0)
            throw CheckpointError(path_ + ": reading dataset /tensors/" + name + " failed");
        if (dst_type != t.dtype) convert(scratch.data(), t.dtype, memory, dst_type, elems);
        count_data(path_, elems * src_size);
        sink.commit(r, memory, offset, bytes);
    }
}

}  // namespace

long long hdf5_chunk_rows(long long rows, long long row_bytes) {
    long long chunk = rows;
    for (int k = 0; k < 6 && chunk % 2 == 0; ++k) chunk /= 2;
    while (chunk % 2 == 0 && chunk * row_bytes > (4ll << 20)) chunk /= 2;
    return std::max(1ll, chunk);
}

std::unique_ptr<Checkpoint> open_hdf5_checkpoint(const std::string& path) {
    auto c = std::make_unique<Hdf5Checkpoint>(path);
    c->open();
    return c;
}

ConvertStats convert_to_hdf5(Checkpoint& source, const std::string& out_path) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    ConvertStats stats;
    // Written whole or not at all, the temporary file removed on failure or Ctrl-C (OutputSet).
    OutputSet out;
    out.add_file(out_path, [&](const std::string& tmp) {
        // config.json goes into an attribute of the root group: HDF5 keeps attributes in the
        // object's header (64 KB at most) unless they go to dense storage, which needs the 1.8
        // format's object header. The root group is made with 1.8's format, the rest with the
        // earliest: a 1.8-style group of many links (the tensors) is listed by index slowly
        // (the reader's loop, every tensor's name by its index, became quadratic).
        H5Id create(H5Pcreate(H5P_FILE_CREATE), H5Pclose), access(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
        if (!create.ok() || !access.ok() || H5Pset_attr_phase_change(create, 0, 0) < 0 ||
            H5Pset_libver_bounds(access, H5F_LIBVER_V18, H5F_LIBVER_V18) < 0)
            throw Error(out_path + ": cannot set up the HDF5 file's properties");
        H5Id file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, create, access), H5Fclose);
        if (!file.ok()) throw Error(out_path + ": cannot create the HDF5 file (written through " + tmp + ")");
        write_string_attribute(file, "config.json", source.config_json());
        write_string_attribute(file, "generation_config.json", source.generation_config_json());
        write_string_attribute(file, "tpx_format", "tpx-checkpoint-1");
        if (H5Fset_libver_bounds(file, H5F_LIBVER_EARLIEST, H5F_LIBVER_V18) < 0)
            throw Error(out_path + ": cannot set the HDF5 file's format bounds");
        H5Id group(H5Gcreate2(file, "tensors", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
        std::vector<char> buffer;
        for (const TensorInfo& t : source.tensors()) {
            std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
            H5Id space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple((int)dims.size(), dims.data(), nullptr), H5Sclose);
            H5Id props(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
            if (!dims.empty() && t.numel() > 0) {
                std::vector<hsize_t> chunk = dims;
                long long row_bytes = (long long)(t.nbytes / std::max<hsize_t>(1, dims[0]));
                chunk[0] = (hsize_t)hdf5_chunk_rows((long long)dims[0], row_bytes);
                H5Pset_chunk(props, (int)chunk.size(), chunk.data());
            }
            H5Id ds(H5Dcreate2(group, t.name.c_str(), h5_type(t.dtype), space, H5P_DEFAULT, props, H5P_DEFAULT), H5Dclose);
            if (!ds.ok()) throw Error(out_path + ": cannot create the dataset for tensor '" + t.name + "'");
            write_string_attribute(ds, "dtype", dtype_name(t.dtype));
            buffer.resize(t.nbytes);
            source.read(t.name, Slice::whole(), t.dtype, buffer.data());
            if (t.nbytes > 0 && H5Dwrite(ds, h5_type(t.dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer.data()) < 0)
                throw Error(out_path + ": writing tensor '" + t.name + "' failed");
            ++stats.tensors;
            stats.bytes += t.nbytes;
        }
        group.close();
        close_written_hdf5(file.release(), out_path);
    });
    out.commit();
    return stats;
}

void close_written_hdf5(int64_t file, const std::string& path) {
    if (H5Fclose((hid_t)file) < 0)
        throw Error(path + ": cannot write the HDF5 file (HDF5 could not write out its data as it closed it: is the disk full?); nothing "
                    "was written to " + path);
}

}  // namespace tpx
