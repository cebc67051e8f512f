// config.json's quantization_config: what tpx can run read and checked (QuantConfig), anything
// else refused by key and value before any tensor is looked at; integers that do not fit, or
// whose group or block counts would overflow, refused rather than wrapped.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "common/json_object.h"
#include "loader/checkpoint_error.h"
#include "loader/quantized.h"

namespace tpx {
namespace {

using json = nlohmann::json;
using Method = QuantConfig::Method;

[[noreturn]] void fail(const std::string& where, const std::string& message) { throw CheckpointError(where + ": " + message); }

const json* key(const json& j, const char* k) {  // null counts as absent
    auto it = j.find(k);
    return it == j.end() || it->is_null() ? nullptr : &*it;
}

}  // namespace

std::string QuantConfig::describe() const {
    if (method == Method::kGptq)
        return "gptq int" + std::to_string(bits) + ", group " + std::to_string(group_size) + (desc_act ? ", act-order" : "") +
               (sym ? ", symmetric" : ", asymmetric") + ", format " + (v2 ? "gptq_v2" : "gptq");
    if (method == Method::kFp8) return "fp8 e4m3, " + std::to_string(block_out) + "x" + std::to_string(block_in) + " blocks, dynamic activations";
    return "not quantized";
}

QuantConfig parse_quant_config(const std::string& text, const std::string& file) {
    QuantConfig q;
    if (text.empty()) return q;  // no config.json (a lone .safetensors or .h5 file)
    const json j = parse_json_object(text, file, fail);
    const json* qc = key(j, "quantization_config");
    if (!qc) return q;
    const std::string where = file + ": quantization_config";
    if (!qc->is_object()) fail(where, "is " + qc->dump() + ", not an object");
    // A group or block size beyond this is no tensor's (and would overflow the arithmetic on it).
    constexpr int64_t kMaxSize = INT32_MAX;
    auto integer = [&](const std::string& what, const json& v) {
        if (!v.is_number_integer()) fail(where, what + " is " + v.dump() + ", not an integer");
        if (!fits_int64(v)) fail(where, what + " = " + v.dump() + " is out of range");
        return v.get<int64_t>();
    };
    auto get_int = [&](const char* k, int64_t fallback) {
        const json* v = key(*qc, k);
        return v ? integer(std::string("\"") + k + "\"", *v) : fallback;
    };
    auto get_bool = [&](const char* k, bool fallback) {
        const json* v = key(*qc, k);
        if (!v) return fallback;
        if (!v->is_boolean()) fail(where, std::string("\"") + k + "\" is " + v->dump() + ", not true or false");
        return v->get<bool>();
    };
    auto get_string = [&](const char* k, const std::string& fallback) {
        const json* v = key(*qc, k);
        if (!v) return fallback;
        if (!v->is_string()) fail(where, std::string("\"") + k + "\" is " + v->dump() + ", not a string");
        return v->get<std::string>();
    };
    const std::string method = get_string("quant_method", "");
    if (method == "gptq") {
        q.method = Method::kGptq;
        const int64_t bits = get_int("bits", 4);
        if (bits != 4) fail(where, "\"bits\" = " + std::to_string(bits) + " is not supported (GPTQ: 4 bits only)");
        q.bits = 4;
        q.group_size = get_int("group_size", 128);
        if (q.group_size == 0 || q.group_size < -1)
            fail(where, "\"group_size\" = " + std::to_string(q.group_size) + " must be positive or -1 (one group)");
        if (q.group_size > kMaxSize)
            fail(where, "\"group_size\" = " + std::to_string(q.group_size) + " is larger than " + std::to_string(kMaxSize) +
                            " (-1: one group over the whole input)");
        q.desc_act = get_bool("desc_act", false);
        q.sym = get_bool("sym", true);
        const std::string format = get_string("checkpoint_format", "gptq");
        if (format != "gptq" && format != "gptq_v2")
            fail(where, "\"checkpoint_format\" \"" + format + "\" is not supported (supported: \"gptq\", \"gptq_v2\")");
        q.v2 = format == "gptq_v2";
    } else if (method == "fp8") {
        q.method = Method::kFp8;
        const std::string scheme = get_string("activation_scheme", "dynamic");
        if (scheme != "dynamic")
            fail(where, "\"activation_scheme\" \"" + scheme + "\" is not supported (static activation scales; supported: \"dynamic\")");
        if (const json* b = key(*qc, "weight_block_size")) {
            if (!b->is_array() || b->size() != 2 || !(*b)[0].is_number_integer() || !(*b)[1].is_number_integer())
                fail(where, "\"weight_block_size\" is " + b->dump() + ", not [rows, columns] of two positive integers");
            q.block_out = integer("\"weight_block_size\"[0]", (*b)[0]), q.block_in = integer("\"weight_block_size\"[1]", (*b)[1]);
            if (q.block_out <= 0 || q.block_in <= 0)
                fail(where, "\"weight_block_size\" is " + b->dump() + ", not [rows, columns] of two positive integers");
            if (q.block_out > kMaxSize || q.block_in > kMaxSize)
                fail(where, "\"weight_block_size\" is " + b->dump() + ": a block side larger than " + std::to_string(kMaxSize));
        }
        if (const json* m = key(*qc, "modules_to_not_convert")) {  // which modules stay unquantized: tpx reads that from the tensors
            bool names = m->is_array();
            for (const json& n : names ? *m : json::array()) names = names && n.is_string();
            if (!names) fail(where, "\"modules_to_not_convert\" is " + m->dump() + ", not a list of module names");
        }
    } else {
        const json* m = key(*qc, "quant_method");
        fail(where, (m ? "\"quant_method\" " + m->dump() + " is not supported" : std::string("has no \"quant_method\"")) +
                        " (supported: \"gptq\" with 4 bits, \"fp8\" with weight_block_size and dynamic activations)");
    }
    return q;
}

}  // namespace tpx
