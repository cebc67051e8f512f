// Corrupt safetensors files, one per validation rule of the reference implementation
// (huggingface/safetensors): each is rejected with its own message naming the file, the tensor
// and the numbers, never a crash. Also the dtype conversions the reader relies on.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "loader/checkpoint.h"
#include "loader/safetensors.h"
#include "process.h"

using namespace tpx;

namespace {

std::string dir() {
    static std::string d = tpx_test::temp_dir();
    return d;
}

// A file: the 8-byte length (`declared` or the header's own), the header, then `data` bytes.
std::string make_file(const std::string& name, const std::string& header, size_t data, long long declared = -1) {
    std::string path = dir() + "/" + name + ".safetensors";
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    uint64_t n = declared < 0 ? header.size() : (uint64_t)declared;
    for (int i = 0; i < 8; ++i) out.put((char)(n >> (8 * i)));
    out << header << std::string(data, '\x01');
    return path;
}

std::string error_of(const std::string& path) {
    try {
        Checkpoint::open(path);
    } catch (const CheckpointError& e) {
        return e.what();
    }
    return "(accepted)";
}

struct Case {
    const char* name;
    std::string header;
    size_t data;
    long long declared;
    const char* expect;
};

}  // namespace

TEST(Safetensors, CorruptFilesAreRejectedEachWithItsOwnMessage) {
    const std::string a = R"("a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]})";
    const std::vector<Case> cases = {
        {"short", "", 0, -2, "bytes, shorter than the 8-byte header length"},
        {"huge_header", "{}", 0, 100000001, "header length 100000001 exceeds the limit of 100000000"},
        {"header_past_end", "{}", 0, 4096, "header length 4096 runs past the end of the 10-byte file"},
        {"not_utf8", "{\"\xff\xfe\": {}}", 0, -1, "header is not valid UTF-8 (bad byte at header offset 2)"},
        {"not_json", "{\"a\": {\"dtype\": \"F32\",", 0, -1, "header is not valid JSON"},
        {"not_object", "[1, 2, 3]", 0, -1, "header does not start with '{'"},
        {"empty_header", "{}", 0, -1, "(accepted)"},
        {"unknown_dtype", R"({"a": {"dtype": "F12", "shape": [2], "data_offsets": [0, 3]}})", 3, -1,
         "tensor 'a': unknown dtype \"F12\""},
        {"gap", "{" + a + R"(, "b": {"dtype": "F32", "shape": [1], "data_offsets": [20, 24]}})", 24, -1,
         "tensor 'b': data_offsets begin at 20 but 'a' ends at 16 (a gap)"},
        {"overlap", "{" + a + R"(, "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})", 20, -1,
         "tensor 'b': data_offsets begin at 12 but 'a' ends at 16 (an overlap)"},
        {"not_from_zero", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8, -1,
         "tensor 'a': data_offsets begin at 4 but (start of data) ends at 0"},
        {"end_before_begin", R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8, -1,
         "tensor 'a': data_offsets [8, 4] end before begin"},
        {"size_mismatch", R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}})", 16, -1,
         "tensor 'a': shape [2, 3] x F32 = 24 bytes, but data_offsets [0, 16] span 16"},
        {"overflow", R"({"a": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}})", 16, -1,
         "tensor 'a': shape [4294967296, 4294967296] x F64 overflows 64 bits"},
        {"trailing", "{" + a + "}", 20, -1, "(trailing bytes)"},
        {"truncated", "{" + a + "}", 10, -1, "(truncated)"},
        {"duplicate", "{" + a + ", " + a + "}", 16, -1, "tensor 'a' appears twice in the header"},
        {"offsets_shape", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4, -1,
         "tensor 'a': data_offsets is [0], not [begin, end]"},
        {"negative_dim", R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4, -1,
         "tensor 'a': shape holds -1, not a non-negative integer"},
        {"dim_past_int64", R"({"a": {"dtype": "F32", "shape": [18446744073709551615, 0], "data_offsets": [0, 0]}})", 0, -1,
         "tensor 'a': shape holds 18446744073709551615, larger than 2^63 - 1"},  // 0 bytes: the size check alone passes it
        {"metadata_value", R"({"__metadata__": {"format": 1}})", 0, -1, "__metadata__ key 'format' holds 1, not a string"},
        {"missing_dtype", R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", 4, -1, "tensor 'a': header entry lacks 'dtype'"},
        {"entry_not_object", R"({"a": 5})", 0, -1, "tensor 'a': header entry is 5, not an object"},
    };
    int rejected = 0;
    for (const Case& c : cases) {
        std::string path = c.declared == -2 ? dir() + "/short.safetensors" : make_file(c.name, c.header, c.data, c.declared);
        if (c.declared == -2) std::ofstream(path, std::ios::binary) << "abc";
        std::string e = error_of(path);
        EXPECT_NE(e.find(c.expect), std::string::npos) << c.name << ": " << e;
        if (std::string(c.expect) != "(accepted)") {
            EXPECT_EQ(e.rfind(path + ": ", 0), 0u) << c.name << " message must start with the file: " << e;
            ++rejected;
        }
    }
    EXPECT_GE(rejected, 15);
}

TEST(Safetensors, WriterOutputIsValidAndPadded) {
    std::vector<float> x = {1, 2, 3, 4, 5, 6};
    std::vector<uint16_t> y = {f32_to_bf16(1.5f), f32_to_bf16(-2.25f)};
    std::string path = dir() + "/written.safetensors";
    write_safetensors(path, {{"x", DType::kF32, {2, 3}, x.data()}, {"y", DType::kBF16, {2}, y.data()}}, {{"format", "pt"}});
    SafetensorsHeader h = read_safetensors_header(path);
    EXPECT_EQ(h.header_len % 8, 0u);
    EXPECT_EQ(h.metadata.at("format"), "pt");
    ASSERT_EQ(h.tensors.size(), 2u);
    auto c = Checkpoint::open(path);
    std::vector<float> back(2);
    c->read("y", Slice::whole(), DType::kF32, back.data());
    EXPECT_EQ(back, (std::vector<float>{1.5f, -2.25f}));
}

TEST(DType, ConversionsRoundToNearestEvenAndKeepSpecials) {
    // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
    EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
    EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(INFINITY)), INFINITY);
    // f16: exact values, the largest finite, overflow to infinity, subnormals.
    EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
    EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
    EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
    EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
    EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
    EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
    // Every f16 and bf16 bit pattern survives a trip through f32 (NaNs stay NaN).
    for (uint32_t h = 0; h < 65536; ++h) {
        float f = f16_to_f32((uint16_t)h);
        if (std::isnan(f)) continue;
        ASSERT_EQ(f32_to_f16(f), h) << h;
        float b = bf16_to_f32((uint16_t)h);
        if (!std::isnan(b)) {
            ASSERT_EQ(f32_to_bf16(b), h) << h;
        }
    }
    // Random f32 values: the bf16 rounding error is at most half an ulp: 8 significant bits, so
    // 2^(e-8) for 2^e <= |x|, i.e. at most |x| * 2^-8.
    std::mt19937 rng(3);
    for (int i = 0; i < 10000; ++i) {
        float x = std::uniform_real_distribution<float>(-100, 100)(rng);
        EXPECT_LE(std::fabs(bf16_to_f32(f32_to_bf16(x)) - x), std::fabs(x) * std::ldexp(1.0f, -8));
    }
}
