// tpx-tokbench: times tpx's tokenizer, single-threaded, on a deterministic ~10 MB mixed-script
// text, and writes that text so that bench/tokenizer_bench.mjs times HF's tokenizers on the same.
// usage: tpx-tokbench TOKENIZER_PATH TEXT_OUT [MB]
// The text is cut into 64 KiB chunks at line ends; both sides encode and decode chunk by chunk.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "tokenizer/tokenizer.h"

namespace {

// Words of several scripts; a seeded generator strings them into lines of prose, code and numbers.
const char* kWords[] = {
    "the", "model", "runs", "across", "GPUs", "and", "nodes", "with", "tensor", "parallel", "shards", "It's", "don't",
    "Hello", "world", "CamelCaseName", "HTTPServer", "über", "naïve", "façade", "Grüße", "éléphant", "año",
    "Привет", "мир", "данные", "модель", "Ελληνικά", "λόγος", "日本語", "のテキスト", "漢字", "東京", "中文", "测试",
    "数据", "模型", "한국어", "텍스트", "عربى", "مرحبا", "שלום", "हिन्दी", "पाठ", "ภาษาไทย", "🤖", "🚀", "👍🏽",
    "👨‍👩‍👧‍👦", "🇫🇷", "x²", "∑", "→", "—", "“quoted”", "(a,", "b)", "{x:", "1}", "i++;", "return", "0x1F",
    "3.14159", "2026", "12345678", "50%", "$100", "#tag", "@user", "https://example.org/a?b=c", "a**b", "<div>",
};

uint64_t next(uint64_t& s) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

std::string make_text(size_t bytes) {
    std::string text;
    text.reserve(bytes + 1024);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    const size_t n = sizeof kWords / sizeof kWords[0];
    while (text.size() < bytes) {
        size_t words = 5 + next(s) % 30;
        for (size_t w = 0; w < words; ++w) {
            text += kWords[next(s) % n];
            uint64_t sep = next(s) % 20;
            text += sep == 0 ? ", " : sep == 1 ? ". " : sep == 2 ? "  " : sep == 3 ? "\t" : " ";
        }
        text += next(s) % 4 == 0 ? "\n\n" : "\n";
    }
    return text;
}

std::vector<std::string> chunks_of(const std::string& text, size_t size) {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t end = std::min(text.size(), pos + size);
        size_t nl = text.find('\n', end);
        end = nl == std::string::npos ? text.size() : nl + 1;
        out.push_back(text.substr(pos, end - pos));
        pos = end;
    }
    return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: tpx-tokbench TOKENIZER_PATH TEXT_OUT [MB]\n");
        return 2;
    }
    try {
        double mb = argc > 3 ? std::atof(argv[3]) : 10.0;
        std::string text = make_text(static_cast<size_t>(mb * 1e6));
        std::ofstream(argv[2], std::ios::binary) << text;
        std::vector<std::string> chunks = chunks_of(text, 64 * 1024);
        auto t0 = std::chrono::steady_clock::now();
        tpx::Tokenizer tok = tpx::Tokenizer::load(argv[1]);
        double load = seconds_since(t0);

        t0 = std::chrono::steady_clock::now();
        std::vector<std::vector<int32_t>> ids;
        size_t count = 0;
        for (const std::string& c : chunks) {
            ids.push_back(tok.encode(c, false));
            count += ids.back().size();
        }
        double enc = seconds_since(t0);
        t0 = std::chrono::steady_clock::now();
        size_t out_bytes = 0;
        for (const auto& v : ids) out_bytes += tok.decode(v, false).size();
        double dec = seconds_since(t0);
        double megabytes = text.size() / 1e6;
        std::printf("tpx: %.2f MB in %zu chunks, %zu tokens; load %.2f s; encode %.2f s = %.2f MB/s; decode %.2f s = %.2f MB/s"
                    " (%zu bytes back)\n",
                    megabytes, chunks.size(), count, load, enc, megabytes / enc, dec, megabytes / dec, out_bytes);
        return 0;
    } catch (const tpx::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return e.exit_code();
    }
}
