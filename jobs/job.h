// The job a user asked for, as plain structs with defaults. Parsed once from TOML
// (jobs/parse.cpp), printed back with every default filled in (jobs/emit.cpp).
// Invariant after load_job(): every path is absolute and every cross-field rule holds
// (ep | tp, nodes * ranks_per_node == tp, ...), so later layers need not re-check the job.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "common/kernel_config.h"

namespace tpx {

struct ModelSection {
    std::string path;            // HF folder (config.json + *.safetensors) or an .h5 file; required
    std::string dtype = "auto";  // weights on the device: auto (the checkpoint's) | bfloat16 | float16 | float32
    // RoPE inverse frequencies: "checkpoint" rounds them to the checkpoint's dtype, as HF's
    // model.to(dtype) does to its inv_freq buffer; "float32" keeps them exact.
    std::string rope_precision = "checkpoint";
    // The tokenizer for text and chat prompts and text outputs: a folder holding tokenizer.json
    // (and tokenizer_config.json) or a tokenizer.json; "" = the checkpoint folder's, if it has one.
    std::string tokenizer;
    // Checkpoint tensors the model does not read (a config.json that says fewer layers or
    // experts than the checkpoint holds) are refused before any rank starts; true runs anyway,
    // with a warning naming them.
    bool allow_unused_weights = false;
    int read_threads = 0;  // threads reading the checkpoint on each rank; 0 = the host's cores, 2 to 16
};

struct ParallelSection {
    int tp = 1;              // ranks that split attention and dense layers within a pipeline stage
    int ep = 1;              // expert-parallel groups for MoE layers; divides tp
    int pp = 1;              // pipeline stages (contiguous decoder layers each); world = tp x pp
    std::vector<int64_t> pp_layers;  // decoder layers of each stage, first stage first; empty = balanced by weight bytes
    int micro_batches = 1;   // a forward's sequences split into this many groups that flow through the stages in turn
    int nodes = 1;           // hosts the ranks are spread over
    int ranks_per_node = 0;  // 0 = world / nodes; otherwise nodes * ranks_per_node == world
};

struct BackendSection {
    std::string device = "cpu";  // cpu | cuda
    // Seconds a rank waits in a collective (MPI, NCCL, the one-shot kernels, MPI_Init) before it
    // names the rank it waited for and the job ends; 0 = forever.
    double collective_timeout_s = 120;
    // How long rank 0 waits for a FIFO output's reader while the other ranks wait for it: half
    // their timeout, so that its message, not theirs, ends the job (0: as long as it takes).
    double fifo_wait_s() const { return collective_timeout_s / 2; }
    bool cuda_graphs = true;     // decode steps captured as CUDA graphs and replayed (cuda; off with tuning.profile)
    KernelConfig tuning;         // [backend.tuning]: the GPU kernels' choices (the CPU backend has none)
};

struct SamplingSection {
    double temperature = 0.0;  // 0 = greedy
    int top_k = 0;             // 0 = no top-k cut
    double top_p = 1.0;        // 1 = no nucleus cut; in (0, 1]
    uint64_t seed = 0;         // the same seed gives the same tokens
    // OpenAI's presence and frequency penalties (on the output's ids), HF's repetition penalty
    // (on the prompt's and the output's): cpu::Penalties.
    double presence_penalty = 0.0, frequency_penalty = 0.0, repetition_penalty = 1.0;
};

// The most positions a sequence may have (run.max_seq_len, or the model's own when that is 0).
constexpr int64_t kMaxSeqLen = 1 << 30;

struct RunSection {
    std::string prompts;             // JSONL, one {"id": ..., "input_ids": [...]} a line; "" = none
    int max_new_tokens = 16;         // tokens generated per prompt at most
    std::vector<int64_t> eos;        // stop ids; empty = generation_config.json's eos_token_id
    std::string output;              // JSONL results; "" = <job dir>/<job name>.out.jsonl
    int max_batch = 8;               // sequences decoded together (KV cache is sized for this)
    int max_seq_len = 0;             // tokens per sequence (prompt + generated); 0 = model's maximum
    std::string chat_template;       // a .jinja file (or JSON with "chat_template") replacing the tokenizer's; "" = the tokenizer's
    std::vector<std::string> stop;   // strings that end a sequence; its text is cut before them (needs a tokenizer)
    SamplingSection sampling;
};

struct LaunchSection {
    std::string mpirun = "mpirun";        // the mpirun to start ranks with (a name on PATH or a path)
    std::vector<std::string> extra_args;  // appended to the mpirun command line as they are
    std::vector<std::string> hosts;       // "host:slots" entries; empty = this host only
    std::string hostfile;                 // an Open MPI hostfile; exclusive with hosts
    std::string interface;                // network for MPI (and NCCL): an interface name or a CIDR subnet; "" = any
    std::string rsh_agent;                // how mpirun reaches other hosts (plm_rsh_agent); "" = ssh
    std::vector<std::string> env;         // variables passed to every rank, besides NCCL_*, CUDA_* and TPX_*
};

struct SlurmSection {
    std::string partition;             // "" = the cluster's default
    std::string account;               // "" = the user's default
    std::string time = "01:00:00";     // wall-clock limit in a form sbatch accepts (D-HH:MM:SS, MM, ...)
    int nodes = 0;                     // 0 = parallel.nodes
    int gpus_per_node = 0;             // 0 = ranks_per_node for device = "cuda", none for "cpu"
    std::string launcher = "srun";     // srun (srun --mpi=pmix) | mpirun
    std::vector<std::string> extra;    // extra "#SBATCH" lines, e.g. "--exclusive"
};

// [serve]: `tpx serve` (and `tpx submit` of a job that has this table) answers OpenAI-style
// HTTP requests on rank 0 instead of running run.prompts (docs/SERVE.md).
struct ServeSection {
    bool present = false;             // the job file has a [serve] table
    std::string host = "127.0.0.1";   // address rank 0 listens on
    int port = 8000;                  // TCP port; 0 = any free port (rank 0 prints the one it got)
    std::string model_name;           // the model's name in the API; "" = the job's name
    std::string api_key;              // "" = no key; else every request needs "Authorization: Bearer KEY"
    int max_queue = 64;               // requests waiting for a KV slot; beyond it 429 (a call of more prompts: 400)
    int prefill_chunk = 256;          // prompt tokens of one request prefilled per step
    double grace_s = 30;              // seconds in-flight requests may take to finish after SIGTERM
    bool allow_refit = true;          // POST /v1/admin/refit may load new weights in place (false: 403)
};

// [bench]: what `tpx bench` times (docs/PERF.md has the method). Sizes past run.max_batch or
// run.max_seq_len are skipped with a message; an empty list times none of that kind (both empty:
// the load and the device's rates alone); sizes given of which every one would be skipped are
// refused by the launcher. Where a batch size runs, the decode sequences must fit
// run.max_seq_len: decode_prompt_length + decode_warmup + decode_steps.
struct BenchSection {
    std::vector<int64_t> prompt_lengths = {128, 2048};  // prefill: one prompt of each length, median of 5 after a warm-up
    std::vector<int64_t> batch_sizes = {1, 8, 64};      // decode: a step at each batch size, median over decode_steps
    int64_t decode_prompt_length = 128;                 // tokens each decoding sequence holds before its first step
    int decode_warmup = 10;                             // decode steps run before the timed ones
    int decode_steps = 100;                             // decode steps timed at each batch size
};
// The positions a decoding sequence of the benchmark reaches.
inline int64_t decode_positions(const BenchSection& b) { return b.decode_prompt_length + b.decode_warmup + b.decode_steps; }

// One option of a transform as the user wrote it, with where it was written, so that the
// transform registry (sharding/) can reject unknown names and options with a position.
struct OptionValue {
    std::variant<bool, int64_t, double, std::string> value;
    long line = 0;
    long col = 0;
};

// A [transforms.NAME] table: options by key. The common fields (enabled, skip_on_error, ...)
// are type-checked while parsing; what each transform accepts is the registry's business.
struct TransformSection {
    std::string name;
    long line = 0;
    long col = 0;
    std::map<std::string, OptionValue> options;
};

struct Job {
    std::string file;  // the job file as given
    std::string dir;   // absolute folder relative paths were resolved against
    std::string name;  // [job] name; default: the job file's stem
    ModelSection model;
    ParallelSection parallel;
    BackendSection backend;
    RunSection run;
    LaunchSection launch;
    SlurmSection slurm;
    ServeSection serve;
    BenchSection bench;
    std::vector<TransformSection> transforms;  // in file order

    // Ranks of the job: rank = stage x tp + tp_rank (each stage's tp group contiguous).
    int world() const { return parallel.tp * parallel.pp; }
    // Whether the job holds a secret ([serve] api_key): the files tpx writes with it are its
    // owner's alone, and `tpx validate` withholds it (jobs/emit.h).
    bool carries_secret() const { return !serve.api_key.empty(); }
};

// Whether `key` can be a [serve] api_key as "Authorization: Bearer KEY" carries it: up to 1,024
// visible ASCII characters (no spaces, tabs, control or non-ASCII bytes; "" is no key).
inline bool api_key_allowed(const std::string& key) {
    return key.size() <= 1024 && std::none_of(key.begin(), key.end(), [](unsigned char c) { return c < 0x21 || c > 0x7e; });
}

// mpirun's binding arguments for this job: {"--bind-to", "none"} where Open MPI would bind each
// rank to a single core (one or two ranks a host) and [launch] extra_args sets no binding or
// mapping of its own; a rank's checkpoint read threads and HTTP server would otherwise share
// that core (docs/MULTINODE.md). Else none.
std::vector<std::string> mpirun_binding(const Job& job);

}  // namespace tpx
