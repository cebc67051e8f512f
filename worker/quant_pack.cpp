// Packing a rank's quantized parameters for the GPU: FP8 rows copied as stored with their block
// scales; GPTQ words transposed per output feature into tiles of 16 features by one step
// (cpu::gptq_word), act-order positions sorted by group (each group padded to whole chunks), so
// that a chunk of the kernel has one scale.
#include "worker/quant_pack.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "common/error.h"
#include "loader/dtype.h"

namespace tpx {
namespace {

using Method = QuantConfig::Method;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

QuantParam pack_fp8(const std::string& name, int64_t N, int64_t K, const std::vector<QuantPiece>& pieces) {
    const PackedSlice* first = nullptr;
    for (const QuantPiece& p : pieces)
        if (p.slice && !first) first = p.slice;
    cpu::Fp8Layout l;
    l.N = N, l.K = K, l.block_in = first->block_in, l.in_offset = first->in_begin % first->block_in;
    if (K % cpu::kFp8Chunk || l.block_in % cpu::kFp8Chunk || l.in_offset % cpu::kFp8Chunk)
        throw Error("parameter " + name + ": FP8 width " + std::to_string(K) + " from column " + std::to_string(first->in_begin) +
                    " with blocks of " + std::to_string(l.block_in) + " columns: the GPU kernels need all three multiples of 16");
    l.scale_cols = first->scale_cols;
    bool aligned = true;  // every piece starts a block of rows on both sides: scales by block rows
    for (const QuantPiece& p : pieces)
        if (p.slice && (p.row % p.slice->block_out || p.slice->out_begin % p.slice->block_out)) aligned = false;
    l.rows_per_scale = aligned ? first->block_out : 1;
    QuantParam q;
    q.method = Method::kFp8;
    q.fp8.l = l;
    q.fp8.w.assign(N * K, 0);
    q.fp8.scale.assign(ceil_div(N, l.rows_per_scale) * l.scale_cols, 0.0f);
    for (const QuantPiece& p : pieces) {
        if (!p.slice) continue;
        const PackedSlice& s = *p.slice;
        if (s.in_len != K || s.out_len != p.rows || s.scale_cols != l.scale_cols || s.in_begin != first->in_begin)
            throw Error("parameter " + name + ": its FP8 pieces cut the input columns differently");
        std::memcpy(q.fp8.w.data() + p.row * K, s.fp8_weight.data(), (size_t)(p.rows * K));
        const float* src = reinterpret_cast<const float*>(s.scale_inv.data());
        for (int64_t r = ceil_div(p.row, l.rows_per_scale); r * l.rows_per_scale < p.row + p.rows; ++r) {
            const int64_t o = r * l.rows_per_scale - p.row;  // the piece's row that starts scale row r
            const int64_t block_row = (s.out_begin + o) / s.block_out - s.out_begin / s.block_out;
            std::memcpy(&q.fp8.scale[r * l.scale_cols], src + block_row * s.scale_cols, l.scale_cols * sizeof(float));
        }
    }
    return q;
}

// One GPTQ piece's order of positions: its rows' groups (local numbers, by global group), sorted
// by group, each group padded to whole chunks with -1.
struct GptqOrder {
    std::vector<int32_t> order;        // position k' -> row i of `in` (-1: padding)
    std::vector<int32_t> chunk_group;  // chunk -> local group
    std::vector<int32_t> group_of;     // local group -> global group
    bool identity = false;             // order[k] == k, no padding: the packed words are the checkpoint's
};

GptqOrder order_of(const PackedSlice& s) {
    GptqOrder o;
    std::vector<int32_t> local(s.row_of_group.size(), -1);
    for (int64_t i = 0; i < s.in_len; ++i) local[s.g_idx[i]] = 0;
    for (size_t g = 0; g < local.size(); ++g)
        if (local[g] == 0) local[g] = (int32_t)o.group_of.size(), o.group_of.push_back((int32_t)g);
    std::vector<std::vector<int32_t>> rows(o.group_of.size());
    for (int64_t i = 0; i < s.in_len; ++i) rows[local[s.g_idx[i]]].push_back((int32_t)i);
    for (size_t g = 0; g < rows.size(); ++g) {
        std::vector<int32_t>& r = rows[g];
        r.resize(ceil_div((int64_t)r.size(), cpu::kGptqChunk) * cpu::kGptqChunk, -1);
        o.order.insert(o.order.end(), r.begin(), r.end());
        for (size_t c = 0; c < r.size() / cpu::kGptqChunk; ++c) o.chunk_group.push_back((int32_t)g);
    }
    o.identity = (int64_t)o.order.size() == s.in_len && s.in_begin % 8 == 0;
    for (size_t k = 0; o.identity && k < o.order.size(); ++k) o.identity = o.order[k] == (int32_t)k;
    return o;
}

// Rows [r0, r1) of one piece into the layout, in `order`; `asym`: a zero other than 8 was seen.
void pack_gptq_rows(const QuantPiece& p, const GptqOrder& o, int64_t r0, int64_t r1, cpu::GptqWeight& w, bool& asym) {
    const PackedSlice& s = *p.slice;
    const GptqTile t = s.gptq();
    const uint32_t* qweight = reinterpret_cast<const uint32_t*>(t.qweight);
    const int64_t G = w.l.G, row0 = s.in_begin / 8, col0 = s.out_begin / 8;
    constexpr int64_t kBlock = 16;  // rows at a time: a tile of the layout where the piece starts one
    std::vector<uint8_t> qv(kBlock * s.in_len);
    for (int64_t b0 = r0; b0 < r1; b0 += kBlock) {
        const int64_t nb = std::min(kBlock, r1 - b0);
        // In order, unpadded: word c of row r holds positions 8c .. 8c + 7 lowest nibble first,
        // as the checkpoint's word (c, r) does: a transpose of words, no nibble moves.
        for (int64_t r = b0; o.identity && r < b0 + nb; ++r)
            for (int64_t c = 0; c < s.in_len / 8; ++c) w.qw[cpu::gptq_word(w.l, p.row + r, c)] = qweight[c * s.out_len + r];
        for (int64_t i = 0; !o.identity && i < s.in_len; ++i) {
            const int64_t in = s.in_begin + i;
            const uint32_t* src = qweight + (in / 8 - row0) * s.out_len + b0;
            for (int64_t r = 0; r < nb; ++r) qv[r * s.in_len + i] = (uint8_t)((src[r] >> (4 * (in % 8))) & 0xf);
        }
        for (int64_t r = b0; r < b0 + nb; ++r) {
            const int64_t n = p.row + r, out = s.out_begin + r;
            const uint8_t* q = &qv[(r - b0) * s.in_len];
            for (size_t kp = 0; !o.identity && kp < o.order.size(); ++kp)
                if (o.order[kp] >= 0) w.qw[cpu::gptq_word(w.l, n, (int64_t)kp / 8)] |= (uint32_t)q[o.order[kp]] << (4 * (kp % 8));
            for (size_t g = 0; g < o.group_of.size(); ++g) {
                const int64_t held = s.row_of_group[o.group_of[g]];
                w.scales[n * G + g] = f32_to_f16(t.scales[held * s.out_len + r]);  // exact: read from f16
                const uint32_t stored = reinterpret_cast<const uint32_t*>(t.qzeros)[held * s.qzeros_cols + out / 8 - col0];
                const int zero = (int)((stored >> (4 * (out % 8))) & 0xf) + s.zero_offset;
                w.zeros[n * G + g] = (uint8_t)zero;
                asym |= zero != 8;
            }
        }
    }
}

// Every piece's rows, on the machine's threads (an 8B model is 7e9 positions).
bool pack_gptq_all(const std::vector<QuantPiece>& pieces, const std::vector<GptqOrder>& orders, const std::vector<int>& order_of_piece,
                   cpu::GptqWeight& w) {
    struct Job {
        size_t piece;
        int64_t r0, r1;
    };
    std::vector<Job> jobs;
    for (size_t i = 0; i < pieces.size(); ++i)
        for (int64_t r = 0; pieces[i].slice && r < pieces[i].rows; r += 256) jobs.push_back({i, r, std::min(pieces[i].rows, r + 256)});
    const unsigned threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
    std::atomic<size_t> next{0};
    std::atomic<bool> asym{false};
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&] {
            bool a = false;
            for (size_t j; (j = next++) < jobs.size();)
                pack_gptq_rows(pieces[jobs[j].piece], orders[order_of_piece[jobs[j].piece]], jobs[j].r0, jobs[j].r1, w, a);
            if (a) asym = true;
        });
    for (std::thread& t : pool) t.join();
    return asym;
}

QuantParam pack_gptq(const std::string& name, int64_t N, int64_t K, const std::vector<QuantPiece>& pieces) {
    // Runs of rows whose pieces share one order: the layout's segments (padding joins the run before).
    std::vector<GptqOrder> runs;
    std::vector<int> run_of(pieces.size(), 0);
    std::vector<int64_t> run_end;
    cpu::GptqLayout l;
    l.N = N, l.K = K;
    for (size_t i = 0; i < pieces.size(); ++i) {
        const PackedSlice* s = pieces[i].slice;
        if (s) {
            if (s->in_len != K || s->out_len != pieces[i].rows) throw Error("parameter " + name + ": a GPTQ piece is not whole rows of it");
            GptqOrder o = order_of(*s);
            if (runs.empty() || runs.back().order != o.order || runs.back().chunk_group != o.chunk_group) {
                runs.push_back(std::move(o));
                run_end.push_back(0);
            }
            l.Kp = std::max<int64_t>(l.Kp, (int64_t)runs.back().order.size());
            l.G = std::max<int64_t>(l.G, (int64_t)runs.back().group_of.size());
        }
        run_of[i] = std::max(0, (int)runs.size() - 1);
        if (!runs.empty()) run_end.back() = pieces[i].row + pieces[i].rows;
    }
    if ((int)runs.size() > cpu::kQuantMaxSegments)
        throw Error("parameter " + name + ": its GPTQ pieces have " + std::to_string(runs.size()) +
                    " runs of different act-order row orders; the GPU kernels take at most " + std::to_string(cpu::kQuantMaxSegments));
    bool identity = runs.size() == 1 && l.Kp == K;
    for (int64_t k = 0; identity && k < K; ++k) identity = runs[0].order[k] == k;
    l.segments = (int)runs.size();
    for (int r = 0; r < l.segments; ++r) l.seg_end[r] = run_end[r];
    l.seg_end[l.segments - 1] = N;
    QuantParam q;
    q.method = Method::kGptq;
    cpu::GptqWeight& w = q.gptq;
    w.l = l;
    w.qw.assign(cpu::gptq_words(l), 0);
    w.scales.assign(N * l.G, 0);
    w.zeros.assign(N * l.G, 8);
    const int64_t chunks = l.Kp / cpu::kGptqChunk;
    w.chunk_group.assign(l.segments * chunks, 0);
    if (!identity) w.perm.assign(l.segments * l.Kp, -1);
    for (int r = 0; r < l.segments; ++r) {
        std::copy(runs[r].chunk_group.begin(), runs[r].chunk_group.end(), w.chunk_group.begin() + r * chunks);
        if (!identity) std::copy(runs[r].order.begin(), runs[r].order.end(), w.perm.begin() + r * l.Kp);
    }
    if (!pack_gptq_all(pieces, runs, run_of, w)) w.zeros.clear();
    cpu::gptq_mark_steps(w);
    return q;
}

}  // namespace

QuantParam pack_quant_param(const std::string& name, int64_t N, int64_t K, const std::vector<QuantPiece>& pieces) {
    const PackedSlice* first = nullptr;
    for (const QuantPiece& p : pieces) {
        if (p.slice && !first) first = p.slice;
        if (p.slice && first && p.slice->method != first->method) throw Error("parameter " + name + ": pieces of two quantization methods");
    }
    if (!first) throw Error("parameter " + name + ": no quantized piece");
    return first->method == Method::kFp8 ? pack_fp8(name, N, K, pieces) : pack_gptq(name, N, K, pieces);
}

}  // namespace tpx
