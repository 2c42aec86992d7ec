// Text generation loop over a Model: prefill the prompt, then decode token by token.
#pragma once

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime-lite/model.h"
#include "runtime-lite/sampler.h"

namespace tessera {

struct GenerateOptions {
  int max_new_tokens = 256;
  int64_t n_ctx = 0;  // 0: the model's max_ctx
  SamplingParams sampling;
  bool stop_at_eos = true;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (without the prompt; includes EOS if hit)
  bool hit_eos = false;
  double prefill_seconds = 0, decode_seconds = 0;
};

// Calls on_token(id) for every generated token; returning false stops generation.
absl::StatusOr<GenerateResult> Generate(const Model& model, const std::vector<int32_t>& prompt,
                                        const GenerateOptions& opts,
                                        const std::function<bool(int32_t)>& on_token);

}  // namespace tessera
