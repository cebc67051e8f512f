// `tpx inspect` (what a checkpoint holds) and `tpx convert` (HF folder to HDF5).
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "common/error.h"
#include "common/log.h"
#include "common/output_path.h"
#include "launcher/command.h"
#include "loader/checkpoint.h"
#include "loader/hdf5.h"
#include "loader/quantized.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace tpx {
int cmd_inspect(const Args& args) {
    po::options_description options("tpx inspect options");
    options.add_options()("path", po::value<std::string>()->required(), "an HF model folder, a .safetensors file or an .h5 file");
    po::positional_options_description positional;
    positional.add("path", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx inspect PATH", options, positional, vm)) return 0;

    auto ckpt = Checkpoint::open(vm["path"].as<std::string>());
    fs::path root = fs::is_directory(ckpt->path()) ? fs::path(ckpt->path()) : fs::path(ckpt->path()).parent_path();
    size_t name_w = 4, shape_w = 5;
    for (const TensorInfo& t : ckpt->tensors()) {
        name_w = std::max(name_w, t.name.size());
        shape_w = std::max(shape_w, shape_string(t.shape).size());
    }
    std::printf("%-*s  %-7s  %-*s  %12s  %s\n", (int)name_w, "name", "dtype", (int)shape_w, "shape", "bytes", "file");
    for (const TensorInfo& t : ckpt->tensors())
        std::printf("%-*s  %-7s  %-*s  %12llu  %s\n", (int)name_w, t.name.c_str(), dtype_name(t.dtype), (int)shape_w,
                    shape_string(t.shape).c_str(), (unsigned long long)t.nbytes,
                    fs::path(t.file).lexically_relative(root).string().c_str());
    std::printf("total: %zu tensors, %llu bytes (%s) in %zu files, format %s\n", ckpt->tensors().size(),
                (unsigned long long)ckpt->total_bytes(), human_bytes((double)ckpt->total_bytes()).c_str(), ckpt->files().size(),
                ckpt->format());
    return 0;
}

int cmd_convert(const Args& args) {
    po::options_description options("tpx convert options");
    options.add_options()("model", po::value<std::string>()->required(), "an HF model folder")(
        "out", po::value<std::string>()->required(), "the .h5 file to write (written whole or not at all)")(
        "force", "replace OUT if it exists (never a file of MODEL_DIR)");
    po::positional_options_description positional;
    positional.add("model", 1).add("out", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx convert MODEL_DIR OUT.h5 [--force]", options, positional, vm)) return 0;

    std::string out = vm["out"].as<std::string>();
    check_outputs({{"OUT", out}}, checkpoint_inputs(vm["model"].as<std::string>()));
    std::error_code ec;
    if (fs::exists(out, ec) && !is_stream_target(out) && !vm.count("force"))
        throw JobError("OUT (" + out + ") already exists; give --force to replace it");
    auto ckpt = Checkpoint::open(vm["model"].as<std::string>());
    // The HDF5 layout holds plain tensors: a quantized checkpoint would be written dequantized
    // (four to eight times larger) under a config.json that still says it is quantized.
    if (QuantConfig q = quantization_of(*ckpt); q.quantized())
        throw JobError(ckpt->path() + " holds " + q.describe() + " weights: tpx convert writes plain tensors only; a quantized "
                       "checkpoint is read as it is (give the job its folder)");
    ConvertStats s = convert_to_hdf5(*ckpt, vm["out"].as<std::string>());
    std::printf("wrote %s: %zu tensors, %s\n", vm["out"].as<std::string>().c_str(), s.tensors, human_bytes((double)s.bytes).c_str());
    return 0;
}

}  // namespace tpx
