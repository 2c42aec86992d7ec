// Per-target tests of Dot, RMSNorm, Softmax, SiluMul, Axpy, AttendHead against double references.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tests/kernels/ops_test.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/tests/hwy_gtest.h"
#include "quantizer/kernels/ops-inl.h"
#include "quantizer/kernels/ref.h"
#include "tests/kernels/kernel_test_util.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace {

using ktest::Buf;

std::vector<size_t> Sizes() {
  std::vector<size_t> s;
  for (size_t n = 1; n <= 70; ++n) s.push_back(n);
  for (size_t n : {127, 128, 129, 1000, 4096, 4097}) s.push_back(n);
  return s;
}

void TestDot() {
  EXPECT_EQ(Dot(nullptr, nullptr, 0), 0.0f);
  for (size_t n : Sizes()) {
    Buf<float> a(n, 1), b(n, 3);
    ktest::FillUniform(a.data(), n, static_cast<uint32_t>(n), -3.0f, 3.0f);
    ktest::FillUniform(b.data(), n, static_cast<uint32_t>(n + 1000), -3.0f, 3.0f);
    double abs_sum = 0.0;
    for (size_t i = 0; i < n; ++i) abs_sum += std::fabs(static_cast<double>(a[i]) * b[i]);
    ASSERT_NEAR(Dot(a.data(), b.data(), n), Dot_ref(a.data(), b.data(), n), 2e-6 * abs_sum)
        << "n=" << n;
  }
}

void TestRMSNorm() {
  for (size_t n : Sizes()) {
    Buf<float> x(n, 1), w(n, 2), out(n + 1, 3);
    ktest::FillUniform(x.data(), n, static_cast<uint32_t>(n), -4.0f, 4.0f);
    ktest::FillUniform(w.data(), n, static_cast<uint32_t>(n + 7), 0.5f, 1.5f);
    std::vector<double> ref(n);
    RMSNorm_ref(x.data(), w.data(), n, 1e-5f, ref.data());
    out[n] = -7.0f;
    RMSNorm(x.data(), w.data(), n, 1e-5f, out.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(out[i], ref[i], 2e-6 * std::fabs(ref[i]) + 1e-7) << "n=" << n << " i=" << i;
    }
    ASSERT_EQ(out[n], -7.0f) << "wrote past the end";
    // In place (out aliases x).
    RMSNorm(x.data(), w.data(), n, 1e-5f, x.data());
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(x[i], out[i]);
  }
  // All zeros: finite output (eps).
  std::vector<float> z(19, 0.0f), w(19, 1.0f), o(19);
  RMSNorm(z.data(), w.data(), z.size(), 1e-6f, o.data());
  for (float v : o) EXPECT_EQ(v, 0.0f);
}

void CheckSoftmax(std::vector<float> in, const char* what) {
  const size_t n = in.size();
  Buf<float> x(n + 1, 1);
  for (size_t i = 0; i < n; ++i) x[i] = in[i];
  x[n] = 42.0f;
  std::vector<double> ref(n);
  Softmax_ref(in.data(), n, ref.data());
  Softmax(x.data(), n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(std::isfinite(x[i])) << what << " n=" << n << " i=" << i;
    ASSERT_GE(x[i], 0.0f);
    ASSERT_NEAR(x[i], ref[i], 2e-6 * ref[i] + 1e-9) << what << " n=" << n << " i=" << i;
    if (std::isinf(in[i])) {
      ASSERT_EQ(x[i], 0.0f);
    }
    sum += x[i];
  }
  bool all_masked = true;
  for (float v : in) all_masked &= (v == -std::numeric_limits<float>::infinity());
  ASSERT_NEAR(sum, all_masked ? 0.0 : 1.0, 1e-5) << what << " n=" << n;
  ASSERT_EQ(x[n], 42.0f) << "wrote past the end";
}

void TestSoftmax() {
  const float kNegInf = -std::numeric_limits<float>::infinity();
  for (size_t n : Sizes()) {
    std::vector<float> v(n);
    ktest::FillUniform(v.data(), n, static_cast<uint32_t>(n), -10.0f, 10.0f);
    CheckSoftmax(v, "uniform");
    for (size_t i = 0; i < n; i += 3) v[i] = kNegInf;  // causal-style masking
    CheckSoftmax(v, "masked");
    for (float& f : v) f = f * 30.0f + 500.0f;  // large logits: needs max subtraction
    CheckSoftmax(v, "large");
  }
  CheckSoftmax({3.0f}, "single");
  CheckSoftmax({kNegInf, 0.0f}, "one live");
  CheckSoftmax(std::vector<float>(37, kNegInf), "all masked");
  CheckSoftmax({-1e30f, 0.0f, -200.0f}, "very negative");
}

void TestSiluMul() {
  for (size_t n : Sizes()) {
    Buf<float> g(n, 1), u(n, 2), out(n + 1, 0);
    ktest::FillUniform(g.data(), n, static_cast<uint32_t>(n), -12.0f, 12.0f);
    ktest::FillUniform(u.data(), n, static_cast<uint32_t>(n + 5), -2.0f, 2.0f);
    if (n > 3) {
      g[0] = -120.0f;  // exp(-g) overflows
      g[1] = 120.0f;
      g[2] = 0.0f;
    }
    std::vector<double> ref(n);
    SiluMul_ref(g.data(), u.data(), n, ref.data());
    out[n] = 9.0f;
    SiluMul(g.data(), u.data(), n, out.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::isfinite(out[i]));
      ASSERT_NEAR(out[i], ref[i], 3e-6 * std::fabs(ref[i]) + 1e-30)
          << "n=" << n << " i=" << i << " g=" << g[i];
    }
    ASSERT_EQ(out[n], 9.0f);
  }
}

void TestAxpy() {
  for (size_t n : Sizes()) {
    Buf<float> x(n, 1), y(n + 1, 2);
    ktest::FillUniform(x.data(), n, static_cast<uint32_t>(n), -3.0f, 3.0f);
    ktest::FillUniform(y.data(), n, static_cast<uint32_t>(n + 9), -3.0f, 3.0f);
    y[n] = 5.0f;
    std::vector<double> ref(y.data(), y.data() + n);
    Axpy_ref(0.375f, x.data(), n, ref.data());
    Axpy(0.375f, x.data(), n, y.data());
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(y[i], ref[i], 1e-6 * (std::fabs(ref[i]) + 1.0));
    ASSERT_EQ(y[n], 5.0f);
  }
}

// Every op on inputs that end exactly at the end of their heap blocks (std::vector, no slack)
// for every tail length: nothing may read past n (the ASan build reports it; EMU128's
// MaskedLoad reads whole vectors). Results are checked against the references too.
void TestTailsStayInBounds() {
  for (size_t n = 1; n <= 40; ++n) {
    std::vector<float> a(n), b(n);
    ktest::FillUniform(a.data(), n, static_cast<uint32_t>(n), -3.0f, 3.0f);
    ktest::FillUniform(b.data(), n, static_cast<uint32_t>(n + 50), 0.5f, 1.5f);
    double abs_sum = 0.0;
    for (size_t i = 0; i < n; ++i) abs_sum += std::fabs(static_cast<double>(a[i]) * b[i]);
    ASSERT_NEAR(Dot(a.data(), b.data(), n), Dot_ref(a.data(), b.data(), n), 2e-6 * abs_sum);

    std::vector<float> out(n);
    std::vector<double> ref(n);
    RMSNorm(a.data(), b.data(), n, 1e-5f, out.data());
    RMSNorm_ref(a.data(), b.data(), n, 1e-5f, ref.data());
    for (size_t i = 0; i < n; ++i)
      ASSERT_NEAR(out[i], ref[i], 2e-6 * std::fabs(ref[i]) + 1e-7) << "RMSNorm n=" << n;

    SiluMul(a.data(), b.data(), n, out.data());
    SiluMul_ref(a.data(), b.data(), n, ref.data());
    for (size_t i = 0; i < n; ++i)
      ASSERT_NEAR(out[i], ref[i], 3e-6 * std::fabs(ref[i]) + 1e-30) << "SiluMul n=" << n;

    std::vector<float> y(b);
    ref.assign(b.begin(), b.end());
    Axpy(0.375f, a.data(), n, y.data());
    Axpy_ref(0.375f, a.data(), n, ref.data());
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(y[i], ref[i], 1e-6 * (std::fabs(ref[i]) + 1.0));

    std::vector<float> sm(a);
    Softmax(sm.data(), n);
    Softmax_ref(a.data(), n, ref.data());
    for (size_t i = 0; i < n; ++i)
      ASSERT_NEAR(sm[i], ref[i], 2e-6 * ref[i] + 1e-9) << "Softmax n=" << n;
  }
}

// AttendHead == Dot * scale per position, Softmax, Axpy per position: bit for bit.
void TestAttendHead() {
  for (size_t D : {1, 7, 16, 64, 80, 128}) {
    for (size_t n : {1, 2, 17, 64, 129}) {
      std::vector<float> q(D), k(n * D), v(n * D);
      ktest::FillUniform(q.data(), D, static_cast<uint32_t>(D * 31 + n), -2.0f, 2.0f);
      ktest::FillUniform(k.data(), n * D, static_cast<uint32_t>(D * 37 + n), -2.0f, 2.0f);
      ktest::FillUniform(v.data(), n * D, static_cast<uint32_t>(D * 41 + n), -2.0f, 2.0f);
      const float scale = 1.0f / std::sqrt(static_cast<float>(D));
      std::vector<float> scores(n, -1.0f), out(D, 7.0f);
      AttendHead(q.data(), k.data(), v.data(), n, D, scale, scores.data(), out.data());
      std::vector<float> s2(n), o2(D, 0.0f);
      for (size_t j = 0; j < n; ++j) s2[j] = Dot(q.data(), k.data() + j * D, D) * scale;
      Softmax(s2.data(), n);
      for (size_t j = 0; j < n; ++j) Axpy(s2[j], v.data() + j * D, D, o2.data());
      for (size_t j = 0; j < n; ++j)
        ASSERT_EQ(ktest::Bits(scores[j]), ktest::Bits(s2[j])) << "D=" << D << " n=" << n << " j=" << j;
      for (size_t i = 0; i < D; ++i)
        ASSERT_EQ(ktest::Bits(out[i]), ktest::Bits(o2[i])) << "D=" << D << " n=" << n << " i=" << i;
      // Against double precision: out = softmax(q.k * scale) . v.
      std::vector<double> sd(n);
      double mx = -1e300, sum = 0.0;
      for (size_t j = 0; j < n; ++j) {
        sd[j] = Dot_ref(q.data(), k.data() + j * D, D) * scale;
        mx = std::max(mx, sd[j]);
      }
      for (size_t j = 0; j < n; ++j) sum += (sd[j] = std::exp(sd[j] - mx));
      for (size_t i = 0; i < D; ++i) {
        double r = 0.0;
        for (size_t j = 0; j < n; ++j) r += sd[j] / sum * v[j * D + i];
        ASSERT_NEAR(out[i], r, 1e-4) << "D=" << D << " n=" << n << " i=" << i;
      }
    }
  }
}

}  // namespace
}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tessera::kernels {
HWY_BEFORE_TEST(OpsTest);
HWY_EXPORT_AND_TEST_P(OpsTest, TestDot);
HWY_EXPORT_AND_TEST_P(OpsTest, TestRMSNorm);
HWY_EXPORT_AND_TEST_P(OpsTest, TestSoftmax);
HWY_EXPORT_AND_TEST_P(OpsTest, TestSiluMul);
HWY_EXPORT_AND_TEST_P(OpsTest, TestAxpy);
HWY_EXPORT_AND_TEST_P(OpsTest, TestAttendHead);
HWY_EXPORT_AND_TEST_P(OpsTest, TestTailsStayInBounds);

TEST(OpsDispatchTest, PublicApi) {
  std::vector<float> a(333), b(333);
  ktest::FillUniform(a.data(), a.size(), 1);
  ktest::FillUniform(b.data(), b.size(), 2);
  EXPECT_NEAR(Dot(a.data(), b.data(), a.size()), Dot_ref(a.data(), b.data(), a.size()), 1e-4);
  std::vector<float> o(333);
  RMSNorm(a.data(), b.data(), a.size(), 1e-6f, o.data());
  SiluMul(a.data(), b.data(), a.size(), o.data());
  Axpy(2.0f, a.data(), a.size(), o.data());
  Softmax(o.data(), o.size());
  double s = 0.0;
  for (float v : o) s += v;
  EXPECT_NEAR(s, 1.0, 1e-5);
  const std::string name = ActiveTargetName();
  EXPECT_FALSE(name.empty());
  EXPECT_EQ(name, hwy::TargetName(hwy::SupportedAndGeneratedTargets()[0]));
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
