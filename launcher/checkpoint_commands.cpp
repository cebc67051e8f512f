// `tpx inspect` (what a checkpoint holds; --check: which tensors hold NaN or Inf) and `tpx convert`
// (any checkpoint tpx reads to HDF5, or to an HF safetensors folder: how a Meta folder becomes an HF one).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>

#include "common/error.h"
#include "common/file.h"
#include "common/log.h"
#include "common/output_path.h"
#include "common/path.h"
#include "launcher/command.h"
#include "loader/checkpoint.h"
#include "loader/hdf5.h"
#include "loader/hf_folder.h"
#include "loader/nan_scan.h"
#include "loader/quantized.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace tpx {
namespace {

// Every tensor holding NaN or Inf, one line each; exit 2 when there is any (a CheckpointError
// after the list), so that scripts can gate a checkpoint on it.
int check_finite(Checkpoint& ckpt) {
    NanScan scan = scan_non_finite(ckpt);
    for (const NonFiniteTensor& t : scan.bad)
        std::printf("%s: %lld NaN, %lld Inf of %lld elements, the first at flat index %lld\n", t.name.c_str(), (long long)t.nan,
                    (long long)t.inf, (long long)t.numel, (long long)t.first_index);
    if (!scan.skipped.empty())
        std::printf("skipped %zu tensors that are not floating point (%s%s)\n", scan.skipped.size(), scan.skipped.front().c_str(),
                    scan.skipped.size() > 1 ? ", ..." : "");
    if (!scan.bad.empty())
        throw CheckpointError(ckpt.path() + ": " + std::to_string(scan.bad.size()) + " of " + std::to_string(scan.tensors) +
                              " tensors hold NaN or Inf (listed above)");
    std::printf("no NaN or Inf in %lld tensors (%s)\n", (long long)scan.tensors, human_bytes((double)scan.bytes).c_str());
    return 0;
}

}  // namespace

int cmd_inspect(const Args& args) {
    po::options_description options("tpx inspect options");
    options.add_options()("path", po::value<std::string>()->required(),
                          "an HF model folder, a Meta folder (params.json + consolidated.NN.pth), a .safetensors file or an .h5 file")(
        "check", "read every tensor and list those holding NaN or Inf (exit 2 if any) instead of the listing");
    po::positional_options_description positional;
    positional.add("path", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx inspect PATH [--check]", options, positional, vm)) return 0;

    auto ckpt = Checkpoint::open(vm["path"].as<std::string>());
    if (vm.count("check")) return check_finite(*ckpt);
    std::error_code ec;
    fs::path root = fs::is_directory(ckpt->path(), ec) ? fs::path(ckpt->path()) : fs::path(ckpt->path()).parent_path();
    size_t name_w = 4, shape_w = 5;
    for (const TensorInfo& t : ckpt->tensors()) {
        name_w = std::max(name_w, t.name.size());
        shape_w = std::max(shape_w, shape_string(t.shape).size());
    }
    std::printf("%-*s  %-7s  %-*s  %12s  %s\n", (int)name_w, "name", "dtype", (int)shape_w, "shape", "bytes", "file");
    for (const TensorInfo& t : ckpt->tensors()) {
        std::string source = ckpt->source_of(t.name);
        if (source.empty()) source = fs::path(t.file).lexically_relative(root).string();
        std::printf("%-*s  %-7s  %-*s  %12llu  %s\n", (int)name_w, t.name.c_str(), dtype_name(t.dtype), (int)shape_w,
                    shape_string(t.shape).c_str(), (unsigned long long)t.nbytes, source.c_str());
    }
    std::printf("total: %zu tensors, %llu bytes (%s) in %zu files, format %s\n", ckpt->tensors().size(),
                (unsigned long long)ckpt->total_bytes(), human_bytes((double)ckpt->total_bytes()).c_str(), ckpt->files().size(),
                ckpt->format());
    return 0;
}

int cmd_convert(const Args& args) {
    po::options_description options("tpx convert options");
    options.add_options()("model", po::value<std::string>()->required(), "an HF or a Meta model folder, a .safetensors or an .h5 file")(
        "out", po::value<std::string>()->required(), "the .h5 file (or with --hf the new folder) to write, whole or not at all")(
        "hf", "write OUT as a new HF model folder (config.json, safetensors shards) instead of an .h5 file")(
        "force", "replace OUT.h5 if it exists (never a file of MODEL; a folder is never replaced)");
    po::positional_options_description positional;
    positional.add("model", 1).add("out", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx convert MODEL OUT.h5 [--force] | tpx convert MODEL OUT_DIR --hf", options, positional, vm)) return 0;

    const std::string model = vm["model"].as<std::string>(), out = vm["out"].as<std::string>();
    const bool hf = vm.count("hf") > 0;
    if (out.empty()) throw JobError(std::string("OUT is empty: name the ") + (hf ? "new folder" : ".h5 file") + " to write");
    // --hf makes a folder at OUT itself (a dangling link there is in the way); an .h5 file is
    // written through a symlink, so a dangling one replaces nothing.
    const bool taken = hf ? anything_at<JobError>(out, "OUT: ") : path_exists<JobError>(out, "OUT: ");
    std::string folder = out;  // --hf's, without a trailing '/'
    while (folder.size() > 1 && folder.back() == '/') folder.pop_back();
    if (hf) {
        if (vm.count("force")) throw JobError("--force replaces an .h5 file; with --hf, OUT must be a new folder");
        if (taken) throw JobError("OUT (" + out + ") already exists; tpx convert --hf writes a new folder and replaces nothing");
        // Not under a name a checkpoint's readers take, in its folder (params.json/ beside
        // config.json made the folder both Meta's and HF's).
        check_outputs({{"OUT", folder}}, checkpoint_inputs(model));
    } else {
        check_outputs({{"OUT", out}}, checkpoint_inputs(model));
        // An HDF5 file under another checkpoint's name (model.safetensors, consolidated.01.pth)
        // would be read as that checkpoint's file, beside an input folder too: the name checked
        // is the one written, where a symlink's chain leads (check_outputs refused a loop).
        const std::string target = written_path(out);
        const std::string ext = fs::path(target).extension().string();
        if (!is_stream_target(out) && ext != ".h5" && ext != ".hdf5")
            throw JobError("OUT (" + out + (target == out ? "" : ", a link to " + target) +
                           ") must end in .h5 or .hdf5: tpx convert writes an HDF5 file (--hf: an HF folder)");
        if (taken && !is_stream_target(out) && !vm.count("force")) throw JobError("OUT (" + out + ") already exists; give --force to replace it");
    }
    auto ckpt = Checkpoint::open(model);
    // Both layouts hold plain tensors: a quantized checkpoint would be written dequantized (four
    // to eight times larger) under a config.json that still says it is quantized.
    if (QuantConfig q = quantization_of(*ckpt); q.quantized())
        throw JobError(ckpt->path() + " holds " + q.describe() + " weights: tpx convert writes plain tensors only; a quantized "
                       "checkpoint is read as it is (give the job its folder)");
    // (An index.json whose weight_map is {} opens as a checkpoint of nothing.)
    if (ckpt->tensors().empty()) throw JobError(ckpt->path() + " holds no tensors: there is nothing to convert");
    ConvertStats s = hf ? convert_to_hf_folder(*ckpt, folder) : convert_to_hdf5(*ckpt, out);
    // Not after the file's bytes when OUT is standard output itself.
    std::fprintf(standard_stream(out) == STDOUT_FILENO ? stderr : stdout, "wrote %s: %zu tensors, %s\n", out.c_str(), s.tensors,
                 human_bytes((double)s.bytes).c_str());
    return 0;
}

}  // namespace tpx
