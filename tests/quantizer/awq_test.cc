// AWQ-style channel scaling (quantizer/awq.h) against scalar references.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "core/half.h"
#include "quantizer/awq.h"

namespace tessera::quant {
namespace {

TEST(Awq, ScaleIsAPowerOfTheActivationRmsWithGeometricMeanOne) {
  const std::vector<float> a2{1.0f, 4.0f, 16.0f, 0.0f, 0.25f};
  const auto s0 = AwqScale(a2.data(), a2.size(), 0.0);
  for (float v : s0) EXPECT_EQ(v, 1.0f);
  const auto s = AwqScale(a2.data(), a2.size(), 0.5);
  // RMS a_j = 1, 2, 4, -, 0.5; a^0.5 = 1, sqrt2, 2, -, 1/sqrt2; geometric mean of the live ones = 2^(1/4).
  const double gm = std::pow(2.0, 0.25);
  EXPECT_NEAR(s[0], 1.0 / gm, 1e-6);
  EXPECT_NEAR(s[1], std::sqrt(2.0) / gm, 1e-6);
  EXPECT_NEAR(s[2], 2.0 / gm, 1e-6);
  EXPECT_EQ(s[3], 1.0f);  // no activation: left alone
  EXPECT_NEAR(s[4], 1.0 / std::sqrt(2.0) / gm, 1e-6);
}

// Reference for the proxy: symmetric int4 round to nearest written out by hand (scale = max|x| / -8
// with the sign of the extreme, as the RTN kernel), errors weighted by act2 / H.
double RefError(const std::vector<float>& w, size_t g, const std::vector<float>& s, const std::vector<float>& a2,
                const std::vector<double>* h) {
  const size_t k = w.size();
  std::vector<double> e(k);
  for (size_t g0 = 0; g0 < k; g0 += g) {
    float amax = 0, mx = 0;
    for (size_t j = g0; j < g0 + g; ++j) {
      const float v = w[j] * s[j];
      if (std::fabs(v) > amax) amax = std::fabs(v), mx = v;
    }
    const float d = F16ToF32(F32ToF16(mx / -8.0f));
    const float id = d != 0 ? 1.0f / d : 0.0f;
    for (size_t j = g0; j < g0 + g; ++j) {
      const float v = w[j] * s[j];
      const float q = std::min(15.0f, std::max(0.0f, std::nearbyint(v * id) + 8.0f));
      e[j] = static_cast<double>(w[j]) - static_cast<double>((q - 8.0f) * d) / s[j];
    }
  }
  double err = 0;
  for (size_t i = 0; i < k; ++i) {
    if (h == nullptr) {
      err += a2[i] * e[i] * e[i];
    } else {
      for (size_t j = 0; j < k; ++j) err += e[i] * (*h)[i * k + j] * e[j];
    }
  }
  return err;
}

TEST(Awq, RowErrorMatchesTheScalarReference) {
  std::mt19937 rng(5);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const size_t k = 64;
  std::vector<float> w(k), a2(k);
  for (auto& v : w) v = n(rng);
  for (auto& v : a2) v = std::exp(n(rng));
  std::vector<double> h(k * k);
  std::vector<float> x(k);
  for (int t = 0; t < 200; ++t) {  // H = mean x x^T of random samples
    for (size_t i = 0; i < k; ++i) x[i] = n(rng) * std::sqrt(a2[i]);
    for (size_t i = 0; i < k; ++i)
      for (size_t j = 0; j < k; ++j) h[i * k + j] += x[i] * x[j] / 200.0;
  }
  const TensorScheme sch{QType::kI4Sym, 32};
  for (double alpha : {0.0, 0.3, 0.7}) {
    const auto s = AwqScale(a2.data(), k, alpha);
    const double got_d = AwqRowError(w.data(), k, sch, s.data(), a2.data(), nullptr);
    const double got_h = AwqRowError(w.data(), k, sch, s.data(), a2.data(), h.data());
    EXPECT_NEAR(got_d, RefError(w, 32, s, a2, nullptr), 1e-6 * got_d) << alpha;
    EXPECT_NEAR(got_h, RefError(w, 32, s, a2, &h), 1e-6 * got_h) << alpha;
  }
}

TEST(Awq, ChoiceIsNeverWorseThanNoScalingAndHelpsAnOutlierChannel) {
  // Input channel 3 carries 100x the activation RMS of the others; its weights are small, so plain
  // RTN rounds them away. Scaling it up before quantization must lower the output error.
  std::mt19937 rng(9);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const size_t k = 64, rows = 16;
  std::vector<float> w(rows * k), a2(k, 1.0f);
  for (auto& v : w) v = n(rng);
  a2[3] = 1e4f;
  for (size_t r = 0; r < rows; ++r) w[r * k + 3] *= 0.05f;
  const std::vector<AwqMatrix> mats{{w.data(), rows, {QType::kI4Sym, 32}}};
  const AwqChoice c = ChooseAwqScale(mats, k, a2.data(), nullptr);
  ASSERT_EQ(c.error.size(), c.grid.size());
  double none = 0;
  for (size_t r = 0; r < rows; ++r) none += AwqRowError(w.data() + r * k, k, {QType::kI4Sym, 32}, nullptr, a2.data(), nullptr);
  EXPECT_NEAR(c.error[0], none, 1e-9 * none);  // alpha = 0 is plain RTN
  for (double e : c.error) EXPECT_GE(e, *std::min_element(c.error.begin(), c.error.end()));
  EXPECT_GT(c.alpha, 0.0);
  EXPECT_LT(*std::min_element(c.error.begin(), c.error.end()), 0.5 * none);
  ASSERT_EQ(c.scale.size(), k);
  EXPECT_GT(c.scale[3], c.scale[0]);
}

TEST(Awq, FoldingIntoTheNormIsExactInFloat) {
  // W (g * xn) == (W diag(s)) ((g / s) * xn) up to float rounding.
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const size_t k = 48, rows = 8;
  std::vector<float> w(rows * k), g(k), xn(k), a2(k);
  for (auto& v : w) v = n(rng);
  for (auto& v : g) v = 1.0f + 0.1f * n(rng);
  for (auto& v : xn) v = n(rng);
  for (auto& v : a2) v = std::exp(2.0f * n(rng));
  const auto s = AwqScale(a2.data(), k, 0.6);
  for (size_t r = 0; r < rows; ++r) {
    double y = 0, y2 = 0, mag = 0;
    for (size_t j = 0; j < k; ++j) {
      y += w[r * k + j] * (g[j] * xn[j]);
      y2 += (w[r * k + j] * s[j]) * ((g[j] / s[j]) * xn[j]);
      mag += std::fabs(w[r * k + j] * g[j] * xn[j]);
    }
    EXPECT_NEAR(y, y2, 1e-6 * mag);
  }
}

}  // namespace
}  // namespace tessera::quant
