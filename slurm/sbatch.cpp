// Writing the sbatch script.
#include "slurm/sbatch.h"

#include <filesystem>
#include <sstream>

#include "common/error.h"
#include "jobs/outputs.h"
#include "jobs/parse.h"

namespace fs = std::filesystem;

namespace tpx {

std::string slurm_quote(const std::string& value, const std::string& what) {
    if (value.find('\n') != std::string::npos || value.find('\r') != std::string::npos)
        throw JobError(what + " holds a line break, which an sbatch script cannot carry: \"" + value + "\"");
    std::string out = "\"";
    for (char c : value) {
        if (c == '$' || c == '`' || c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

std::string script_path(const Job& job) {
    return (fs::path(job_files_folder(job)) / (file_safe(job.name) + ".sbatch")).string();
}

std::string sbatch_script(const Job& job, const SubmitPaths& p, const std::string& job_toml, bool as_root) {
    const SlurmSection& s = job.slurm;
    std::ostringstream os;
    os << "#!/bin/bash\n";
    os << "# tpx job " << slurm_quote(job.name, "job.name") << ", written by `tpx submit` from "
       << slurm_quote(job.file, "the job file") << ".\n";
    os << "#SBATCH --job-name=" << slurm_quote(job.name, "job.name") << "\n";
    os << "#SBATCH --nodes=" << s.nodes << "\n";
    os << "#SBATCH --ntasks-per-node=" << job.parallel.ranks_per_node << "\n";
    if (s.gpus_per_node > 0) os << "#SBATCH --gpus-per-node=" << s.gpus_per_node << "\n";
    if (!s.partition.empty()) os << "#SBATCH --partition=" << slurm_quote(s.partition, "slurm.partition") << "\n";
    if (!s.account.empty()) os << "#SBATCH --account=" << slurm_quote(s.account, "slurm.account") << "\n";
    os << "#SBATCH --time=" << slurm_quote(s.time, "slurm.time") << "\n";
    std::string logs = (fs::path(p.dir) / (file_safe(job.name) + "-%j")).string();
    os << "#SBATCH --output=" << slurm_quote(logs + ".out", "the log path") << "\n";
    os << "#SBATCH --error=" << slurm_quote(logs + ".err", "the log path") << "\n";
    for (const std::string& line : s.extra) {
        slurm_quote(line, "slurm.extra");  // rejects line breaks
        os << "#SBATCH " << line << "\n";
    }
    os << "set -euo pipefail\n";
    // The job as submitted, written where every rank can read it when the job starts.
    const std::string stem = (fs::path(p.dir) / (file_safe(job.name) + "-")).string();
    os << "job=" << slurm_quote(stem, "the job path") << "\"$SLURM_JOB_ID\".tpx.toml\n";
    const std::string text = job_toml.empty() || job_toml.back() != '\n' ? job_toml + "\n" : job_toml;
    std::string end = "TPX_JOB_END";  // a line the job's text does not hold
    while (("\n" + text).find("\n" + end + "\n") != std::string::npos) end += "_";
    // A job that carries a secret: the copy its owner's alone, as the script is, made new by
    // mktemp (0600, exclusive) and renamed over the name (what was there, a link or a FIFO, is
    // replaced, never written through); in a subshell, so that the ranks' outputs keep the umask.
    if (!job.carries_secret()) os << "cat > \"$job\" <<'" << end << "'\n" << text << end << "\n";
    else
        os << "(umask 077 && t=$(mktemp \"$job.XXXXXX\") && { cat > \"$t\" && mv -fT -- \"$t\" \"$job\" || { rm -f -- \"$t\"; false; }; }) <<'" << end
           << "'\n" << text << end << "\n";
    std::string worker = slurm_quote(p.worker, "the worker path") + " --job \"$job\"";
    // A job with a [serve] table serves (docs/SERVE.md); scancel's SIGTERM drains it.
    if (job.serve.present) worker += " --serve";
    if (s.launcher == "srun") {
        // --kill-on-bad-exit: one rank's failure ends every rank of the step. The worker checks
        // SLURM_PROCID, SLURM_LOCALID and SLURM_NTASKS against MPI's view of it.
        os << "exec srun --mpi=pmix --kill-on-bad-exit=1 " << worker << " --launched-by srun\n";
    } else {
        os << "exec " << slurm_quote(job.launch.mpirun, "launch.mpirun") << " -np " << job.world();
        if (as_root) os << " --allow-run-as-root";
        for (const std::string& a : mpirun_binding(job)) os << " " << a;
        for (const std::string& a : job.launch.extra_args) os << " " << slurm_quote(a, "launch.extra_args");
        os << " " << worker << "\n";
    }
    return os.str();
}

}  // namespace tpx
