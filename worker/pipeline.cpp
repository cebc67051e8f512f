// The pipeline schedule of one forward (see pipeline.h).
#include "worker/pipeline.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "kernels/cpu/ops.h"

namespace tpx {

std::vector<MicroBatch> split_micro_batches(const TokenBatch& batch, int count) {
    std::map<int32_t, size_t> sequence;  // slot -> its index in order of first appearance
    for (int32_t slot : batch.slots) sequence.emplace(slot, sequence.size());
    const size_t n = sequence.size(), groups = std::max<size_t>(1, std::min<size_t>(n, (size_t)std::max(1, count)));
    std::vector<MicroBatch> out(groups);
    std::vector<size_t> group_of(batch.ids.size()), row_in_group(batch.ids.size());
    for (size_t t = 0; t < batch.ids.size(); ++t) {
        const size_t g = sequence.at(batch.slots[t]) * groups / std::max<size_t>(1, n);  // contiguous, sizes differ by at most one
        group_of[t] = g;
        row_in_group[t] = out[g].batch.ids.size();
        out[g].batch.ids.push_back(batch.ids[t]);
        out[g].batch.positions.push_back(batch.positions[t]);
        out[g].batch.slots.push_back(batch.slots[t]);
    }
    for (size_t j = 0; j < batch.logit_rows.size(); ++j) {
        const size_t t = (size_t)batch.logit_rows[j];
        MicroBatch& mb = out[group_of[t]];
        mb.batch.logit_rows.push_back((int64_t)row_in_group[t]);
        mb.result_rows.push_back(j);
    }
    return out;
}

PipelineExecutor::PipelineExecutor(CpuExecutor& stage, MpiPipe& pipe, int micro_batches, int64_t vocab, int64_t hidden)
    : stage_(stage), pipe_(pipe), micro_batches_(micro_batches), vocab_(vocab), hidden_(hidden) {}

std::vector<float> PipelineExecutor::run_stage(const TokenBatch& batch) {
    const PipeLayout& l = pipe_.layout();
    std::vector<MicroBatch> mbs = split_micro_batches(batch, micro_batches_);
    std::vector<std::vector<float>> sent(mbs.size());  // kept until wait_sends
    std::vector<float> logits(l.last() ? batch.logit_rows.size() * vocab_ : 0);
    std::vector<float> in;
    for (size_t m = 0; m < mbs.size(); ++m) {
        const TokenBatch& mb = mbs[m].batch;
        if (!l.first()) {
            in.resize(mb.ids.size() * hidden_);
            pipe_.recv_prev(in.data(), in.size() * sizeof(float), (int)m);
        }
        std::vector<float> out = stage_.forward_stage(mb, l.first() ? nullptr : in.data());
        if (!l.last()) {
            sent[m] = std::move(out);
            pipe_.send_next(sent[m].data(), sent[m].size() * sizeof(float), (int)m);
            continue;
        }
        for (size_t k = 0; k < mbs[m].result_rows.size(); ++k)
            std::memcpy(&logits[mbs[m].result_rows[k] * vocab_], &out[k * vocab_], vocab_ * sizeof(float));
    }
    pipe_.wait_sends();
    return logits;
}

std::vector<float> PipelineExecutor::forward(const TokenBatch& batch) {
    const PipeLayout& l = pipe_.layout();
    std::vector<float> logits = run_stage(batch);
    if (l.last() && l.tp_rank == 0 && l.rank != 0) pipe_.send_to_first(logits.data(), logits.size() * sizeof(float));
    if (l.rank == 0 && !l.last()) {
        logits.resize(batch.logit_rows.size() * vocab_);
        pipe_.recv_from_last(logits.data(), logits.size() * sizeof(float));
    }
    if (l.rank != 0) logits.assign(batch.logit_rows.size() * vocab_, 0.0f);  // only rank 0 chooses
    return logits;
}

// Greedy: the last stage takes each row's argmax and only the ids travel to rank 0.
std::vector<int32_t> PipelineExecutor::forward_argmax(const TokenBatch& batch) {
    const PipeLayout& l = pipe_.layout();
    std::vector<float> logits = run_stage(batch);
    std::vector<int32_t> ids(batch.logit_rows.size(), 0);
    if (l.last())
        for (size_t r = 0; r < ids.size(); ++r) ids[r] = (int32_t)cpu::argmax(&logits[r * vocab_], vocab_);
    if (l.last() && l.tp_rank == 0 && l.rank != 0) pipe_.send_to_first(ids.data(), ids.size() * sizeof(int32_t));
    if (l.rank == 0 && !l.last()) pipe_.recv_from_last(ids.data(), ids.size() * sizeof(int32_t));
    return ids;
}

}  // namespace tpx
