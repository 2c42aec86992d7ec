// Token sampling: temperature, top-k, top-p, min-p, repetition penalty, seeded RNG.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace tessera {

struct SamplingParams {
  float temperature = 0.8f;  // <= 0: greedy (argmax)
  int top_k = 40;            // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off (llama.cpp semantics over the last repeat_last_n tokens)
  int repeat_last_n = 64;
  uint64_t seed = 0xC0FFEE;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}
  // `history` = tokens so far (prompt + generated), for the repetition penalty.
  int32_t Sample(const float* logits, int64_t vocab, const std::vector<int32_t>& history);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

int32_t Argmax(const float* x, int64_t n);

}  // namespace tessera
