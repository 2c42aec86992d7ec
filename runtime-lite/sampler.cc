#include "runtime-lite/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace tessera {

int32_t Argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return static_cast<int32_t>(best);
}

int32_t Sampler::Sample(const float* logits_in, int64_t vocab, const std::vector<int32_t>& history) {
  std::vector<float> logits(logits_in, logits_in + vocab);
  if (p_.repeat_penalty != 1.0f && p_.repeat_last_n != 0) {
    std::unordered_set<int32_t> seen;
    const size_t n = p_.repeat_last_n < 0 ? history.size()
                                          : std::min(history.size(), static_cast<size_t>(p_.repeat_last_n));
    for (size_t i = history.size() - n; i < history.size(); ++i) seen.insert(history[i]);
    for (int32_t id : seen) {
      if (id < 0 || id >= vocab) continue;
      float& l = logits[static_cast<size_t>(id)];
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    }
  }
  if (p_.temperature <= 0.0f) return Argmax(logits.data(), vocab);

  std::vector<std::pair<float, int32_t>> cand(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) cand[static_cast<size_t>(i)] = {logits[static_cast<size_t>(i)], static_cast<int32_t>(i)};
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first; };
  size_t keep = cand.size();
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < keep) {
    keep = static_cast<size_t>(p_.top_k);
    std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(keep), cand.end(), by_logit);
    cand.resize(keep);
  } else {
    std::sort(cand.begin(), cand.end(), by_logit);
  }
  // Softmax with temperature over the candidates (sorted, largest first).
  const float mx = cand[0].first;
  std::vector<double> prob(cand.size());
  double sum = 0;
  for (size_t i = 0; i < cand.size(); ++i) {
    prob[i] = std::exp(static_cast<double>(cand[i].first - mx) / p_.temperature);
    sum += prob[i];
  }
  for (auto& p : prob) p /= sum;
  size_t n = cand.size();
  if (p_.min_p > 0.0f) {
    const double floor = prob[0] * p_.min_p;
    size_t m = 1;
    while (m < n && prob[m] >= floor) ++m;
    n = m;
  }
  if (p_.top_p < 1.0f) {
    double cum = 0;
    size_t m = 0;
    while (m < n) {
      cum += prob[m++];
      if (cum >= p_.top_p) break;
    }
    n = std::max<size_t>(1, m);
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  std::uniform_real_distribution<double> uni(0.0, total);
  double r = uni(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= prob[i];
    if (r <= 0) return cand[i].second;
  }
  return cand[n - 1].second;
}

}  // namespace tessera
