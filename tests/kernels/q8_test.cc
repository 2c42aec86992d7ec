// Per-target tests of the int8-activation kernels: activation quantization bit-exact against
// the scalar reference; MatMulQ8 on repacked I6 sym weights (the I4 sym / I4 nl / I8 GEMM: gemm_test)
// against MatMulQ8_ref (computed from the original, not repacked, codes) and against the f32 double-precision dot within the
// activation-quantization error bound; solo == batched bit-identity for T = 1..20, 31, 64, and
// the same bits when the row blocks are split over two calls.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tests/kernels/q8_test.cc"
#include "core/half.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/tests/hwy_gtest.h"
#include "quantizer/kernels/q8-inl.h"
#include "quantizer/kernels/ref.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/q8_test_util.h"

#ifndef TESSERA_TESTS_Q8_TEST_HELPERS_
#define TESSERA_TESTS_Q8_TEST_HELPERS_
namespace tessera::kernels::q8test {

using ktest::OwnedQ8Acts;
using ktest::OwnedQ8Matrix;

// A quantized matrix repacked into MatMulQ8's layout.
inline OwnedQ8Matrix MakeQ8Matrix(WType type, size_t rows, size_t cols, size_t group,
                                  uint32_t seed) {
  OwnedQ8Matrix m = ktest::QuantizedQ8Matrix(type, rows, cols, group, seed);
  m.packed.assign(Q8RepackedBytes(m.w), 0xEE);
  const size_t rbs = (rows + kQ8RowBlock - 1) / kQ8RowBlock;
  // Two calls (row block ranges) to check RepackQ8's sub-range contract.
  RepackQ8(m.w, 0, rbs / 2, m.packed.data());
  RepackQ8(m.w, rbs / 2, rbs, m.packed.data());
  m.q8.type = type;
  m.q8.data = m.packed.data();
  m.q8.rows = rows;
  m.q8.Kp = Q8PaddedK(cols);
  return m;
}

}  // namespace tessera::kernels::q8test
#endif  // TESSERA_TESTS_Q8_TEST_HELPERS_

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace {

void TestQuantizeActsQ8MatchesRef() {
  uint32_t seed = 7;
  for (size_t K : {1, 31, 32, 33, 100, 512, 513, 1000, 2048}) {
    for (size_t T : {1, 3}) {
      const size_t ldx = K + 5;
      ktest::Buf<float> x(T * ldx, seed % 3);
      ktest::FillWeights(x.data(), T * ldx, 32, seed++, 1.5f);
      x[0] = 0.5f;  // exact ties after scaling are rounded half-to-even on every target
      q8test::OwnedQ8Acts got(T, K), ref(T, K);
      HWY_NAMESPACE::QuantizeActsQ8(x.data(), ldx, K, got.a, 0, T);
      QuantizeActsQ8_ref(x.data(), ldx, K, ref.a, 0, T);
      ASSERT_EQ(got.q, ref.q) << "K=" << K << " T=" << T;
      ASSERT_EQ(got.sum, ref.sum) << "K=" << K << " T=" << T;
      for (size_t i = 0; i < got.d.size(); ++i)
        ASSERT_EQ(ktest::Bits(got.d[i]), ktest::Bits(ref.d[i])) << "K=" << K << " block " << i;
      // Dequantized activations are within half a step of x.
      const size_t nb = got.a.Kp / kQ8Block;
      for (size_t t = 0; t < T; ++t) {
        for (size_t k = 0; k < got.a.Kp; ++k) {
          const float d = got.d[t * nb + k / kQ8Block];
          const float xv = k < K ? x[t * ldx + k] : 0.0f;
          ASSERT_LE(std::fabs(Q8ActAt_ref(got.a, t, k) * d - xv), 0.5f * d * 1.0001f + 1e-30f)
              << "K=" << K << " t=" << t << " k=" << k;
        }
      }
    }
  }
}

struct Case {
  WType type;
  size_t rows, cols, group;
};

void CheckMatMulQ8(const Case& c, size_t T, uint32_t seed) {
  q8test::OwnedQ8Matrix m = q8test::MakeQ8Matrix(c.type, c.rows, c.cols, c.group, seed);
  const size_t ldx = c.cols + 3, ldy = c.rows + 2;
  ktest::Buf<float> x(T * ldx, seed % 2);
  ktest::FillUniform(x.data(), T * ldx, seed + 1, -2.0f, 2.0f);
  q8test::OwnedQ8Acts a(T, c.cols);
  HWY_NAMESPACE::QuantizeActsQ8(x.data(), ldx, c.cols, a.a, 0, T);
  const size_t rbs = (c.rows + kQ8RowBlock - 1) / kQ8RowBlock;
  const size_t rb0 = rbs > 1 ? 1 : 0;  // a row-block sub-range
  std::vector<float> y(T * ldy, -777.0f);
  HWY_NAMESPACE::MatMulQ8(m.q8, a.a, T, y.data(), ldy, rb0, rbs);
  std::vector<double> yref(T * ldy);
  MatMulQ8_ref(m.w, a.a, T, yref.data(), ldy, 0, c.rows);
  const size_t nb = a.a.Kp / kQ8Block;
  const std::string what = ktest::Q8CaseName(c.type, c.rows, c.cols, c.group, T);
  for (size_t t = 0; t < T; ++t) {
    for (size_t r = 0; r < ldy; ++r) {
      const float got = y[t * ldy + r];
      if (r < rb0 * kQ8RowBlock || r >= c.rows) {
        ASSERT_EQ(got, -777.0f) << what << " wrote outside rows, r=" << r;
        continue;
      }
      double abs_sum = 0.0;
      DotRow_ref(m.w, r, x.data() + t * ldx, &abs_sum);
      // Same arithmetic as the reference up to the order of the final 16-lane sum.
      ASSERT_NEAR(got, yref[t * ldy + r], 2e-6 * abs_sum + 1e-30) << what << " t=" << t << " r=" << r;
      ASSERT_TRUE(ktest::WithinActQuantBound(m.w, r, x.data() + t * ldx, a.d.data() + t * nb, got))
          << what << " t=" << t << " r=" << r;
    }
  }
  // Splitting the row blocks over two calls (threads) changes nothing: bit-identical.
  if (rbs - rb0 >= 2) {
    const size_t mid = rb0 + (rbs - rb0) / 2;
    std::vector<float> y2(T * ldy, -777.0f);
    HWY_NAMESPACE::MatMulQ8(m.q8, a.a, T, y2.data(), ldy, mid, rbs);
    HWY_NAMESPACE::MatMulQ8(m.q8, a.a, T, y2.data(), ldy, rb0, mid);
    for (size_t i = 0; i < y.size(); ++i)
      ASSERT_EQ(ktest::Bits(y2[i]), ktest::Bits(y[i])) << what << " split ranges differ at " << i;
  }
  // Each token alone gives bit-identical results (server batching invariant).
  if (T > 1) {
    for (size_t t = 0; t < T; ++t) {
      q8test::OwnedQ8Acts a1(1, c.cols);
      HWY_NAMESPACE::QuantizeActsQ8(x.data() + t * ldx, ldx, c.cols, a1.a, 0, 1);
      std::vector<float> y1(c.rows, -1.0f);
      HWY_NAMESPACE::MatMulQ8(m.q8, a1.a, 1, y1.data(), c.rows, rb0, rbs);
      for (size_t r = rb0 * kQ8RowBlock; r < c.rows; ++r)
        ASSERT_EQ(ktest::Bits(y1[r]), ktest::Bits(y[t * ldy + r]))
            << what << " solo != batched at t=" << t << " r=" << r;
    }
  }
}

void TestMatMulQ8AllShapes() {
  std::vector<Case> cases;
  for (size_t g : {32, 64, 96, 128})
    for (size_t k : {1, 3, 16, 20}) cases.push_back({WType::kI6Sym, 9, g * k, g});
  cases.push_back({WType::kI6Sym, 4, 2048, 32});
  cases.push_back({WType::kI6Sym, 1, 512, 64});
  uint32_t seed = 100;
  for (const Case& c : cases) {
    for (size_t T : {1, 2, 5}) CheckMatMulQ8(c, T, seed += 3);
  }
}

void TestMatMulQ8AllT() {
  uint32_t seed = 900;
  for (const Case& c : {Case{WType::kI6Sym, 13, 544, 32}, Case{WType::kI6Sym, 11, 1056, 32},
                        Case{WType::kI6Sym, 6, 1024, 128}}) {
    for (size_t T = 1; T <= 20; ++T) CheckMatMulQ8(c, T, seed += 5);
  }
  // Prefill-sized batches: many token tiles per row block (the per-tile prefetch share of the
  // next row block shrinks to a line and runs past it).
  for (const Case& c : {Case{WType::kI6Sym, 21, 2048, 32}, Case{WType::kI6Sym, 15, 2048, 64}}) {
    for (size_t T : {31, 64}) CheckMatMulQ8(c, T, seed += 5);
  }
}

}  // namespace
}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tessera::kernels {
HWY_BEFORE_TEST(Q8Test);
HWY_EXPORT_AND_TEST_P(Q8Test, TestQuantizeActsQ8MatchesRef);
HWY_EXPORT_AND_TEST_P(Q8Test, TestMatMulQ8AllShapes);
HWY_EXPORT_AND_TEST_P(Q8Test, TestMatMulQ8AllT);
}  // namespace tessera::kernels
#endif
