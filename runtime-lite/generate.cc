#include "runtime-lite/generate.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace tessera {

absl::StatusOr<GenerateResult> Generate(const Model& model, const std::vector<int32_t>& prompt,
                                        const GenerateOptions& opts,
                                        const std::function<bool(int32_t)>& on_token) {
  const ModelConfig& c = model.config();
  if (prompt.empty()) return absl::InvalidArgumentError("empty prompt (no tokens)");
  const int64_t n_ctx = opts.n_ctx > 0 ? opts.n_ctx : c.max_ctx;
  if (static_cast<int64_t>(prompt.size()) >= n_ctx)
    return absl::OutOfRangeError(absl::StrCat("prompt has ", prompt.size(), " tokens; the context holds ", n_ctx));
  KVCache cache(c, n_ctx);
  Sampler sampler(opts.sampling);
  std::vector<float> logits(static_cast<size_t>(c.vocab));
  std::vector<int32_t> history = prompt;
  GenerateResult res;
  auto t0 = std::chrono::steady_clock::now();
  TESSERA_RETURN_IF_ERROR(model.Forward(cache, prompt.data(), prompt.size(), 0, logits.data(), false));
  auto t1 = std::chrono::steady_clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  const auto eos = model.tokenizer().eos_ids();
  int64_t pos = static_cast<int64_t>(prompt.size());
  for (int i = 0; i < opts.max_new_tokens; ++i) {
    const int32_t id = sampler.Sample(logits.data(), c.vocab, history);
    res.tokens.push_back(id);
    history.push_back(id);
    const bool is_eos = std::find(eos.begin(), eos.end(), id) != eos.end() || id == c.eos_id ||
                        std::find(c.eos_ids.begin(), c.eos_ids.end(), id) != c.eos_ids.end();
    if (is_eos && opts.stop_at_eos) {
      res.hit_eos = true;
      break;
    }
    if (!on_token(id)) break;
    if (i + 1 == opts.max_new_tokens || pos >= n_ctx) break;
    TESSERA_RETURN_IF_ERROR(model.Forward(cache, &id, 1, pos, logits.data(), false));
    ++pos;
  }
  res.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  return res;
}

}  // namespace tessera
