// Scale search (quantizer/search.h): never worse than RTN on the weighted error, codes are the
// nearest for the chosen scale/min, deterministic, the threaded tensor path equals the scalar
// reference, and quantize -> dequantize error bounds per scheme.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/half.h"
#include "gtest/gtest.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/kernels/ref.h"
#include "quantizer/gptq.h"
#include "quantizer/quantize.h"
#include "quantizer/search.h"
#include "tests/quantizer/quant_test_util.h"

namespace tessera {
namespace {

using kernels::DequantizeRowI4Asym_ref;
using kernels::DequantizeRowI4Sym_ref;

// Weight-like data: gaussian with occasional outliers, some all-zero / constant / tiny groups.
std::vector<float> Data(size_t n, size_t group, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(n);
  for (size_t g = 0; g < n / group; ++g) {
    const int kind = static_cast<int>(g % 9);
    for (size_t i = 0; i < group; ++i) {
      float v = nd(rng);
      if (u(rng) < 0.03f) v *= 8.0f;                // outliers
      if (kind == 1) v = 0.0f;                      // zero group
      if (kind == 2) v = 0.0125f;                   // constant group
      if (kind == 3) v *= 1e-6f;                    // f16-subnormal scales
      if (kind == 4) v = std::fabs(v) + 0.1f;       // one-signed, offset (asym's case)
      x[g * group + i] = v;
    }
  }
  return x;
}

std::vector<float> Weights(const std::vector<float>& x, int mode, uint32_t seed) {
  std::vector<float> w(x.size());
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 2.0f);
  for (size_t i = 0; i < x.size(); ++i) {
    if (mode == 1) w[i] = x[i] * x[i] + 1e-4f;
    else if (mode == 2) w[i] = u(rng) * u(rng) * u(rng);  // imatrix-like, spread out
    else w[i] = (i % 7 == 3) ? 0.0f : u(rng);             // some zero weights
  }
  return w;
}

int Nib(const uint8_t* codes, size_t group, size_t i) {
  const size_t g = i / group, j = i % group, half = group / 2;
  const uint8_t b = codes[g * half + (j < half ? j : j - half)];
  return j < half ? (b & 0xF) : (b >> 4);
}

class SearchTest : public ::testing::TestWithParam<size_t> {};

TEST_P(SearchTest, SymNeverWorseThanRtnAndCodesNearest) {
  const size_t G = GetParam(), ng = 45, n = G * ng;
  for (int mode = -1; mode < 3; ++mode) {
    auto x = Data(n, G, static_cast<uint32_t>(G * 10 + mode + 1));
    std::vector<float> w;
    if (mode >= 0) w = Weights(x, mode, 7);
    const float* wp = mode >= 0 ? w.data() : nullptr;
    std::vector<uint8_t> c(n / 2), cr(n / 2);
    std::vector<uint16_t> s(ng), sr(ng);
    quant::QuantizeRowI4SymSearch_ref(x.data(), wp, n, G, c.data(), s.data());
    kernels::QuantizeRowI4Sym_ref(x.data(), n, G, cr.data(), sr.data());
    double tot = 0, tot_rtn = 0;
    for (size_t g = 0; g < ng; ++g) {
      const double e = quant::GroupErrorI4Sym(x.data() + g * G, wp ? wp + g * G : nullptr, G, c.data() + g * G / 2, s[g]);
      const double er = quant::GroupErrorI4Sym(x.data() + g * G, wp ? wp + g * G : nullptr, G, cr.data() + g * G / 2, sr[g]);
      ASSERT_LE(e, er) << "G=" << G << " mode=" << mode << " group " << g;
      tot += e;
      tot_rtn += er;
      // Codes are the nearest (clamped) for the stored scale.
      const float d = F16ToF32(s[g]);
      for (size_t i = 0; i < G; ++i) {
        const int want = d == 0.0f ? 8 : static_cast<int>(std::nearbyint(std::min(std::max(x[g * G + i] * (1.0f / d), -8.0f), 7.0f))) + 8;
        ASSERT_EQ(Nib(c.data(), G, g * G + i), want) << "group " << g << " i " << i;
      }
    }
    EXPECT_LT(tot, tot_rtn) << "the search should strictly win overall (G=" << G << ", mode " << mode << ")";
    // Dequantized with the kernels' reference: error matches GroupError exactly (same arithmetic).
    std::vector<float> xh(n);
    DequantizeRowI4Sym_ref(c.data(), s.data(), n, G, xh.data());
    const double e2 = quant::test::WeightedSse(x.data(), xh.data(), wp, n);
    EXPECT_NEAR(e2, tot, 1e-9 * (1 + tot));
  }
}

TEST_P(SearchTest, AsymNeverWorseThanRtnAndCodesNearest) {
  const size_t G = GetParam(), ng = 45, n = G * ng;
  for (int mode = -1; mode < 3; ++mode) {
    auto x = Data(n, G, static_cast<uint32_t>(G * 20 + mode + 1));
    std::vector<float> w;
    if (mode >= 0) w = Weights(x, mode, 9);
    const float* wp = mode >= 0 ? w.data() : nullptr;
    std::vector<uint8_t> c(n / 2), cr(n / 2);
    std::vector<uint16_t> s(ng), sr(ng), m(ng), mr(ng);
    quant::QuantizeRowI4AsymSearch_ref(x.data(), wp, n, G, c.data(), s.data(), m.data());
    kernels::QuantizeRowI4Asym_ref(x.data(), n, G, cr.data(), sr.data(), mr.data());
    double tot = 0, tot_rtn = 0;
    for (size_t g = 0; g < ng; ++g) {
      const float* wg = wp ? wp + g * G : nullptr;
      const double e = quant::GroupErrorI4Asym(x.data() + g * G, wg, G, c.data() + g * G / 2, s[g], m[g]);
      const double er = quant::GroupErrorI4Asym(x.data() + g * G, wg, G, cr.data() + g * G / 2, sr[g], mr[g]);
      ASSERT_LE(e, er) << "G=" << G << " mode=" << mode << " group " << g;
      tot += e;
      tot_rtn += er;
      const float sc = F16ToF32(s[g]), mn = F16ToF32(m[g]);
      for (size_t i = 0; i < G; ++i) {
        const int want = sc == 0.0f ? 0 : static_cast<int>(std::nearbyint(std::min(std::max((x[g * G + i] - mn) * (1.0f / sc), 0.0f), 15.0f)));
        ASSERT_EQ(Nib(c.data(), G, g * G + i), want) << "group " << g << " i " << i;
      }
    }
    EXPECT_LT(tot, tot_rtn) << "G=" << G << ", mode " << mode;
    std::vector<float> xh(n);
    DequantizeRowI4Asym_ref(c.data(), s.data(), m.data(), n, G, xh.data());
    const double e2 = quant::test::WeightedSse(x.data(), xh.data(), wp, n);
    EXPECT_NEAR(e2, tot, 1e-9 * (1 + tot));
  }
}

TEST_P(SearchTest, ZeroWeightsOrZeroGroupsKeepRtn) {
  const size_t G = GetParam(), n = 3 * G;
  auto x = Data(n, G, 5);
  std::vector<float> w(n, 0.0f);
  std::vector<uint8_t> c(n / 2), cr(n / 2);
  std::vector<uint16_t> s(3), sr(3), m(3), mr(3);
  quant::QuantizeRowI4SymSearch_ref(x.data(), w.data(), n, G, c.data(), s.data());
  kernels::QuantizeRowI4Sym_ref(x.data(), n, G, cr.data(), sr.data());
  EXPECT_EQ(c, cr);
  EXPECT_EQ(s, sr);
  quant::QuantizeRowI4AsymSearch_ref(x.data(), w.data(), n, G, c.data(), s.data(), m.data());
  kernels::QuantizeRowI4Asym_ref(x.data(), n, G, cr.data(), sr.data(), mr.data());
  EXPECT_EQ(c, cr);
  EXPECT_EQ(s, sr);
  EXPECT_EQ(m, mr);
  std::vector<float> z(n, 0.0f);
  quant::QuantizeRowI4SymSearch_ref(z.data(), nullptr, n, G, c.data(), s.data());
  for (uint8_t b : c) EXPECT_EQ(b, 0x88);
  for (uint16_t v : s) EXPECT_EQ(v, 0);
}

// int6: the same search with 64 levels. Never worse than int6 RTN per group, strictly better
// overall, codes the nearest for the stored scale, and GroupErrorI6Sym equals the error of the
// reference dequantization.
TEST_P(SearchTest, Int6SymNeverWorseThanRtnAndCodesNearest) {
  const size_t G = GetParam(), ng = 45, n = G * ng;
  for (int mode = -1; mode < 3; ++mode) {
    auto x = Data(n, G, static_cast<uint32_t>(G * 30 + mode + 1));
    std::vector<float> w;
    if (mode >= 0) w = Weights(x, mode, 13);
    const float* wp = mode >= 0 ? w.data() : nullptr;
    std::vector<uint8_t> c(3 * n / 4), cr(3 * n / 4);
    std::vector<uint16_t> s(ng), sr(ng);
    quant::QuantizeRowI6SymSearch_ref(x.data(), wp, n, G, c.data(), s.data());
    kernels::QuantizeRowI6Sym_ref(x.data(), n, G, cr.data(), sr.data());
    std::vector<int> q(n);
    kernels::UnpackI6_ref(c.data(), n, G, q.data());
    double tot = 0, tot_rtn = 0;
    for (size_t g = 0; g < ng; ++g) {
      const float* wg = wp ? wp + g * G : nullptr;
      const double e = quant::GroupErrorI6Sym(x.data() + g * G, wg, G, c.data() + g * 3 * G / 4, s[g]);
      const double er = quant::GroupErrorI6Sym(x.data() + g * G, wg, G, cr.data() + g * 3 * G / 4, sr[g]);
      ASSERT_LE(e, er) << "G=" << G << " mode=" << mode << " group " << g;
      tot += e;
      tot_rtn += er;
      const float d = F16ToF32(s[g]);
      for (size_t i = 0; i < G; ++i) {
        const int want = d == 0.0f ? 0 : static_cast<int>(std::nearbyint(std::min(std::max(x[g * G + i] * (1.0f / d), -32.0f), 31.0f)));
        ASSERT_EQ(q[g * G + i], want) << "group " << g << " i " << i;
      }
    }
    EXPECT_LT(tot, tot_rtn) << "G=" << G << ", mode " << mode;
    std::vector<float> xh(n);
    kernels::DequantizeRowI6Sym_ref(c.data(), s.data(), n, G, xh.data());
    const double e2 = quant::test::WeightedSse(x.data(), xh.data(), wp, n);
    EXPECT_NEAR(e2, tot, 1e-9 * (1 + tot));
  }
}

INSTANTIATE_TEST_SUITE_P(Groups, SearchTest, ::testing::Values(32, 64, 128));

// GPTQ with int6 levels on a correlated covariance: the output-error proxy (x - xh) H (x - xh)^T
// is below int6 search's (weighted by diag H) and far below int4 GPTQ's; the codes are in range and
// the stored bytes decode to what the proxy was computed on.
TEST(Gptq, Int6BeatsSearchAndInt4OnTheHessianError) {
  const size_t k = 96, rows = 24, G = 32;
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  // H = A A^T / m + small ridge: correlated channels with uneven energy.
  const size_t m = 200;
  std::vector<double> a(k * m);
  for (size_t i = 0; i < k; ++i)
    for (size_t j = 0; j < m; ++j) a[i * m + j] = nd(rng) * (1.0 + static_cast<double>(i % 5)) + 0.5 * nd(rng);
  std::vector<double> h(k * k);
  for (size_t i = 0; i < k; ++i)
    for (size_t j = 0; j < k; ++j) {
      double sum = 0;
      for (size_t t = 0; t < m; ++t) sum += a[i * m + t] * a[j * m + t];
      h[i * k + j] = sum / static_cast<double>(m) + (i == j ? 1e-3 : 0.0);
    }
  auto f = quant::GptqPrepare(h.data(), k);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<float> act2(k);
  for (size_t i = 0; i < k; ++i) act2[i] = static_cast<float>(h[i * k + i]);
  auto x = Data(rows * k, 8, 77);
  double e6g = 0, e6s = 0, e4g = 0;
  const size_t ng = k / G;
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * k;
    std::vector<uint8_t> c6(3 * k / 4), c6s(3 * k / 4), c4(k / 2);
    std::vector<uint16_t> s6(ng), s6s(ng), s4(ng);
    quant::QuantizeRowI6SymGptq_ref(xr, k, k, G, *f, act2.data(), c6.data(), s6.data());
    quant::QuantizeRowI6SymSearch_ref(xr, act2.data(), k, G, c6s.data(), s6s.data());
    quant::QuantizeRowI4SymGptq_ref(xr, k, k, G, *f, act2.data(), c4.data(), s4.data());
    std::vector<float> d6(k), d6s(k), d4(k);
    kernels::DequantizeRowI6Sym_ref(c6.data(), s6.data(), k, G, d6.data());
    kernels::DequantizeRowI6Sym_ref(c6s.data(), s6s.data(), k, G, d6s.data());
    kernels::DequantizeRowI4Sym_ref(c4.data(), s4.data(), k, G, d4.data());
    std::vector<int> q(k);
    kernels::UnpackI6_ref(c6.data(), k, G, q.data());
    for (int v : q) {
      ASSERT_GE(v, -32);
      ASSERT_LE(v, 31);
    }
    e6g += quant::HessianError(xr, d6.data(), k, h.data());
    e6s += quant::HessianError(xr, d6s.data(), k, h.data());
    e4g += quant::HessianError(xr, d4.data(), k, h.data());
  }
  EXPECT_LT(e6g, e6s);
  EXPECT_LT(e6g * 8, e4g);  // 4x finer steps: about 16x less error
}

// Sequential GPTQ's target: with H = E[x~ x~^T] and C = E[x x~^T], w + w A (A = GptqTargetMap,
// no damping) is the least-squares row w' minimising E[(w x - w' x~)^2], checked against the
// normal equations solved by Gaussian elimination; damping keeps it better than w itself; C = H
// gives A = 0 exactly.
TEST(Gptq, TargetMapIsTheLeastSquaresRow) {
  const size_t k = 12, n = 400;
  std::mt19937 rng(5);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> x(n * k), xq(n * k);
  for (size_t t = 0; t < n; ++t) {
    const double common = nd(rng);
    for (size_t i = 0; i < k; ++i) x[t * k + i] = nd(rng) * (1.0 + 0.2 * static_cast<double>(i)) + 0.5 * common;
    for (size_t i = 0; i < k; ++i)  // x~: x shrunk, leaked into the next channel, plus noise
      xq[t * k + i] = 0.9 * x[t * k + i] + 0.2 * x[t * k + (i + 1) % k] + 0.1 * nd(rng);
  }
  std::vector<double> h(k * k, 0.0), c(k * k, 0.0);
  for (size_t t = 0; t < n; ++t)
    for (size_t i = 0; i < k; ++i)
      for (size_t j = 0; j < k; ++j) {
        h[i * k + j] += xq[t * k + i] * xq[t * k + j] / n;
        c[i * k + j] += x[t * k + i] * xq[t * k + j] / n;
      }
  std::vector<float> w(k);
  for (size_t i = 0; i < k; ++i) w[i] = static_cast<float>(nd(rng));
  // Normal equations H v = E[x~ (w . x)] = C^T w, by Gaussian elimination with partial pivoting.
  std::vector<double> m(k * (k + 1));
  for (size_t i = 0; i < k; ++i) {
    for (size_t j = 0; j < k; ++j) m[i * (k + 1) + j] = h[i * k + j];
    double r = 0;
    for (size_t a = 0; a < k; ++a) r += c[a * k + i] * w[a];
    m[i * (k + 1) + k] = r;
  }
  for (size_t col = 0; col < k; ++col) {
    size_t piv = col;
    for (size_t r = col + 1; r < k; ++r)
      if (std::fabs(m[r * (k + 1) + col]) > std::fabs(m[piv * (k + 1) + col])) piv = r;
    for (size_t j = 0; j <= k; ++j) std::swap(m[col * (k + 1) + j], m[piv * (k + 1) + j]);
    for (size_t r = 0; r < k; ++r) {
      if (r == col) continue;
      const double f = m[r * (k + 1) + col] / m[col * (k + 1) + col];
      for (size_t j = col; j <= k; ++j) m[r * (k + 1) + j] -= f * m[col * (k + 1) + j];
    }
  }
  auto a0 = quant::GptqTargetMap(h.data(), c.data(), k, 0.0);
  ASSERT_TRUE(a0.ok()) << a0.status();
  std::vector<float> wt = w;
  quant::ApplyTargetMap(a0->data(), k, wt.data());
  for (size_t i = 0; i < k; ++i) {
    const double v = m[i * (k + 1) + k] / m[i * (k + 1) + i];
    EXPECT_NEAR(wt[i], v, 1e-4 * (1.0 + std::fabs(v))) << i;
  }
  // The objective E[(w x - w' x~)^2]: the exact row beats the damped one, which beats w.
  auto objective = [&](const std::vector<float>& v) {
    double s = 0;
    for (size_t t = 0; t < n; ++t) {
      double e = 0;
      for (size_t i = 0; i < k; ++i) e += w[i] * x[t * k + i] - v[i] * xq[t * k + i];
      s += e * e;
    }
    return s / n;
  };
  auto ad = quant::GptqTargetMap(h.data(), c.data(), k);
  ASSERT_TRUE(ad.ok());
  std::vector<float> wd = w;
  quant::ApplyTargetMap(ad->data(), k, wd.data());
  EXPECT_LE(objective(wt), objective(wd) * (1 + 1e-6));
  EXPECT_LT(objective(wd), 0.5 * objective(w));
  // Inputs that agree (C = H): the map is exactly zero, the row unchanged.
  auto az = quant::GptqTargetMap(h.data(), h.data(), k);
  ASSERT_TRUE(az.ok());
  for (double v : *az) EXPECT_EQ(v, 0.0);
  std::vector<float> wz = w;
  quant::ApplyTargetMap(az->data(), k, wz.data());
  EXPECT_EQ(wz, w);
}

// A PackTensor view over f32 data.
PackTensor F32Tensor(const std::vector<float>& v, int64_t rows, int64_t k) {
  PackTensor t;
  t.name = "w";
  t.qtype = QType::kF32;
  t.shape = {rows, k};
  t.cols = static_cast<uint64_t>(k);
  t.data = reinterpret_cast<const uint8_t*>(v.data());
  t.data_bytes = v.size() * 4;
  t.total_bytes = t.data_bytes;
  return t;
}

TEST(QuantizeTensor, SearchPathEqualsScalarReferenceAndIsDeterministic) {
  const int64_t rows = 37, k = 172;  // K not a multiple of the group: padded
  auto x = Data(static_cast<size_t>(rows * k), 4, 11);
  std::vector<float> act2(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) act2[static_cast<size_t>(i)] = 0.1f + static_cast<float>(i % 13);
  const PackTensor t = F32Tensor(x, rows, k);
  for (QType type : {QType::kI4Sym, QType::kI4Asym, QType::kI6Sym}) {
    for (uint32_t g : {32u, 64u, 128u}) {
      for (const float* a : {static_cast<const float*>(nullptr), static_cast<const float*>(act2.data())}) {
        auto q = QuantizeTensor(t, TensorScheme{type, g}, QuantAlgorithm::kSearch, a);
        auto q2 = QuantizeTensor(t, TensorScheme{type, g}, QuantAlgorithm::kSearch, a);
        ASSERT_TRUE(q.ok() && q2.ok());
        EXPECT_EQ(q->data, q2->data);
        EXPECT_EQ(q->scales, q2->scales);
        EXPECT_EQ(q->mins, q2->mins);
        const size_t kp = (static_cast<size_t>(k) + g - 1) / g * g, ng = kp / g;
        ASSERT_EQ(q->cols, kp);
        std::vector<float> row(kp, 0.0f), w(kp), ap(kp, 0.0f);
        std::copy(act2.begin(), act2.end(), ap.begin());
        const size_t row_bytes = type == QType::kI6Sym ? kp / 4 * 3 : kp / 2;
        std::vector<uint8_t> c(row_bytes);
        std::vector<uint16_t> s(ng), m(ng);
        for (int64_t r = 0; r < rows; ++r) {
          std::copy_n(x.data() + r * k, k, row.data());
          quant::SearchWeights(row.data(), kp, static_cast<size_t>(k), a ? ap.data() : nullptr, w.data());
          if (type == QType::kI4Sym)
            quant::QuantizeRowI4SymSearch_ref(row.data(), w.data(), kp, g, c.data(), s.data());
          else if (type == QType::kI6Sym)
            quant::QuantizeRowI6SymSearch_ref(row.data(), w.data(), kp, g, c.data(), s.data());
          else
            quant::QuantizeRowI4AsymSearch_ref(row.data(), w.data(), kp, g, c.data(), s.data(), m.data());
          ASSERT_EQ(0, std::memcmp(c.data(), q->data.data() + static_cast<size_t>(r) * row_bytes, row_bytes)) << r;
          ASSERT_EQ(0, std::memcmp(s.data(), q->scales.data() + static_cast<size_t>(r) * ng * 2, ng * 2)) << r;
          if (type == QType::kI4Asym) {
            ASSERT_EQ(0, std::memcmp(m.data(), q->mins.data() + static_cast<size_t>(r) * ng * 2, ng * 2)) << r;
          }
        }
      }
    }
  }
}

TEST(QuantizeTensor, RtnPathEqualsKernels) {
  const int64_t rows = 9, k = 256;
  auto x = Data(static_cast<size_t>(rows * k), 32, 3);
  const PackTensor t = F32Tensor(x, rows, k);
  auto q = QuantizeTensor(t, TensorScheme{QType::kI4Sym, 32}, QuantAlgorithm::kRtn);
  ASSERT_TRUE(q.ok());
  std::vector<uint8_t> c(static_cast<size_t>(rows * k / 2));
  std::vector<uint16_t> s(static_cast<size_t>(rows * k / 32));
  kernels::QuantizeRowI4Sym_ref(x.data(), static_cast<size_t>(rows * k), 32, c.data(), s.data());
  EXPECT_EQ(q->data, c);
  EXPECT_EQ(0, std::memcmp(q->scales.data(), s.data(), s.size() * 2));
  auto q6 = QuantizeTensor(t, TensorScheme{QType::kI6Sym, 32}, QuantAlgorithm::kRtn);
  ASSERT_TRUE(q6.ok());
  std::vector<uint8_t> c6(static_cast<size_t>(rows * k / 4 * 3));
  kernels::QuantizeRowI6Sym_ref(x.data(), static_cast<size_t>(rows * k), 32, c6.data(), s.data());
  EXPECT_EQ(q6->data, c6);
  EXPECT_EQ(0, std::memcmp(q6->scales.data(), s.data(), s.size() * 2));
}

// Quantize -> dequantize error bounds per scheme on gaussian weights (relative RMSE; int6 measured
// 0.0215 / 0.0200 / 0.0241 / 0.0255 against int4-g32 rtn 0.0867: a quarter of the step) and per
// element (in units of the group's step).
TEST(QuantizeTensor, RoundTripErrorBoundsPerScheme) {
  const int64_t rows = 64, k = 256;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> x(static_cast<size_t>(rows * k));
  for (float& v : x) v = nd(rng);
  const PackTensor t = F32Tensor(x, rows, k);
  struct Case {
    const char* scheme;
    QuantAlgorithm alg;
    double max_rel_rmse;
  };
  const Case cases[] = {
      {"int4-g32-sym", QuantAlgorithm::kRtn, 0.13},   {"int4-g32-sym", QuantAlgorithm::kSearch, 0.115},
      {"int4-g64-asym", QuantAlgorithm::kRtn, 0.12},  {"int4-g64-asym", QuantAlgorithm::kSearch, 0.105},
      {"int4-g128-asym", QuantAlgorithm::kRtn, 0.13}, {"int4-g128-asym", QuantAlgorithm::kSearch, 0.115},
      {"int4-g32-asym", QuantAlgorithm::kSearch, 0.09}, {"int8-g32", QuantAlgorithm::kRtn, 0.006},
      {"int6-g32", QuantAlgorithm::kRtn, 0.024},      {"int6-g32", QuantAlgorithm::kSearch, 0.0215},
      {"int6-g64", QuantAlgorithm::kRtn, 0.027},      {"int6-g128", QuantAlgorithm::kSearch, 0.028},
      {"f16", QuantAlgorithm::kDefault, 3e-4},        {"bf16", QuantAlgorithm::kDefault, 2.5e-3},
  };
  double ss = 0;
  for (float v : x) ss += static_cast<double>(v) * v;
  for (const Case& c : cases) {
    auto s = ParseScheme(c.scheme);
    ASSERT_TRUE(s.ok());
    auto q = QuantizeTensor(t, *s, c.alg);
    ASSERT_TRUE(q.ok());
    kernels::WeightMatrix w;
    w.type = static_cast<kernels::WType>(q->qtype);
    w.data = q->data.data();
    w.scales = reinterpret_cast<const uint16_t*>(q->scales.data());
    w.mins = reinterpret_cast<const uint16_t*>(q->mins.data());
    w.rows = static_cast<size_t>(rows);
    w.cols = q->cols;
    w.group = q->group;
    std::vector<float> row(q->cols);
    double es = 0, worst_steps = 0;
    for (int64_t r = 0; r < rows; ++r) {
      kernels::DequantizeRow_ref(w, static_cast<size_t>(r), row.data());
      for (int64_t i = 0; i < k; ++i) {
        const double e = row[static_cast<size_t>(i)] - x[static_cast<size_t>(r * k + i)];
        es += e * e;
        if (q->group) {
          const float step = std::fabs(F16ToF32(w.scales[static_cast<size_t>(r) * (q->cols / q->group) + static_cast<size_t>(i) / q->group]));
          if (step > 0) worst_steps = std::max(worst_steps, std::fabs(e) / step);
        }
      }
    }
    const double rel = std::sqrt(es / ss);
    EXPECT_LT(rel, c.max_rel_rmse) << c.scheme << " " << QuantAlgorithmName(c.alg);
    // RTN: at most half a step (+ clipping of the opposite extreme for sym: one step); the search
    // may clip outliers but never by more than a few steps.
    if (q->group) {
      EXPECT_LE(worst_steps, c.alg == QuantAlgorithm::kRtn ? 1.01 : 3.0) << c.scheme;
    }
  }
}

}  // namespace
}  // namespace tessera
