// The CPU twins of tpx's kernels: plain C++, fp32 arithmetic. They are the CPU backend and the
// reference the CUDA kernels are tested against. Activations are row-major [tokens, width].
// Each op takes a small struct of sizes rather than a long list of positional arguments.
#pragma once

#include <cstdint>
#include <vector>

namespace tpx::cpu {

// y[t, n] = sum_k x[t, k] * w[n, k] (+ b[n]); w is [n_out, k_in] as checkpoints store it.
struct LinearShape {
    int64_t tokens, in, out;
};
void linear(const LinearShape& s, const float* x, const float* w, const float* bias, float* y);

// Rows of the local vocabulary slice [start, start + rows); ids outside it give zeros (the
// vocab-parallel embedding: an all_reduce over ranks completes it).
struct EmbeddingShape {
    int64_t tokens, rows, width, start;
};
void embedding(const EmbeddingShape& s, const int32_t* ids, const float* table, float* y);

// y = x / sqrt(mean(x^2) + eps) * w, per row (HF's LlamaRMSNorm in fp32).
void rmsnorm(int64_t tokens, int64_t width, float eps, const float* x, const float* w, float* y);
// residual += x; y = rmsnorm(residual) (the fused residual add + RMSNorm).
void add_rmsnorm(int64_t tokens, int64_t width, float eps, const float* x, float* residual, const float* w, float* y);

// Rotary embedding, HF's rotate_half layout, in place on q [T, heads*hd] and k [T, kv*hd].
// inv_freq is computed in fp32 and then rounded to `freq_dtype` (see docs/NUMERICS.md).
enum class RopeFreqDtype { kF32, kBF16, kF16 };
struct RopeParams {
    int64_t heads, kv_heads, head_dim;
    double theta;
    bool llama3 = false;
    double factor = 1, low_freq_factor = 1, high_freq_factor = 4;
    int64_t original_max_position_embeddings = 8192;
    RopeFreqDtype freq_dtype = RopeFreqDtype::kF32;
};
std::vector<float> rope_inv_freq(const RopeParams& p);
void rope(const RopeParams& p, int64_t tokens, const int32_t* positions, float* q, float* k);

// Causal GQA attention over a KV cache. Each token t belongs to sequence slot[t] at
// position pos[t]; its K and V are written into the cache first, then it attends to cache
// positions [max(0, pos - window + 1), pos] of its slot.
struct AttentionShape {
    int64_t tokens, heads, kv_heads, head_dim;
    int64_t max_seq;         // cache positions per slot
    int64_t sliding_window;  // 0 = none
};
// k_cache, v_cache: [slots, max_seq, kv_heads * head_dim].
void attention(const AttentionShape& s, const int32_t* slot, const int32_t* pos, const float* q, const float* k,
               const float* v, float* k_cache, float* v_cache, float* out);

// out[t, i] = silu(gu[t, i]) * gu[t, I + i] for the fused gate_up; or silu(g) * u.
void silu_mul_fused(int64_t tokens, int64_t inter, const float* gate_up, float* out);
void silu_mul(int64_t tokens, int64_t width, const float* gate, const float* up, float* out);

// Mixtral sparse MoE on this rank's experts: softmax over all experts' router logits, top-k,
// renormalised weights; experts [first_expert, first_expert + local_experts) are held here,
// each with inter_local columns (a part of the expert when split within an EP group).
// w13: [local_experts, 2 * inter_local, hidden]; w2: [local_experts, hidden, inter_local].
struct MoeShape {
    int64_t tokens, hidden, experts, top_k;
    int64_t first_expert, local_experts, inter_local;
};
void moe(const MoeShape& s, const float* x, const float* router_logits, const float* w13, const float* w2, float* y);

// Index of the largest logit (the first one on ties, as torch.argmax), or -1 when the row holds
// a NaN or an infinity: a broken model must not look like one that chose token 0.
int64_t argmax(const float* logits, int64_t n);

// OpenAI's presence and frequency penalties (on the output's ids) and HF's repetition penalty (on
// the prompt's and the output's), as vLLM applies them: repetition first (a positive logit
// divided by it, another multiplied), then each output id's logit less frequency x its count and
// presence once.
struct Penalties {
    double presence = 0, frequency = 0, repetition = 1;
    bool any() const { return presence != 0 || frequency != 0 || repetition != 1; }
};
void apply_penalties(float* logits, int64_t n, const Penalties& p, const std::vector<int32_t>& prompt, const std::vector<int32_t>& output);

// log(sum of exp(logits)): a logit minus it is its log-softmax (the logprob the serve's calls
// ask for). Each term's exp in float (its argument a float difference from the largest), summed
// in double: within about 1e-6 of the exact value. The row's values are finite.
double log_sum_exp(const float* logits, int64_t n);
// The indices of the k largest logits (at most n), largest first; equal logits lower index first.
std::vector<int64_t> largest_indices(const float* logits, int64_t n, int64_t k);

}  // namespace tpx::cpu
