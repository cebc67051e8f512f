// Bad input of the kinds that end a process rather than a check (JSON nested past the stack, a
// TOML key of too many parts, a tokenizer id asking for more memory than there is, a FIFO where a
// file is read whole) and inputs named wrongly (a config's dtype, an output folder that is a file,
// quantized tensors without their config, weights stored as integers, a generation_config.json
// that is not JSON), each by running the real command: exit 2, the file and what is wrong; and a
// config.json past 64 KB, which converts.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "loader/checkpoint.h"
#include "process.h"

namespace fs = std::filesystem;
using tpx_test::run_process;
using tpx_test::tpx_bin;

namespace {

const std::string kTiny = std::string(TPX_SOURCE_DIR) + "/models/tiny";
const std::string kTinyText = std::string(TPX_SOURCE_DIR) + "/models/tiny-text";

tpx_test::ProcessResult run_tpx(const std::string& args, const std::string& stdin_text = "") {
    return run_process(tpx_bin("tpx") + " " + args, stdin_text);
}

void expect_refused(const tpx_test::ProcessResult& r, const std::vector<std::string>& needles) {
    EXPECT_EQ(r.exit_code, 2) << r.err;
    for (const std::string& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "missing '" << n << "' in: " << r.err;
}

std::string nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// A copy of `model` in a fresh folder, config.json changed by `edit`.
std::string model_copy(const std::string& model, const std::function<void(nlohmann::json&)>& edit = nullptr) {
    const std::string dir = tpx_test::temp_dir() + "/model";
    fs::copy(model, dir, fs::copy_options::recursive);
    if (edit) {
        nlohmann::json config = nlohmann::json::parse(tpx_test::read_text(dir + "/config.json"));
        edit(config);
        std::ofstream(dir + "/config.json") << config.dump(1);
    }
    return dir;
}

}  // namespace

TEST(BadInputs, DeeplyNestedJsonIsRefusedNotACrash) {
    // A safetensors header whose __metadata__ nests 100,000 levels.
    const std::string dir = tpx_test::temp_dir();
    const std::string header = "{\"__metadata__\": " + nested(100000) + "}";
    {
        std::ofstream st(dir + "/deep.safetensors", std::ios::binary);
        const uint64_t len = header.size();
        st.write(reinterpret_cast<const char*>(&len), 8);
        st << header;
    }
    expect_refused(run_tpx("inspect " + dir + "/deep.safetensors"), {"deep.safetensors", "nested deeper than 512 levels"});
    // A JSONL line for tpx tokenize, and config.json.
    expect_refused(run_tpx("tokenize " + kTinyText, "{\"ids\": " + nested(100000) + "}\n"), {"<stdin>:1", "nested deeper than 512 levels"});
    const std::string model = model_copy(kTiny, [](nlohmann::json& c) { c["num_hidden_layers"] = nlohmann::json::parse(nested(600)); });
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << model << "\"\n";
    expect_refused(run_tpx("plan " + dir + "/job.toml"), {model + "/config.json", "nested deeper than 512 levels"});
    // 500 levels are read, and the value named.
    const std::string ok = model_copy(kTiny, [](nlohmann::json& c) { c["num_hidden_layers"] = nlohmann::json::parse(nested(500)); });
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << ok << "\"\n";
    const auto r = run_tpx("plan " + dir + "/job.toml");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(r.err.find("nested deeper"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("num_hidden_layers"), std::string::npos) << r.err;
    fs::remove_all(dir);
    fs::remove_all(fs::path(model).parent_path());
    fs::remove_all(fs::path(ok).parent_path());
}

TEST(BadInputs, TomlKeysOfTooManyPartsAreRefusedAndDotsElsewhereAreNot) {
    const std::string dir = tpx_test::temp_dir();
    auto key_of = [](int parts) {
        std::string key = "a";
        for (int i = 1; i < parts; ++i) key += ".a";
        return key;
    };
    std::ofstream(dir + "/key.toml") << "[job]\nname = \"x\"\n" << key_of(60000) << " = 1\n";
    expect_refused(run_tpx("validate " + dir + "/key.toml"), {"key.toml:3:", "a dotted key or table header of more than 64 parts"});
    std::ofstream(dir + "/header.toml") << "[" << key_of(60000) << "]\n";
    expect_refused(run_tpx("validate " + dir + "/header.toml"), {"header.toml:1:", "more than 64 parts"});
    // 64 parts reach TOML++ (and the job's key check), 65 do not.
    std::ofstream(dir + "/edge.toml") << "[job]\n" << key_of(64) << " = 1\n";
    auto r = run_tpx("validate " + dir + "/edge.toml");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("unknown key 'a' in [job]"), std::string::npos) << r.err;
    std::ofstream(dir + "/edge.toml") << "[job]\n" << key_of(65) << " = 1\n";
    expect_refused(run_tpx("validate " + dir + "/edge.toml"), {"edge.toml:2:", "more than 64 parts"});
    // Valid TOML whose dots are in quoted keys, strings (with escapes, '#', extra closing quotes)
    // and comments, with CRLF line ends: the scanner passes it, the job's key check refuses it.
    const std::string d70(70, '.');
    std::ofstream(dir + "/tricky.toml") << "[job]\r\n\"" << d70 << "\".x = 1 # " << d70 << "\r\ny = \"\\\\\" # " << d70 << "\r\n"
                                        << "z = \"\"\"" << d70 << "\r\n" << d70 << "\"\"\"\"\"\r\nw = '''" << d70 << "'''''\r\nv = '#" << d70
                                        << "'\r\n";
    r = run_tpx("validate " + dir + "/tricky.toml");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(r.err.find("parts"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("unknown key"), std::string::npos) << r.err;
    // Dots in comments, strings (escaped quotes, multi-line, literal) and numbers are not a key's.
    const std::string dots(200, '.');
    std::ofstream(dir + "/fine.toml") << "# " << dots << "\n[job]\nname = \"a\\\"" << dots << "\"  # " << dots << "\n[model]\npath = \"" << kTiny
                                      << "\"\n[run]\nmax_new_tokens = 4\n[run.sampling]\ntemperature = 0.5\n"
                                      << "[launch]\nextra_args = [\"\"\"" << dots << "\n" << dots << "\"\"\", '" << dots << "', '''" << dots
                                      << "''']\n";
    r = run_tpx("validate " + dir + "/fine.toml");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    fs::remove_all(dir);
}

TEST(BadInputs, TokenizerIdsFarPastTheVocabularyAreRefused) {
    const std::string model = model_copy(kTinyText);
    nlohmann::json tok = nlohmann::json::parse(tpx_test::read_text(model + "/tokenizer.json"));
    const std::string first = tok["model"]["vocab"].begin().key();
    nlohmann::json far = tok;
    far["model"]["vocab"][first] = 10000000;  // a table of 10^7 entries for 3,000 tokens
    std::ofstream(model + "/tokenizer.json") << far.dump();
    expect_refused(run_tpx("tokenize " + model, "{\"text\": \"hi\"}\n"), {"tokenizer.json", "has id 10000000, far past the vocabulary's"});
    fs::remove_all(fs::path(model).parent_path());
}

TEST(BadInputs, AConfigPast64KBConvertsToHdf5) {
    // HF configs of classifiers carry id2label maps: 5,000 labels is about 100 KB, past what an
    // HDF5 attribute held in the object's header takes.
    const std::string model = model_copy(kTiny, [](nlohmann::json& c) {
        for (int i = 0; i < 5000; ++i) c["id2label"][std::to_string(i)] = "LABEL_" + std::to_string(i);
    });
    const std::string h5 = fs::path(model).parent_path().string() + "/big.h5";
    const auto r = run_tpx("convert " + model + " " + h5);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto source = tpx::Checkpoint::open(model), converted = tpx::Checkpoint::open(h5);
    EXPECT_GT(source->config_json().size(), 64u * 1024);
    EXPECT_EQ(converted->config_json(), source->config_json());
    EXPECT_EQ(converted->tensors().size(), source->tensors().size());
    // Only the root group takes the 1.8 format: the tensors' group keeps the earliest one, whose
    // links are listed by index in linear time (1.8's dense groups took quadratic time to open).
    const hid_t file = H5Fopen(h5.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    const hid_t group = H5Gopen2(file, "tensors", H5P_DEFAULT);
    H5G_info_t info{};
    ASSERT_GE(H5Gget_info(group, &info), 0);
    EXPECT_EQ(info.storage_type, H5G_STORAGE_TYPE_SYMBOL_TABLE);
    H5Gclose(group);
    H5Fclose(file);
    fs::remove_all(fs::path(model).parent_path());
}

TEST(BadInputs, WrongKindsOfPathAreNamed) {
    const std::string dir = tpx_test::temp_dir();
    // An output whose folder is a file.
    std::ofstream(dir + "/afile") << "x";
    expect_refused(run_tpx("convert " + kTiny + " " + dir + "/afile/out.h5"), {dir + "/afile is not a folder"});
    std::ofstream(dir + "/run.toml") << "[model]\npath = \"" << kTiny << "\"\n[run]\noutput = \"afile/out.jsonl\"\n";
    expect_refused(run_tpx("validate " + dir + "/run.toml"), {"run.output: " + dir + "/afile is not a folder"});
    // A FIFO as --chat-template is refused, not read.
    ASSERT_EQ(mkfifo((dir + "/fifo").c_str(), 0600), 0);
    const auto r = run_process("timeout 20 " + tpx_bin("tpx") + " tokenize " + kTinyText + " --chat-template " + dir + "/fifo",
                               "{\"text\": \"hi\"}\n");
    expect_refused(r, {"--chat-template " + dir + "/fifo: not a regular file"});
    EXPECT_LT(r.seconds, 10.0);
    // A config whose dtype is no float dtype, named with its file and key.
    const std::string model = model_copy(kTiny, [](nlohmann::json& c) { c["dtype"] = "int8"; });
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << model << "\"\n";
    expect_refused(run_tpx("plan " + dir + "/job.toml"), {model + "/config.json", "\"dtype\" holds \"int8\""});
    fs::remove_all(dir);
    fs::remove_all(fs::path(model).parent_path());
}

TEST(BadInputs, WhatACheckpointLacksIsSaid) {
    const std::string dir = tpx_test::temp_dir();
    // GPTQ's tensors under a config.json without quantization_config: the weight's absence is
    // explained by its qweight.
    const std::string gptq = model_copy(std::string(TPX_TEST_DATA) + "/golden/gptq-llama",
                                        [](nlohmann::json& c) { c.erase("quantization_config"); });
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << gptq << "\"\n";
    expect_refused(run_tpx("plan " + dir + "/job.toml"),
                   {"q_proj.weight'", "q_proj.qweight is: a GPTQ checkpoint whose config.json has no quantization_config"});
    // An index whose weight_map is empty converts to nothing: refused.
    const std::string empty = dir + "/empty";
    fs::create_directory(empty);
    fs::copy_file(kTiny + "/config.json", empty + "/config.json");
    std::ofstream(empty + "/model.safetensors.index.json") << "{\"metadata\": {}, \"weight_map\": {}}";
    expect_refused(run_tpx("convert " + empty + " " + dir + "/out.h5"), {"holds no tensors"});
    EXPECT_FALSE(fs::exists(dir + "/out.h5"));
    // A weight stored as integers (its header's dtype I16, its size unchanged): refused by the
    // plan, as by the ranks.
    const std::string ints = model_copy(kTiny);
    std::string bytes = tpx_test::read_text(ints + "/model.safetensors");
    const size_t at = bytes.find("\"BF16\"");
    ASSERT_NE(at, std::string::npos);
    bytes.replace(at, 6, "\"I16\" ");
    std::ofstream(ints + "/model.safetensors", std::ios::binary) << bytes;
    std::ofstream(dir + "/job.toml") << "[model]\npath = \"" << ints << "\"\n";
    expect_refused(run_tpx("plan " + dir + "/job.toml"), {"model.safetensors: tensor '", "' is I16, where config.json implies a float weight"});
    // And a generation_config.json that is not JSON (the plan passed it too).
    fs::copy_file(kTiny + "/model.safetensors", ints + "/model.safetensors", fs::copy_options::overwrite_existing);
    std::ofstream(ints + "/generation_config.json") << "{oops";
    expect_refused(run_tpx("plan " + dir + "/job.toml"), {ints + "/generation_config.json: not valid JSON"});
    fs::remove_all(fs::path(ints).parent_path());
    fs::remove_all(dir);
    fs::remove_all(fs::path(gptq).parent_path());
}
