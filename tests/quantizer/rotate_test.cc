// quantizer/rotate.h: the fast Walsh-Hadamard transform and the randomized Hadamard rotation
// against dense scalar references, orthogonality of both kinds of Q, determinism per seed.
#include "quantizer/rotate.h"

#include <bit>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace tessera::quant {
namespace {

// Sylvester's H_n by its definition, H[i][j] = (-1)^popcount(i & j), times x (dense reference).
std::vector<double> DenseHadamardTimes(const std::vector<double>& x) {
  const size_t n = x.size();
  std::vector<double> y(n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) y[i] += ((std::popcount(i & j) & 1) ? -1.0 : 1.0) * x[j];
  return y;
}

std::vector<double> Gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  std::vector<double> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

TEST(Rotate, FwhtMatchesDenseHadamard) {
  for (size_t n : {1, 2, 4, 8, 64, 256}) {
    std::vector<double> x = Gaussian(n, static_cast<uint32_t>(n));
    const std::vector<double> want = DenseHadamardTimes(x);
    Fwht(x.data(), n);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(x[i], want[i], 1e-12 * static_cast<double>(n)) << "n=" << n << " i=" << i;
  }
}

// x Q by ApplyRow against x times the dense Q (for Hadamard: built from signs and the definition
// of H, not from the transform), for both kinds.
TEST(Rotate, ApplyRowMatchesDenseProduct) {
  for (size_t n : {16, 64, 256, 48, 96}) {
    const Rotation q = MakeRotation(n, 7);
    EXPECT_EQ(q.kind, std::has_single_bit(n) ? Rotation::Kind::kHadamard : Rotation::Kind::kRandomOrthogonal) << n;
    const std::vector<double> d = q.Dense();
    ASSERT_EQ(d.size(), n * n);
    for (uint32_t trial = 0; trial < 3; ++trial) {
      std::vector<double> x = Gaussian(n, 100 + trial);
      std::vector<double> want(n, 0.0);
      for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < n; ++j) want[j] += x[i] * d[i * n + j];
      q.ApplyRow(x.data());
      for (size_t j = 0; j < n; ++j) EXPECT_NEAR(x[j], want[j], 1e-12) << "n=" << n << " j=" << j;
    }
    // The float overload rounds the same double result.
    std::vector<double> xd = Gaussian(n, 5);
    std::vector<float> xf(xd.begin(), xd.end());
    for (size_t i = 0; i < n; ++i) xd[i] = xf[i];
    q.ApplyRow(xd.data());
    q.ApplyRow(xf.data());
    for (size_t j = 0; j < n; ++j) EXPECT_EQ(xf[j], static_cast<float>(xd[j]));
  }
}

TEST(Rotate, QIsOrthogonal) {
  for (size_t n : {8, 64, 256, 24, 100}) {
    const std::vector<double> d = MakeRotation(n, 3).Dense();
    double worst = 0;
    for (size_t a = 0; a < n; ++a)
      for (size_t b = 0; b < n; ++b) {
        double dot = 0;
        for (size_t k = 0; k < n; ++k) dot += d[k * n + a] * d[k * n + b];  // (Q^T Q)[a][b]
        worst = std::max(worst, std::fabs(dot - (a == b ? 1.0 : 0.0)));
      }
    EXPECT_LT(worst, 1e-12) << "n=" << n;
  }
}

TEST(Rotate, SeedsAreDeterministicAndDistinct) {
  for (size_t n : {64, 48}) {
    const std::vector<double> a = MakeRotation(n, 1).Dense(), b = MakeRotation(n, 1).Dense(),
                              c = MakeRotation(n, 2).Dense();
    EXPECT_EQ(a, b) << n;
    EXPECT_NE(a, c) << n;
  }
  // Hadamard signs are not all equal (a seed really randomizes them).
  const Rotation q = MakeRotation(256, 0);
  int neg = 0;
  for (double s : q.signs) neg += s < 0;
  EXPECT_GT(neg, 64);
  EXPECT_LT(neg, 192);
}

// A rotation spreads one outlier channel over the whole width (what int4 groups need).
TEST(Rotate, SpreadsAnOutlierChannel) {
  for (size_t n : {256, 96}) {
    std::vector<double> x(n, 0.0);
    x[5] = 1.0;
    MakeRotation(n, 11).ApplyRow(x.data());
    double mx = 0, ss = 0;
    for (double v : x) {
      mx = std::max(mx, std::fabs(v));
      ss += v * v;
    }
    EXPECT_NEAR(ss, 1.0, 1e-12);
    if (n == 256) EXPECT_NEAR(mx, 1.0 / 16.0, 1e-15);  // every entry +-1/sqrt(n)
    else EXPECT_LT(mx, 0.5);
  }
}

}  // namespace
}  // namespace tessera::quant
