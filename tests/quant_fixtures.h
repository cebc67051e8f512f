// Quantized checkpoints made in the tests, with the rules of /work/shared/golden/make_refs.py
// (gptq_quant, fp8_quant), from llama-gqa's bf16 weights: the packed checkpoint and, as the
// reference, the same model with the dequantized weights written as plain F32 tensors (the
// very numbers the packed ones mean, computed here from the unpacked q, zeros and scales).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "loader/checkpoint.h"
#include "loader/dequant.h"
#include "process.h"

namespace tpx_test {

using namespace tpx;

struct GptqOptions {
    int64_t group = 32;  // -1: one group
    bool desc_act = false, sym = true, v2 = false;
    uint32_t seed = 1;
};

// One linear quantized: the packed tensors and the dequantized [out, in] weight they mean.
struct GptqLinear {
    std::vector<int32_t> qweight, qzeros, g_idx;
    std::vector<uint16_t> scales;  // f16
    std::vector<float> deq;        // [out, in]
    int64_t groups = 0;
};

// w [out, in] -> GPTQ int4 as make_refs.py's gptq_quant (act-order: g_idx from a random
// permutation; asymmetric: zero = round(-min / scale) per group and output). The v1 format
// stores zero - 1 in 4 bits and reads it back as stored + 1, so it cannot hold zero 0: v1
// zeros are clamped to [1, 15] here.
inline GptqLinear gptq_quantize(const std::vector<float>& w, int64_t out, int64_t in, const GptqOptions& o) {
    GptqLinear r;
    const int64_t group = o.group > 0 ? o.group : in;
    r.groups = (in + group - 1) / group;
    r.g_idx.resize(in);
    std::vector<int64_t> perm(in);
    for (int64_t i = 0; i < in; ++i) perm[i] = i;
    if (o.desc_act) std::shuffle(perm.begin(), perm.end(), std::mt19937(o.seed));
    for (int64_t k = 0; k < in; ++k) r.g_idx[perm[k]] = (int32_t)(k / group);
    std::vector<float> scale(r.groups * out);
    std::vector<int> zero(r.groups * out);
    for (int64_t g = 0; g < r.groups; ++g)
        for (int64_t j = 0; j < out; ++j) {
            float lo = INFINITY, hi = -INFINITY, amax = 0;
            for (int64_t i = 0; i < in; ++i)
                if (r.g_idx[i] == g) {
                    float v = w[j * in + i];
                    lo = std::min(lo, v), hi = std::max(hi, v), amax = std::max(amax, std::fabs(v));
                }
            float s;
            int z;
            if (o.sym) {
                s = std::max(amax / 7.5f, 1e-8f), z = 8;
            } else {
                s = std::max((hi - lo) / 15.0f, 1e-8f);
                z = (int)std::clamp(std::nearbyint(-lo / s), o.v2 ? 0.0f : 1.0f, 15.0f);
            }
            scale[g * out + j] = f16_to_f32(f32_to_f16(s));  // the scale as the checkpoint holds it
            zero[g * out + j] = z;
        }
    r.deq.resize(out * in);
    r.qweight.assign(in / 8 * out, 0);
    for (int64_t j = 0; j < out; ++j)
        for (int64_t i = 0; i < in; ++i) {
            const int64_t g = r.g_idx[i];
            const float s = scale[g * out + j];
            const int z = zero[g * out + j];
            const int q = (int)std::clamp(std::nearbyint(w[j * in + i] / s) + z, 0.0f, 15.0f);
            r.deq[j * in + i] = s * (float)(q - z);
            reinterpret_cast<uint32_t&>(r.qweight[(i / 8) * out + j]) |= (uint32_t)q << (4 * (i % 8));
        }
    const int64_t zcols = (out + 7) / 8;
    r.qzeros.assign(r.groups * zcols, 0);
    r.scales.resize(r.groups * out);
    for (int64_t g = 0; g < r.groups; ++g)
        for (int64_t j = 0; j < out; ++j) {
            const uint32_t stored = (uint32_t)(o.v2 ? zero[g * out + j] : zero[g * out + j] - 1) & 0xf;
            reinterpret_cast<uint32_t&>(r.qzeros[g * zcols + j / 8]) |= stored << (4 * (j % 8));
            r.scales[g * out + j] = f32_to_f16(scale[g * out + j]);
        }
    return r;
}

struct Fp8Linear {
    std::vector<uint8_t> q;     // [out, in] float8_e4m3fn
    std::vector<float> scale;   // [ceil(out/128), ceil(in/128)]
    std::vector<float> deq;     // [out, in]
};

// w [out, in] -> fine-grained FP8 as make_refs.py's fp8_quant, with partial edge blocks (HF's
// FP8 linear sizes its scales with a ceiling).
inline Fp8Linear fp8_quantize(const std::vector<float>& w, int64_t out, int64_t in, int64_t block = 128) {
    Fp8Linear r;
    const int64_t bo = (out + block - 1) / block, bi = (in + block - 1) / block;
    r.scale.assign(bo * bi, 0);
    for (int64_t j = 0; j < out; ++j)
        for (int64_t i = 0; i < in; ++i) {
            float& s = r.scale[(j / block) * bi + i / block];
            s = std::max(s, std::fabs(w[j * in + i]));
        }
    for (float& s : r.scale) s = std::max(s, 1e-12f) / 448.0f;
    r.q.resize(out * in), r.deq.resize(out * in);
    for (int64_t j = 0; j < out; ++j)
        for (int64_t i = 0; i < in; ++i) {
            const float s = r.scale[(j / block) * bi + i / block];
            r.q[j * in + i] = f32_to_fp8_e4m3(w[j * in + i] / s);
            r.deq[j * in + i] = fp8_e4m3_to_f32(r.q[j * in + i]) * s;
        }
    return r;
}

// Tensors to write, owning their bytes.
struct TensorSet {
    std::vector<std::vector<char>> bytes;
    std::vector<TensorData> list;
    template <typename T>
    void add(const std::string& name, DType dtype, std::vector<int64_t> shape, const std::vector<T>& v) {
        bytes.emplace_back(reinterpret_cast<const char*>(v.data()), reinterpret_cast<const char*>(v.data() + v.size()));
        list.push_back({name, dtype, std::move(shape), nullptr});
    }
    void write(const std::string& file) {
        for (size_t i = 0; i < list.size(); ++i) list[i].data = bytes[i].data();
        write_safetensors(file, list);
    }
};

enum class QuantKind { kGptq, kFp8 };

// llama-gqa's every *_proj.weight quantized into `dir` (config.json with quantization_config)
// and dequantized into `ref_dir` (plain F32); the other tensors as they are (bf16) in both.
// `tie` drops lm_head.weight and sets tie_word_embeddings in both.
inline void write_quantized_llama(const std::string& dir, const std::string& ref_dir, QuantKind kind, const GptqOptions& o,
                                  bool tie = false) {
    const std::string src = std::string(TPX_TEST_DATA) + "/golden/llama-gqa";
    auto c = Checkpoint::open(src);
    TensorSet quant, ref;
    uint32_t seed = o.seed;
    for (const TensorInfo& t : c->tensors()) {
        if (tie && t.name == "lm_head.weight") continue;
        const bool linear = t.shape.size() == 2 && t.name.find(".layers.") != std::string::npos &&
                            t.name.size() > 11 && t.name.compare(t.name.size() - 11, 11, "proj.weight") == 0;
        if (!linear) {
            std::vector<uint16_t> v(t.numel());
            c->read(t.name, Slice::whole(), DType::kBF16, v.data());
            quant.add(t.name, DType::kBF16, t.shape, v);
            ref.add(t.name, DType::kBF16, t.shape, v);
            continue;
        }
        std::vector<float> w(t.numel());
        c->read(t.name, Slice::whole(), DType::kF32, w.data());
        const int64_t out = t.shape[0], in = t.shape[1];
        const std::string base = t.name.substr(0, t.name.size() - 7);  // without ".weight"
        if (kind == QuantKind::kGptq) {
            GptqOptions each = o;
            each.seed = seed++;
            GptqLinear g = gptq_quantize(w, out, in, each);
            quant.add(base + ".qweight", DType::kI32, {in / 8, out}, g.qweight);
            quant.add(base + ".qzeros", DType::kI32, {g.groups, (out + 7) / 8}, g.qzeros);
            quant.add(base + ".scales", DType::kF16, {g.groups, out}, g.scales);
            quant.add(base + ".g_idx", DType::kI32, {in}, g.g_idx);
            ref.add(t.name, DType::kF32, t.shape, g.deq);
        } else {
            Fp8Linear f = fp8_quantize(w, out, in);
            quant.add(t.name, DType::kF8E4M3, t.shape, f.q);
            quant.add(base + ".weight_scale_inv", DType::kF32, {(out + 127) / 128, (in + 127) / 128}, f.scale);
            ref.add(t.name, DType::kF32, t.shape, f.deq);
        }
    }
    quant.write(dir + "/model.safetensors");
    ref.write(ref_dir + "/model.safetensors");
    nlohmann::json config = nlohmann::json::parse(c->config_json());
    if (tie) config["tie_word_embeddings"] = true;
    std::ofstream(ref_dir + "/config.json") << config.dump(2);
    if (kind == QuantKind::kGptq)
        config["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", o.group}, {"desc_act", o.desc_act},
                                         {"sym", o.sym}, {"checkpoint_format", o.v2 ? "gptq_v2" : "gptq"}};
    else
        config["quantization_config"] = {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {128, 128}},
                                         {"modules_to_not_convert", {"lm_head"}}};
    std::ofstream(dir + "/config.json") << config.dump(2);
    for (const std::string& d : {dir, ref_dir}) std::ofstream(d + "/generation_config.json") << read_text(src + "/generation_config.json");
}

}  // namespace tpx_test
