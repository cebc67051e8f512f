// `tpx submit`, `status`, `cancel`, `logs`: a job under Slurm, followed to its end.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/path.h"
#include "jobs/emit.h"
#include "jobs/parse.h"
#include "jobs/outputs.h"
#include "launcher/command.h"
#include "launcher/mpirun.h"
#include "sharding/transform.h"
#include "slurm/commands.h"
#include "slurm/sbatch.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace tpx {
namespace {

std::string job_id_arg(const Args& args, const char* usage, po::variables_map& vm, po::options_description& options) {
    options.add_options()("id", po::value<std::string>()->required(), "the Slurm job id");
    po::positional_options_description positional;
    positional.add("id", 1);
    if (parse_command_line(args, usage, options, positional, vm)) return "";
    std::string id = vm["id"].as<std::string>();
    if (id.empty() || id.find_first_not_of("0123456789_") != std::string::npos) throw JobError("'" + id + "' is not a Slurm job id");
    return id;
}

bool finished(const SlurmJobState& s) { return s.state != "pending" && s.state != "running"; }

}  // namespace

int cmd_submit(const Args& args) {
    po::options_description options("tpx submit options");
    options.add_options()("job", po::value<std::string>()->required(), "the job file")(
        "dry-run", "print the sbatch script instead of submitting it");
    po::positional_options_description positional;
    positional.add("job", 1);
    po::variables_map vm;
    if (parse_command_line(args, "tpx submit JOB [--dry-run]", options, positional, vm)) return 0;
    Job job = load_job(vm["job"].as<std::string>());
    resolve_transform_options(job);
    if (job.run.prompts.empty() && !job.serve.present)
        throw JobError(job.file + ": run.prompts is not set (and there is no [serve] table): there is nothing to run");
    if (job.serve.present) require_one_stage(job, "a [serve] job");
    // Slurm places the ranks on the nodes it allocates: hosts named for mpirun would do nothing.
    if (!job.launch.hosts.empty() || !job.launch.hostfile.empty())
        throw JobError(job.file + ": launch." + (job.launch.hosts.empty() ? "hostfile" : "hosts") +
                       " names hosts for tpx run's mpirun; under Slurm the job runs on the nodes it is allocated: leave it out "
                       "for tpx submit ([slurm] partition and extra choose the nodes)");
    // The script carries the resolved job and writes it beside the output when the job starts
    // (NAME-JOBID.tpx.toml), so that editing the job file, or submitting it again, does not
    // change a job already queued.
    const fs::path dir = job_files_folder(job);
    const std::string path = script_path(job);
    check_before_launch(job, {{"the sbatch script", path}}, /*local=*/false);
    const std::string script = sbatch_script(job, {worker_binary(), dir.string()}, emit_job_toml(job, Secrets::kWritten), geteuid() == 0);
    if (vm.count("dry-run")) {
        std::cout << script;
        return 0;
    }
    // A refused submission leaves the folder as it was: no new script, an earlier one (a job
    // still queued may be named by it) put back, text and mode. `target`: the file the script's
    // write replaces (through a symlink, as write_file_atomically writes).
    const std::string target = written_path(path);
    const bool existed = path_exists<JobError>(target);
    std::string before;
    struct stat old_st;
    const bool old_mode = existed && ::stat(target.c_str(), &old_st) == 0;
    if (existed) {
        std::ifstream in(target, std::ios::binary);
        if (in) before.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        if (!in.is_open() || in.bad())
            throw JobError(path + ": the script already there cannot be read, so a refused submission could not put it back: move it away first");
    }
    std::string id;
    try {  // a script that carries an api_key is its owner's alone
        write_file_atomically(path, script, /*stream_wait_s=*/0, job.carries_secret() ? Access::kOwnerOnly : Access::kAsUsual);
        id = submit_script(path);
    } catch (...) {
        if (existed) {  // its old text, then its old mode (write_file_atomically would keep the new file's)
            write_file_atomically(path, before);
            if (old_mode && ::chmod(target.c_str(), old_st.st_mode & 0777) != 0)
                std::cerr << "tpx submit: warning: " << target << "'s old mode not put back: " << std::strerror(errno) << "\n";
        } else {
            std::error_code ec;
            fs::remove(target, ec);
        }
        throw;
    }
    std::cerr << "tpx submit: job '" << job.name << "' submitted as Slurm job " << id << " (script " << path << ")\n";
    std::cout << id << "\n";
    return 0;
}

int cmd_status(const Args& args) {
    po::options_description options("tpx status options");
    po::variables_map vm;
    std::string id = job_id_arg(args, "tpx status ID", vm, options);
    if (id.empty()) return 0;
    SlurmJobState s = query_job(id);
    std::cout << "job " << s.id << ": " << s.state << " (" << s.raw_state << "), exit code " << s.exit_code << ", elapsed "
              << s.elapsed << ", nodes " << s.nodes << "\n";
    return 0;
}

int cmd_cancel(const Args& args) {
    po::options_description options("tpx cancel options");
    po::variables_map vm;
    std::string id = job_id_arg(args, "tpx cancel ID", vm, options);
    if (id.empty()) return 0;
    query_job(id);  // an unknown id is scontrol's error, before anything is sent
    cancel_job(id);
    SlurmJobState s;
    for (int i = 0; i < 300; ++i) {  // up to 30 s for Slurm to end the steps
        s = query_job(id);
        if (finished(s)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::cout << "job " << id << ": " << s.state << " (" << s.raw_state << ")\n";
    return finished(s) ? 0 : kExitRuntime;
}

int cmd_logs(const Args& args) {
    po::options_description options("tpx logs options");
    options.add_options()("follow,f", "keep printing until the job ends");
    po::variables_map vm;
    std::string id = job_id_arg(args, "tpx logs ID [--follow]", vm, options);
    if (id.empty()) return 0;
    SlurmJobState s = query_job(id);
    std::map<std::string, std::streamoff> printed;
    auto print_new = [&](const std::string& path, std::ostream& os) {
        if (path.empty()) return;
        std::ifstream in(path);
        if (!in) return;
        in.seekg(printed[path]);
        std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        printed[path] += (std::streamoff)chunk.size();
        os << chunk << std::flush;
    };
    for (;;) {
        print_new(s.stdout_path, std::cout);
        if (s.stderr_path != s.stdout_path) print_new(s.stderr_path, std::cerr);
        if (!vm.count("follow") || finished(s)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        s = query_job(id);
    }
    if (vm.count("follow")) {  // what was written between the last read and the end
        print_new(s.stdout_path, std::cout);
        if (s.stderr_path != s.stdout_path) print_new(s.stderr_path, std::cerr);
    }
    return 0;
}

}  // namespace tpx
