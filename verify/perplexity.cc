#include "verify/perplexity.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace tessera {
namespace {
// log-softmax of one row in double.
void LogSoftmax(const float* x, int64_t n, std::vector<double>* out) {
  out->resize(static_cast<size_t>(n));
  double mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
  const double lse = mx + std::log(sum);
  for (int64_t i = 0; i < n; ++i) (*out)[static_cast<size_t>(i)] = static_cast<double>(x[i]) - lse;
}
}  // namespace

std::pair<double, double> MeanAndStderr(const std::vector<double>& xs) {
  if (xs.empty()) return {0.0, 0.0};
  const double n = static_cast<double>(xs.size());
  double s = 0;
  for (double x : xs) s += x;
  const double mean = s / n;
  if (xs.size() < 2) return {mean, 0.0};
  double v = 0;
  for (double x : xs) v += (x - mean) * (x - mean);
  return {mean, std::sqrt(v / n / (n - 1.0))};
}

namespace {
// Supplies the base model's logits for chunk `ch` (the chunk's token ids as scored): a pointer to
// row ctx/2 of [ctx][vocab] floats (rows ctx/2 .. ctx-2 are read).
using BaseRows = std::function<absl::StatusOr<const float*>(int64_t ch, const std::vector<int32_t>& chunk)>;

absl::StatusOr<PerplexityResult> PerplexityImpl(const Model& model, const std::vector<int32_t>& tokens,
                                                const PerplexityOptions& opts, const BaseRows* base) {
  const ModelConfig& c = model.config();
  if (opts.ctx < 4) return absl::InvalidArgumentError("--ctx must be at least 4");
  if (opts.ctx > c.max_ctx)
    return absl::InvalidArgumentError(absl::StrCat("--ctx ", opts.ctx, " exceeds the model's context ", c.max_ctx));
  PerplexityResult r;
  r.ctx = opts.ctx;
  r.n_tokens = static_cast<int64_t>(tokens.size());
  int64_t n_chunks = r.n_tokens / opts.ctx;
  if (opts.max_chunks > 0) n_chunks = std::min(n_chunks, opts.max_chunks);
  if (n_chunks == 0)
    return absl::InvalidArgumentError(absl::StrCat("the text has ", r.n_tokens, " tokens, fewer than one chunk of ", opts.ctx));
  r.n_chunks = n_chunks;
  r.has_base = base != nullptr;
  const int64_t V = c.vocab, ctx = opts.ctx, first = ctx / 2;
  const int32_t bos = model.tokenizer().bos_id() >= 0 ? model.tokenizer().bos_id() : c.bos_id;
  std::vector<float> logits(static_cast<size_t>(ctx * V));
  KVCache cache(c, ctx);
  double nll = 0, nll2 = 0, base_nll = 0;
  int64_t count = 0, same_top = 0;
  std::vector<double> klds, dnll;  // per scored token: KLD, NLL - base NLL
  std::vector<double> lp, blp;
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    std::vector<int32_t> chunk(tokens.begin() + ch * ctx, tokens.begin() + (ch + 1) * ctx);
    if (bos >= 0 && model.tokenizer().add_bos()) chunk[0] = bos;
    TESSERA_RETURN_IF_ERROR(model.Forward(cache, chunk.data(), chunk.size(), 0, logits.data(), true));
    const float* base_rows = nullptr;  // row `first` of the base model's logits
    if (base) {
      TESSERA_ASSIGN_OR_RETURN(base_rows, (*base)(ch, chunk));
    }
    for (int64_t j = first; j < ctx - 1; ++j) {
      const int32_t target = tokens[static_cast<size_t>(ch * ctx + j + 1)];
      LogSoftmax(logits.data() + j * V, V, &lp);
      const double l = -lp[static_cast<size_t>(target)];
      nll += l;
      nll2 += l * l;
      ++count;
      if (base) {
        LogSoftmax(base_rows + (j - first) * V, V, &blp);
        base_nll += -blp[static_cast<size_t>(target)];
        dnll.push_back(l + blp[static_cast<size_t>(target)]);
        double kl = 0;
        for (int64_t i = 0; i < V; ++i) {
          const double pb = std::exp(blp[static_cast<size_t>(i)]);
          kl += pb * (blp[static_cast<size_t>(i)] - lp[static_cast<size_t>(i)]);
        }
        klds.push_back(std::max(0.0, kl));
        const auto am = std::max_element(lp.begin(), lp.end()) - lp.begin();
        const auto bm = std::max_element(blp.begin(), blp.end()) - blp.begin();
        if (am == bm) ++same_top;
      }
    }
    r.running_ppl.push_back(std::exp(nll / static_cast<double>(count)));
    if (opts.on_chunk) opts.on_chunk(ch + 1, n_chunks, r.running_ppl.back());
  }
  r.n_scored = count;
  r.nll_mean = nll / static_cast<double>(count);
  r.ppl = std::exp(r.nll_mean);
  // Standard error of the mean NLL propagated to PPL (as llama.cpp reports it).
  const double var = nll2 / static_cast<double>(count) - r.nll_mean * r.nll_mean;
  r.ppl_stderr = count > 1 ? r.ppl * std::sqrt(std::max(0.0, var) / static_cast<double>(count - 1)) : 0.0;
  if (base) {
    r.base_ppl = std::exp(base_nll / static_cast<double>(count));
    r.ppl_ratio = r.ppl / r.base_ppl;
    r.ln_ppl_ratio = std::log(r.ppl_ratio);
    std::tie(r.kld_mean, r.kld_stderr) = MeanAndStderr(klds);
    const auto [dmean, dse] = MeanAndStderr(dnll);
    (void)dmean;
    r.ln_ppl_ratio_stderr = dse;
    r.ppl_ratio_stderr = r.ppl_ratio * dse;
    r.delta_ppl_stderr = r.ppl * dse;
    std::vector<double> sorted = klds;
    std::sort(sorted.begin(), sorted.end());
    auto pct = [&](double p) {
      const double idx = p * static_cast<double>(sorted.size() - 1);
      const size_t lo = static_cast<size_t>(std::floor(idx)), hi = static_cast<size_t>(std::ceil(idx));
      return sorted[lo] + (sorted[hi] - sorted[lo]) * (idx - static_cast<double>(lo));
    };
    r.kld_median = pct(0.5);
    r.kld_p99 = pct(0.99);
    r.kld_max = sorted.back();
    r.top1 = static_cast<double>(same_top) / static_cast<double>(count);
    r.top1_stderr = count > 1 ? std::sqrt(r.top1 * (1.0 - r.top1) / static_cast<double>(count - 1)) : 0.0;
    r.kld = std::move(klds);
  }
  return r;
}
}  // namespace

absl::StatusOr<PerplexityResult> Perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                            const PerplexityOptions& opts, const Model* base) {
  if (base == nullptr) return PerplexityImpl(model, tokens, opts, nullptr);
  if (base->config().vocab != model.config().vocab)
    return absl::InvalidArgumentError("base model has a different vocabulary size");
  // Allocated at the first chunk, after PerplexityImpl has checked opts.ctx.
  const size_t V = static_cast<size_t>(base->config().vocab);
  std::vector<float> base_logits;
  std::unique_ptr<KVCache> base_cache;
  const BaseRows rows = [&](int64_t, const std::vector<int32_t>& chunk) -> absl::StatusOr<const float*> {
    if (!base_cache) {
      base_logits.resize(static_cast<size_t>(opts.ctx) * V);
      base_cache = std::make_unique<KVCache>(base->config(), opts.ctx);
    }
    TESSERA_RETURN_IF_ERROR(base->Forward(*base_cache, chunk.data(), chunk.size(), 0, base_logits.data(), true));
    return base_logits.data() + static_cast<size_t>(opts.ctx / 2) * V;
  };
  return PerplexityImpl(model, tokens, opts, &rows);
}

absl::StatusOr<BaseLogits> ComputeBaseLogits(const Model& base, const std::vector<int32_t>& tokens,
                                             const PerplexityOptions& opts) {
  const ModelConfig& c = base.config();
  if (opts.ctx < 4) return absl::InvalidArgumentError("--ctx must be at least 4");
  if (opts.ctx > c.max_ctx)
    return absl::InvalidArgumentError(absl::StrCat("--ctx ", opts.ctx, " exceeds the model's context ", c.max_ctx));
  BaseLogits b;
  b.ctx = opts.ctx;
  b.vocab = c.vocab;
  b.n_tokens = static_cast<int64_t>(tokens.size());
  b.n_chunks = b.n_tokens / opts.ctx;
  if (opts.max_chunks > 0) b.n_chunks = std::min(b.n_chunks, opts.max_chunks);
  if (b.n_chunks == 0)
    return absl::InvalidArgumentError(absl::StrCat("the text has ", b.n_tokens, " tokens, fewer than one chunk of ", opts.ctx));
  const size_t V = static_cast<size_t>(c.vocab), ctx = static_cast<size_t>(opts.ctx), first = ctx / 2;
  const size_t per_chunk = (ctx - 1 - first) * V;
  b.logits.resize(static_cast<size_t>(b.n_chunks) * per_chunk);
  std::vector<float> logits(ctx * V);
  KVCache cache(c, opts.ctx);
  const int32_t bos = base.tokenizer().bos_id() >= 0 ? base.tokenizer().bos_id() : c.bos_id;
  for (int64_t ch = 0; ch < b.n_chunks; ++ch) {
    std::vector<int32_t> chunk(tokens.begin() + ch * opts.ctx, tokens.begin() + (ch + 1) * opts.ctx);
    if (bos >= 0 && base.tokenizer().add_bos()) chunk[0] = bos;
    TESSERA_RETURN_IF_ERROR(base.Forward(cache, chunk.data(), chunk.size(), 0, logits.data(), true));
    std::copy(logits.begin() + static_cast<std::ptrdiff_t>(first * V),
              logits.begin() + static_cast<std::ptrdiff_t>(first * V + per_chunk),
              b.logits.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(ch) * per_chunk));
  }
  return b;
}

absl::StatusOr<PerplexityResult> Perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                            const PerplexityOptions& opts, const BaseLogits& base) {
  if (base.vocab != model.config().vocab)
    return absl::InvalidArgumentError("base model has a different vocabulary size");
  if (base.ctx != opts.ctx || base.n_tokens != static_cast<int64_t>(tokens.size()))
    return absl::InvalidArgumentError(absl::StrCat("base logits of ", base.n_tokens, " tokens at ctx ", base.ctx,
                                                   ", asked for ", tokens.size(), " at ctx ", opts.ctx));
  const size_t per_chunk = static_cast<size_t>(opts.ctx - 1 - opts.ctx / 2) * static_cast<size_t>(base.vocab);
  const BaseRows rows = [&](int64_t ch, const std::vector<int32_t>&) -> absl::StatusOr<const float*> {
    if (ch >= base.n_chunks) return absl::InternalError(absl::StrCat("no base logits for chunk ", ch));
    return base.logits.data() + static_cast<size_t>(ch) * per_chunk;
  };
  return PerplexityImpl(model, tokens, opts, &rows);
}

}  // namespace tessera
