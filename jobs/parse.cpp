// Job file parsing and validation. Each section is read through a Section that remembers the
// keys it was asked for: those are the valid keys, and anything else in the table is reported
// as unknown together with that list (submitit's "Valid parameters are: ...").
#include "jobs/parse.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include <toml++/toml.h>

#include "common/error.h"
#include "common/path.h"
#include "common/sampling_limits.h"
#include "jobs/files.h"
#include "jobs/hostfile.h"
#include "jobs/section.h"
#include "jobs/toml_error.h"

namespace fs = std::filesystem;

namespace tpx {
namespace {

using namespace job_section;

const std::vector<std::string> kSections = {"job", "model", "parallel", "backend", "run", "launch", "slurm", "serve", "bench", "transforms"};

std::string resolve(const std::string& base_dir, const std::string& p) {
    if (p.empty()) return p;
    fs::path path(p);
    if (path.is_relative()) path = fs::path(base_dir) / path;
    return absolute_path(path);
}

// Sbatch's --time forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED.
bool is_slurm_time(const std::string& t) {
    static const std::regex re(R"(^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2}|UNLIMITED|unlimited|infinite)$)");
    return std::regex_match(t, re);
}

// "host:slots" with a host name made of letters, digits, '.', '-', '_' and slots >= 1.
bool is_host_entry(const std::string& h) {
    static const std::regex re(R"(^[A-Za-z0-9_.\-]+(:[1-9][0-9]*)?$)");
    return std::regex_match(h, re);
}

void parse_model(Section s, Job& job) {
    if (!s.get_string("path", job.model.path)) {
        if (!s.present()) throw JobError(at(s.file(), 0, 0, "missing section [model] (its key 'path' is required: an HF model folder or an .h5 file)"));
        s.fail_here("missing required key model.path (an HF model folder or an .h5 file)");
    }
    s.get_string("dtype", job.model.dtype, {"auto", "bfloat16", "float16", "float32"});
    s.get_string("rope_precision", job.model.rope_precision, {"checkpoint", "float32"});
    s.get_string("tokenizer", job.model.tokenizer);
    s.get_bool("allow_unused_weights", job.model.allow_unused_weights);
    s.get_int("read_threads", job.model.read_threads, 0, 256);
    s.reject_unknown();
}

void parse_parallel(Section s, Job& job) {
    ParallelSection& p = job.parallel;
    s.get_int("tp", p.tp, 1, 65536);
    s.get_int("ep", p.ep, 1, 65536);
    s.get_int("pp", p.pp, 1, 65536);
    if (const toml::node* n = s.node("pp_layers")) {
        if (!n->is_array()) s.fail(*n, "pp_layers", std::string("must be an array of layer counts, not ") + type_name(n->type()));
        for (const toml::node& item : *n->as_array()) {
            if (!item.is_integer() || item.as_integer()->get() < 1)
                s.fail(item, "pp_layers", "must hold layer counts >= 1, one per stage");
            p.pp_layers.push_back(item.as_integer()->get());
        }
        if (!p.pp_layers.empty() && (int)p.pp_layers.size() != p.pp)
            s.fail(*n, "pp_layers", "names " + std::to_string(p.pp_layers.size()) + " stages but parallel.pp = " + std::to_string(p.pp));
    }
    if (s.get_int("micro_batches", p.micro_batches, 1, 65536) && p.micro_batches > 1 && p.pp == 1)
        s.fail(*s.node("micro_batches"), "micro_batches", "= " + std::to_string(p.micro_batches) + " needs parallel.pp > 1 (they flow between stages)");
    s.get_int("nodes", p.nodes, 1, 65536);
    bool rpn_given = s.get_int("ranks_per_node", p.ranks_per_node, 0, 65536);
    s.reject_unknown();
    long line = s.line(), col = s.col();
    const int world = p.tp * p.pp;
    const std::string world_text = p.pp == 1 ? "parallel.tp = " + std::to_string(p.tp)
                                             : "the world size tp x pp = " + std::to_string(world);
    if (p.tp % p.ep != 0)
        throw JobError(at(s.file(), line, col, "parallel.ep = " + std::to_string(p.ep) +
                                                   " must divide parallel.tp = " + std::to_string(p.tp)));
    if (rpn_given && p.ranks_per_node > 0) {
        if (p.nodes * p.ranks_per_node != world)
            throw JobError(at(s.file(), line, col, "parallel.nodes x parallel.ranks_per_node = " +
                                                       std::to_string(p.nodes) + " x " + std::to_string(p.ranks_per_node) +
                                                       " must equal " + world_text));
    } else {
        if (world % p.nodes != 0)
            throw JobError(at(s.file(), line, col, "parallel.nodes = " + std::to_string(p.nodes) +
                                                       " must divide " + world_text +
                                                       " (every node runs the same number of ranks)"));
        p.ranks_per_node = world / p.nodes;
    }
    // A stage's tp collectives stay on one host when the stage fits on one: hosts hold whole stages.
    if (p.pp > 1 && p.nodes > 1 && p.tp <= p.ranks_per_node && p.ranks_per_node % p.tp != 0)
        throw JobError(at(s.file(), line, col, "parallel.ranks_per_node = " + std::to_string(p.ranks_per_node) +
                                                   " splits a stage's tp = " + std::to_string(p.tp) +
                                                   " ranks over two hosts; make ranks_per_node a multiple of tp"));
}

void parse_run(Section s, Job& job) {
    RunSection& r = job.run;
    if (s.get_string("prompts", r.prompts)) r.prompts = resolve(job.dir, r.prompts);
    s.get_int("max_new_tokens", r.max_new_tokens, 0, 1 << 30);
    if (const toml::node* n = s.node("eos")) {
        r.eos.clear();
        if (n->is_integer()) {
            r.eos.push_back(n->as_integer()->get());
        } else if (n->is_array()) {
            for (const toml::node& item : *n->as_array()) {
                if (!item.is_integer()) s.fail(item, "eos", std::string("must be token ids (integers); this element is ") + type_name(item.type()));
                r.eos.push_back(item.as_integer()->get());
            }
        } else {
            s.fail(*n, "eos", std::string("must be a token id or an array of token ids, not ") + type_name(n->type()));
        }
        for (int64_t id : r.eos)
            if (id < 0) s.fail(*n, "eos", "holds " + std::to_string(id) + ": token ids are >= 0");
    }
    s.get_string("output", r.output);
    s.get_int("max_batch", r.max_batch, 1, 1 << 20);
    s.get_int("max_seq_len", r.max_seq_len, 0, (int)kMaxSeqLen);
    if (s.get_string("chat_template", r.chat_template)) r.chat_template = resolve(job.dir, r.chat_template);
    if (const toml::node* n = s.node("stop")) {
        s.get_string_list("stop", r.stop, /*allow_nul=*/true);
        for (const std::string& stop : r.stop)
            if (stop.empty()) s.fail(*n, "stop", "holds an empty string, which would end every sequence at once");
    }

    const toml::node* sn = s.node("sampling");
    if (sn && !sn->is_table()) s.fail(*sn, "sampling", std::string("must be a table ([run.sampling]), not ") + type_name(sn->type()));
    Section samp(s.file(), "run.sampling", sn ? sn->as_table() : nullptr, sn ? sn->source().begin.line : 0,
                 sn ? sn->source().begin.column : 0);
    SamplingSection& sp = r.sampling;
    samp.get_double("temperature", sp.temperature, 0.0, 1e6);
    samp.get_int("top_k", sp.top_k, 0, 1 << 30);
    samp.get_double("top_p", sp.top_p, 0.0, 1.0, /*lo_open=*/true);
    int64_t seed = 0;
    if (samp.get_int("seed", seed, 0, INT64_MAX)) sp.seed = (uint64_t)seed;
    samp.get_double("presence_penalty", sp.presence_penalty, -kMaxPresencePenalty, kMaxPresencePenalty);
    samp.get_double("frequency_penalty", sp.frequency_penalty, -kMaxPresencePenalty, kMaxPresencePenalty);
    samp.get_double("repetition_penalty", sp.repetition_penalty, kMinRepetitionPenalty, kMaxRepetitionPenalty);
    samp.reject_unknown();
    s.reject_unknown();

    if (r.output.empty()) r.output = file_safe(job.name) + ".out.jsonl";
    r.output = resolve(job.dir, r.output);
}

void parse_tuning(Section t, KernelConfig& k) {
    t.get_bool("pdl", k.pdl);
    t.get_bool("gemv_early", k.gemv_early);
    if (const toml::node* n = t.node("gemv_splitk")) {
        t.get_int("gemv_splitk", k.gemv_splitk, 0, 4);
        if (k.gemv_splitk == 3) t.fail(*n, "gemv_splitk", "= 3: must be 0 (chosen by K), 1, 2 or 4");
    }
    t.get_bool("gemv_balance", k.gemv_balance);
    t.get_bool("sum_wide", k.sum_wide);
    t.get_bool("gemv_mma", k.gemv_mma);
    t.get_bool("batch_gemm", k.batch_gemm);
    t.get_bool("attention_early", k.attention_early);
    if (const toml::node* n = t.node("decode_splits")) {
        t.get_int("decode_splits", k.decode_splits, 1, 8);
        if (k.decode_splits & (k.decode_splits - 1))
            t.fail(*n, "decode_splits", "= " + std::to_string(k.decode_splits) + ": must be 1, 2, 4 or 8");
    }
    t.get_bool("attention_gqa", k.attention_gqa);
    t.get_bool("attention_one_pass", k.attention_one_pass);
    t.get_bool("attention_rope", k.attention_rope);
    t.get_bool("attention_mma", k.attention_mma);
    t.get_string("flash_tile", k.flash_tile, {"2x64", "1x64"});
    t.get_int("flash_short_max", k.flash_short_max, 0, 1 << 30);
    t.get_bool("gemm_tune", k.gemm_tune);
    t.get_bool("residual_epilogue", k.residual_epilogue);
    t.get_string("quant_prefill", k.quant_prefill, {"dequant", "w8a8"});
    t.get_bool("w8a8_fused", k.w8a8_fused);
    t.get_int("quant_gemv_tokens", k.quant_gemv_tokens, 8, 4096);
    t.get_bool("quant_mma", k.quant_mma);
    t.get_bool("quant_ring", k.quant_ring);
    t.get_string("moe", k.moe, {"auto", "sparse", "grouped", "dense"});
    t.get_bool("oneshot", k.oneshot);
    t.get_bool("fused_all_reduce", k.fused_all_reduce);
    t.get_bool("device_draws", k.device_draws);
    t.get_bool("profile", k.profile);
    t.reject_unknown();
}

void parse_backend(Section s, Job& job) {
    s.get_string("device", job.backend.device, {"cpu", "cuda"});
    s.get_double("collective_timeout_s", job.backend.collective_timeout_s, 0.0, 1e7);
    s.get_bool("cuda_graphs", job.backend.cuda_graphs);
    const toml::node* tn = s.node("tuning");
    if (tn && !tn->is_table()) s.fail(*tn, "tuning", std::string("must be a table ([backend.tuning]), not ") + type_name(tn->type()));
    parse_tuning(Section(s.file(), "backend.tuning", tn ? tn->as_table() : nullptr, tn ? tn->source().begin.line : 0,
                         tn ? tn->source().begin.column : 0),
                 job.backend.tuning);
    s.reject_unknown();
}

void parse_launch(Section s, Job& job) {
    LaunchSection& l = job.launch;
    if (s.get_string("mpirun", l.mpirun) && l.mpirun.find('/') != std::string::npos) l.mpirun = resolve(job.dir, l.mpirun);  // a bare name: from PATH
    if (const toml::node* n = s.node("extra_args")) {
        s.get_string_list("extra_args", l.extra_args);
        for (const std::string& a : l.extra_args)
            if (tpx_sets_mpirun_option(a))
                s.fail(*n, "extra_args", "gives " + a + ", which tpx sets itself (ranks from [parallel]; hosts from launch.hosts or launch.hostfile)");
    }
    if (const toml::node* n = s.node("hosts")) {
        s.get_string_list("hosts", l.hosts);
        std::set<std::string> named;
        for (const std::string& h : l.hosts) {
            if (!is_host_entry(h)) s.fail(*n, "hosts", "entry \"" + h + "\" is not of the form host or host:slots");
            // Each host runs ranks_per_node ranks: a host named twice, or with fewer slots, is
            // mpirun's "not enough slots" after the launch otherwise.
            const size_t colon = h.rfind(':');
            const std::string host = h.substr(0, colon), slots = colon == std::string::npos ? "" : h.substr(colon + 1);
            if (!named.insert(host).second) s.fail(*n, "hosts", "names " + host + " twice: one entry a node");
            if (!slots.empty() && slots.size() < 10 && std::stol(slots) < job.parallel.ranks_per_node)
                s.fail(*n, "hosts", "entry \"" + h + "\" has fewer slots than the " + std::to_string(job.parallel.ranks_per_node) +
                                        " ranks a node runs (parallel.ranks_per_node)");
        }
    }
    if (s.get_string("hostfile", l.hostfile)) l.hostfile = resolve(job.dir, l.hostfile);
    s.get_string("interface", l.interface);
    if (s.get_string("rsh_agent", l.rsh_agent) && l.rsh_agent.find('/') != std::string::npos) l.rsh_agent = resolve(job.dir, l.rsh_agent);
    if (const toml::node* n = s.node("env")) {
        s.get_string_list("env", l.env);
        static const std::regex name(R"(^[A-Za-z_][A-Za-z0-9_]*$)");
        for (const std::string& v : l.env)
            if (!std::regex_match(v, name)) s.fail(*n, "env", "entry \"" + v + "\" is not an environment variable name");
    }
    s.reject_unknown();
    if (!l.hosts.empty() && !l.hostfile.empty())
        s.fail_here("launch.hosts and launch.hostfile exclude each other: give one");
    if (!l.hosts.empty() && (int)l.hosts.size() != job.parallel.nodes)
        s.fail_here("launch.hosts names " + std::to_string(l.hosts.size()) + " hosts but parallel.nodes = " +
                    std::to_string(job.parallel.nodes));
    if (l.mpirun.empty()) s.fail_here("launch.mpirun must not be empty");
}

void parse_slurm(Section s, Job& job) {
    SlurmSection& sl = job.slurm;
    s.get_string("partition", sl.partition);
    s.get_string("account", sl.account);
    if (const toml::node* n = s.node("time")) {
        s.get_string("time", sl.time);
        if (!is_slurm_time(sl.time))
            s.fail(*n, "time", "= \"" + sl.time + "\" is not a time sbatch accepts (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)");
    }
    bool nodes_given = false;
    if (const toml::node* n = s.node("nodes")) {
        nodes_given = s.get_int("nodes", sl.nodes, 1, 65536);
        if (nodes_given && sl.nodes != job.parallel.nodes)
            s.fail(*n, "nodes", "= " + std::to_string(sl.nodes) + " disagrees with parallel.nodes = " +
                                    std::to_string(job.parallel.nodes) + " (leave it out to follow parallel.nodes)");
    }
    s.get_int("gpus_per_node", sl.gpus_per_node, 0, 1024);
    s.get_string("launcher", sl.launcher, {"srun", "mpirun"});
    s.get_string_list("extra", sl.extra);
    s.reject_unknown();
    if (!nodes_given) sl.nodes = job.parallel.nodes;
    if (sl.gpus_per_node == 0 && job.backend.device == "cuda") sl.gpus_per_node = job.parallel.ranks_per_node;
}

void parse_serve(Section s, Job& job) {
    ServeSection& v = job.serve;
    v.present = s.present();
    s.get_string("host", v.host);
    s.get_int("port", v.port, 0, 65535);
    s.get_string("model_name", v.model_name);
    if (s.get_string("api_key", v.api_key) && !api_key_allowed(v.api_key))
        s.fail(*s.node("api_key"), "api_key", "may hold only up to 1,024 visible ASCII characters (no spaces, tabs, control or non-ASCII bytes): no 'Authorization: Bearer KEY' could carry it");
    s.get_int("max_queue", v.max_queue, 1, 1 << 20);
    s.get_int("prefill_chunk", v.prefill_chunk, 1, 1 << 30);
    s.get_double("grace_s", v.grace_s, 0.0, 1e6);
    s.get_bool("allow_refit", v.allow_refit);
    s.reject_unknown();
    if (v.host.empty()) s.fail_here("serve.host must not be empty (\"127.0.0.1\" serves this host only, \"0.0.0.0\" every interface)");
    if (v.model_name.empty()) v.model_name = job.name;
}

void parse_bench(Section s, Job& job) {
    BenchSection& b = job.bench;
    s.get_int_list("prompt_lengths", b.prompt_lengths, 1, kMaxSeqLen, "prompt lengths (tokens)");
    s.get_int_list("batch_sizes", b.batch_sizes, 1, 1 << 20, "batch sizes");
    s.get_int("decode_prompt_length", b.decode_prompt_length, 1, kMaxSeqLen);
    s.get_int("decode_warmup", b.decode_warmup, 0, 1 << 20);
    s.get_int("decode_steps", b.decode_steps, 1, 1 << 20);
    s.reject_unknown();
}

// The common options of every transform are type-checked here; unknown transform names and
// their own options are the transform registry's to reject (it knows the list).
const std::vector<std::pair<std::string, toml::node_type>> kCommonTransformOptions = {
    {"enabled", toml::node_type::boolean},           {"skip_on_error", toml::node_type::boolean},
    {"run_graph_cleanup", toml::node_type::boolean}, {"run_shape_prop", toml::node_type::boolean},
    {"requires_clean_graph", toml::node_type::boolean}, {"requires_shape_prop", toml::node_type::boolean},
    {"debug_visualize_dir", toml::node_type::string}, {"expect_mem_change", toml::node_type::boolean},
};

void parse_transforms(const toml::table& root, Job& job) {
    const toml::node* n = root.get("transforms");
    if (!n) return;
    if (!n->is_table())
        throw JobError(at(job.file, n->source().begin.line, n->source().begin.column,
                          std::string("'transforms' must hold one table per transform ([transforms.NAME]), not ") + type_name(n->type())));
    for (auto&& [k, v] : *n->as_table()) {
        std::string name(k.str());
        long line = k.source().begin.line, col = k.source().begin.column;
        if (!v.is_table())
            throw JobError(at(job.file, line, col, "transforms." + name + " must be a table ([transforms." + name + "]), not " + type_name(v.type())));
        TransformSection t;
        t.name = name;
        t.line = line;
        t.col = col;
        for (auto&& [ok, ov] : *v.as_table()) {
            std::string key(ok.str());
            OptionValue o;
            o.line = ov.source().begin.line;
            o.col = ov.source().begin.column;
            std::string qual = "transforms." + name + "." + key;
            for (auto& [common, type] : kCommonTransformOptions)
                if (common == key && ov.type() != type)
                    throw JobError(at(job.file, o.line, o.col, qual + " must be " + type_name(type) + ", not " + type_name(ov.type())));
            if (ov.is_boolean()) o.value = ov.as_boolean()->get();
            else if (ov.is_integer()) o.value = ov.as_integer()->get();
            else if (ov.is_floating_point()) o.value = ov.as_floating_point()->get();
            else if (ov.is_string()) o.value = ov.as_string()->get();
            else throw JobError(at(job.file, o.line, o.col, qual + " must be a boolean, number or string, not " + type_name(ov.type())));
            if (ov.is_string() && ov.as_string()->get().find('\0') != std::string::npos)
                throw JobError(at(job.file, o.line, o.col, qual + " holds a NUL character (\\u0000), which no job string but run.stop may hold"));
            if (key == "debug_visualize_dir" || (name == "visualize" && key == "dir" && ov.is_string()))  // folders, against the job's
                o.value = resolve(job.dir, std::get<std::string>(o.value));
            t.options[key] = o;
        }
        if (name == "visualize" && !t.options.count("dir")) t.options["dir"] = OptionValue{job.dir, 0, 0};  // its default ".", the job's folder
        job.transforms.push_back(std::move(t));
    }
}

}  // namespace

std::string file_safe(const std::string& name) {
    // Letters and digits of any script stay (bytes of multi-byte UTF-8 characters are kept
    // whole); anything else becomes '_'. Two names that reduce alike must not share files, so a
    // name that lost a character, or is too long for a file name, ends in a hash of the original.
    constexpr size_t kMaxBytes = 96;  // leaves room for ".out.jsonl.ranks.json.tmp-PID" under 255
    std::string out;
    bool changed = false;
    for (char c : name) {
        unsigned char u = (unsigned char)c;
        bool keep = u >= 0x80 || std::isalnum(u) || c == '-' || c == '_' || (c == '.' && !out.empty());
        out += keep ? c : '_';
        changed = changed || !keep;
    }
    if (out.size() > kMaxBytes) {
        size_t cut = kMaxBytes;
        while (cut > 0 && ((unsigned char)out[cut] & 0xC0) == 0x80) --cut;  // not inside a UTF-8 character
        out.resize(cut);
        changed = true;
    }
    if (out.empty()) return "job";
    if (!changed) return out;
    uint32_t h = 2166136261u;  // FNV-1a over the original name
    for (char c : name) h = (h ^ (unsigned char)c) * 16777619u;
    char tag[16];
    std::snprintf(tag, sizeof(tag), "-%08x", h);
    return out + tag;
}

Job parse_job(const std::string& text, const std::string& file, const std::string& base_dir) {
    Job job;
    job.file = file;
    job.dir = absolute_path(base_dir);
    if (text.find_first_not_of(" \t\r\n") == std::string::npos)
        throw JobError(at(file, 0, 0, "the job file is empty; `tpx example` prints one with every key"));

    refuse_deep_keys(text, file);
    toml::table root;
    try {
        root = toml::parse(text, file);
    } catch (const toml::parse_error& e) {
        const TomlMessage d = describe_toml_error(e.description(), e.source().begin.line, e.source().begin.column, text);
        throw JobError(at(file, e.source().begin.line, d.column, "not valid TOML: " + d.message));
    }

    for (auto&& [k, v] : root) {
        std::string key(k.str());
        if (std::find(kSections.begin(), kSections.end(), key) == kSections.end())
            throw JobError(at(file, k.source().begin.line, k.source().begin.column,
                              "unknown section '" + key + "'; valid sections: " + join(kSections)));
        if (!v.is_table())
            throw JobError(at(file, k.source().begin.line, k.source().begin.column,
                              "'" + key + "' must be a table ([" + key + "]), not " + type_name(v.type())));
    }

    Section js = section(root, file, "job");
    js.get_string("name", job.name);
    js.reject_unknown();
    if (job.name.empty()) {
        std::string stem = fs::path(file).stem().string();
        job.name = stem.empty() ? "job" : stem;
    }

    parse_model(section(root, file, "model"), job);
    job.model.path = resolve(job.dir, job.model.path);
    job.model.tokenizer = resolve(job.dir, job.model.tokenizer);

    parse_backend(section(root, file, "backend"), job);

    parse_parallel(section(root, file, "parallel"), job);
    parse_run(section(root, file, "run"), job);
    parse_launch(section(root, file, "launch"), job);
    parse_slurm(section(root, file, "slurm"), job);
    parse_serve(section(root, file, "serve"), job);
    parse_bench(section(root, file, "bench"), job);
    parse_transforms(root, job);
    check_job_files(job, [&](const char* sec, const char* key) {
        const toml::node* n = root.at_path(std::string(sec) + "." + key).node();
        return n ? std::make_pair((long)n->source().begin.line, (long)n->source().begin.column) : std::make_pair(0L, 0L);
    });
    return job;
}

}  // namespace tpx
