// Perplexity by the llama.cpp method, and KL divergence / top-1 agreement against a base model.
#pragma once

#include <functional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime-lite/model.h"

namespace tessera {

struct PerplexityOptions {
  int64_t ctx = 512;
  int64_t max_chunks = 0;  // 0: all
  std::function<void(int64_t done, int64_t total, double running_ppl)> on_chunk;
};

struct PerplexityResult {
  int64_t n_tokens = 0, n_chunks = 0, n_scored = 0, ctx = 0;
  double nll_mean = 0, ppl = 0, ppl_stderr = 0;
  std::vector<double> running_ppl;  // after each chunk, as llama.cpp prints it
  // With a base model:
  bool has_base = false;
  double base_ppl = 0, ppl_ratio = 0, ln_ppl_ratio = 0;
  double kld_mean = 0, kld_median = 0, kld_p99 = 0, kld_max = 0, top1 = 0;
  // Uncertainties (standard errors of the mean over the scored tokens, as llama.cpp prints them):
  // KLD: sd(kld) / sqrt(n - 1); top-1: sqrt(p (1 - p) / (n - 1)); ln(PPL/PPL_base): the standard
  // error of the mean per-token NLL difference (so the correlation of the two runs is accounted for).
  double kld_stderr = 0, top1_stderr = 0, ln_ppl_ratio_stderr = 0, ppl_ratio_stderr = 0, delta_ppl_stderr = 0;
  std::vector<double> kld;  // per scored token, in scoring order
};

// Mean and its standard error (sd / sqrt(n - 1), population sd) of xs; {0, 0} when empty.
std::pair<double, double> MeanAndStderr(const std::vector<double>& xs);

// tokens: the whole tokenized text (BOS first if the tokenizer adds one). Chunk i covers
// tokens[i*ctx, (i+1)*ctx); its first token is replaced by BOS (when the model has one); the
// second half is scored: logits at j = ctx/2 .. ctx-2 predict token j+1, log-softmax in double.
absl::StatusOr<PerplexityResult> Perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                            const PerplexityOptions& opts, const Model* base = nullptr);

// The base model's logits at the scored positions of every chunk (rows ctx/2 .. ctx-2), computed
// once for several Perplexity runs against the same base, tokens and options (`--allocate
// measured` compares every candidate with the source model). n_chunks * (ctx/2 - 1) * vocab floats.
struct BaseLogits {
  int64_t ctx = 0, n_chunks = 0, vocab = 0, n_tokens = 0;
  std::vector<float> logits;
};
absl::StatusOr<BaseLogits> ComputeBaseLogits(const Model& base, const std::vector<int32_t>& tokens,
                                             const PerplexityOptions& opts);
// The same result as Perplexity(model, tokens, opts, &base_model) when base = ComputeBaseLogits(base_model,
// tokens, opts).
absl::StatusOr<PerplexityResult> Perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                            const PerplexityOptions& opts, const BaseLogits& base);

}  // namespace tessera
