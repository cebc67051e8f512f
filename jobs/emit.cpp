// Writing a resolved job as TOML, section by section in schema order. Numbers and booleans are
// formatted by TOML++; strings are written here as basic strings with every control character
// escaped, so that each reads back exactly as written (TOML++'s multi-line literals lose a
// leading newline: TOML drops a newline right after the opening quotes).
#include "jobs/emit.h"

#include <cstdio>
#include <sstream>

#include <toml++/toml.h>

namespace tpx {
namespace {

// A TOML basic string: "..." with \\, \" and every control character (and DEL) escaped.
std::string quote_toml(const std::string& v) {
    std::string out = "\"";
    for (unsigned char c : v) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\t': out += "\\t"; break;
        case '\r': out += "\\r"; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04X", c);
                out += buf;
            } else {
                out += (char)c;
            }
        }
    }
    return out + "\"";
}

template <typename T>
std::string fmt(const T& v) {
    if constexpr (std::is_same_v<T, std::string>) {
        return quote_toml(v);
    } else {
        std::ostringstream os;
        os << toml::value<T>(v);
        return os.str();
    }
}

std::string fmt_list(const std::vector<std::string>& items) {
    std::string out = "[";
    for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : " ") + quote_toml(items[i]);
    return out + (items.empty() ? "]" : " ]");
}

std::string fmt_ids(const std::vector<int64_t>& ids) {
    toml::array a;
    for (int64_t id : ids) a.push_back(id);
    std::ostringstream os;
    os << a;
    return os.str();
}

std::string fmt_option(const OptionValue& o) {
    return std::visit([](const auto& v) { return fmt(v); }, o.value);
}

// [backend.tuning], every key.
void emit_tuning(std::ostream& os, const KernelConfig& k) {
    auto kv = [&](const char* key, const std::string& value) { os << key << " = " << value << "\n"; };
    os << "\n[backend.tuning]\n";
    kv("pdl", fmt(k.pdl));
    kv("gemv_early", fmt(k.gemv_early));
    kv("gemv_splitk", fmt<int64_t>(k.gemv_splitk));
    kv("gemv_balance", fmt(k.gemv_balance));
    kv("sum_wide", fmt(k.sum_wide));
    kv("gemv_mma", fmt(k.gemv_mma));
    kv("batch_gemm", fmt(k.batch_gemm));
    kv("attention_early", fmt(k.attention_early));
    kv("decode_splits", fmt<int64_t>(k.decode_splits));
    kv("attention_gqa", fmt(k.attention_gqa));
    kv("attention_one_pass", fmt(k.attention_one_pass));
    kv("attention_rope", fmt(k.attention_rope));
    kv("attention_mma", fmt(k.attention_mma));
    kv("flash_tile", fmt(k.flash_tile));
    kv("flash_short_max", fmt<int64_t>(k.flash_short_max));
    kv("gemm_tune", fmt(k.gemm_tune));
    kv("residual_epilogue", fmt(k.residual_epilogue));
    kv("quant_prefill", fmt(k.quant_prefill));
    kv("w8a8_fused", fmt(k.w8a8_fused));
    kv("quant_gemv_tokens", fmt<int64_t>(k.quant_gemv_tokens));
    kv("quant_mma", fmt(k.quant_mma));
    kv("quant_ring", fmt(k.quant_ring));
    kv("moe", fmt(k.moe));
    kv("oneshot", fmt(k.oneshot));
    kv("fused_all_reduce", fmt(k.fused_all_reduce));
    kv("device_draws", fmt(k.device_draws));
    kv("profile", fmt(k.profile));
}

}  // namespace

std::string emit_job_toml(const Job& job, Secrets secrets) {
    std::ostringstream os;
    auto kv = [&](const char* key, const std::string& value) { os << key << " = " << value << "\n"; };
    os << "[job]\n";
    kv("name", fmt(job.name));
    os << "\n[model]\n";
    kv("path", fmt(job.model.path));
    kv("dtype", fmt(job.model.dtype));
    kv("rope_precision", fmt(job.model.rope_precision));
    kv("tokenizer", fmt(job.model.tokenizer));
    kv("allow_unused_weights", fmt(job.model.allow_unused_weights));
    kv("read_threads", fmt<int64_t>(job.model.read_threads));
    os << "\n[parallel]\n";
    kv("tp", fmt<int64_t>(job.parallel.tp));
    kv("ep", fmt<int64_t>(job.parallel.ep));
    kv("pp", fmt<int64_t>(job.parallel.pp));
    kv("pp_layers", fmt_ids(job.parallel.pp_layers));
    kv("micro_batches", fmt<int64_t>(job.parallel.micro_batches));
    kv("nodes", fmt<int64_t>(job.parallel.nodes));
    kv("ranks_per_node", fmt<int64_t>(job.parallel.ranks_per_node));
    os << "\n[backend]\n";
    kv("device", fmt(job.backend.device));
    kv("collective_timeout_s", fmt(job.backend.collective_timeout_s));
    kv("cuda_graphs", fmt(job.backend.cuda_graphs));
    emit_tuning(os, job.backend.tuning);
    os << "\n[run]\n";
    kv("prompts", fmt(job.run.prompts));
    kv("max_new_tokens", fmt<int64_t>(job.run.max_new_tokens));
    kv("eos", fmt_ids(job.run.eos));
    kv("output", fmt(job.run.output));
    kv("max_batch", fmt<int64_t>(job.run.max_batch));
    kv("max_seq_len", fmt<int64_t>(job.run.max_seq_len));
    kv("chat_template", fmt(job.run.chat_template));
    kv("stop", fmt_list(job.run.stop));
    os << "\n[run.sampling]\n";
    kv("temperature", fmt(job.run.sampling.temperature));
    kv("top_k", fmt<int64_t>(job.run.sampling.top_k));
    kv("top_p", fmt(job.run.sampling.top_p));
    kv("seed", fmt<int64_t>((int64_t)job.run.sampling.seed));
    kv("presence_penalty", fmt(job.run.sampling.presence_penalty));
    kv("frequency_penalty", fmt(job.run.sampling.frequency_penalty));
    kv("repetition_penalty", fmt(job.run.sampling.repetition_penalty));
    os << "\n[launch]\n";
    kv("mpirun", fmt(job.launch.mpirun));
    kv("extra_args", fmt_list(job.launch.extra_args));
    kv("hosts", fmt_list(job.launch.hosts));
    kv("hostfile", fmt(job.launch.hostfile));
    kv("interface", fmt(job.launch.interface));
    kv("rsh_agent", fmt(job.launch.rsh_agent));
    kv("env", fmt_list(job.launch.env));
    os << "\n[slurm]\n";
    kv("partition", fmt(job.slurm.partition));
    kv("account", fmt(job.slurm.account));
    kv("time", fmt(job.slurm.time));
    kv("nodes", fmt<int64_t>(job.slurm.nodes));
    kv("gpus_per_node", fmt<int64_t>(job.slurm.gpus_per_node));
    kv("launcher", fmt(job.slurm.launcher));
    kv("extra", fmt_list(job.slurm.extra));
    if (job.serve.present) {
        os << "\n[serve]\n";
        kv("host", fmt(job.serve.host));
        kv("port", fmt<int64_t>(job.serve.port));
        kv("model_name", fmt(job.serve.model_name));
        if (secrets == Secrets::kWritten || job.serve.api_key.empty())
            kv("api_key", fmt(job.serve.api_key));
        else  // a key the parser refuses: this output never serves without the key
            kv("api_key_withheld", fmt("set, " + std::to_string(job.serve.api_key.size()) + (job.serve.api_key.size() == 1 ? " character" : " characters") + ", not printed: write it as api_key"));
        kv("max_queue", fmt<int64_t>(job.serve.max_queue));
        kv("prefill_chunk", fmt<int64_t>(job.serve.prefill_chunk));
        kv("grace_s", fmt(job.serve.grace_s));
        kv("allow_refit", fmt(job.serve.allow_refit));
    }
    os << "\n[bench]\n";
    kv("prompt_lengths", fmt_ids(job.bench.prompt_lengths));
    kv("batch_sizes", fmt_ids(job.bench.batch_sizes));
    kv("decode_prompt_length", fmt<int64_t>(job.bench.decode_prompt_length));
    kv("decode_warmup", fmt<int64_t>(job.bench.decode_warmup));
    kv("decode_steps", fmt<int64_t>(job.bench.decode_steps));
    for (const TransformSection& t : job.transforms) {
        os << "\n[transforms." << t.name << "]\n";
        for (const auto& [key, value] : t.options) kv(key.c_str(), fmt_option(value));
    }
    return os.str();
}

}  // namespace tpx
