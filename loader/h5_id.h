// Owning an HDF5 identifier: closed by the function that fits it when it goes, whatever throws
// (loader/hdf5.cpp's reader and writer, the worker's --dump-logits file).
#pragma once

#include <hdf5.h>

namespace tpx {

// Owns an HDF5 identifier and closes it with the right function.
class H5Id {
public:
    H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
    ~H5Id() {
        if (id_ >= 0) close_(id_);
    }
    H5Id(const H5Id&) = delete;
    H5Id& operator=(const H5Id&) = delete;
    operator hid_t() const { return id_; }
    bool ok() const { return id_ >= 0; }
    // Closes it now.
    void close() {
        if (id_ >= 0) close_(id_);
        id_ = -1;
    }
    // Hands the identifier over: the caller closes it.
    hid_t release() {
        const hid_t id = id_;
        id_ = -1;
        return id;
    }

private:
    hid_t id_;
    herr_t (*close_)(hid_t);
};

}  // namespace tpx
