// Per-target MatMul tests: every WType (I6 sym and I4 nl included), T = 1 (fused path) and T > 1 (dequantize-once path),
// odd shapes, strided/misaligned x and y, row sub-ranges; compared with the reference
// dequantization followed by a double-precision dot.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tests/kernels/matmul_test.cc"
#include "core/half.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/tests/hwy_gtest.h"
#include "quantizer/kernels/matmul-inl.h"
#include "quantizer/kernels/ref.h"
#include "tests/kernels/kernel_test_util.h"

// Non-Highway helpers: this file is re-included once per target, so guard them.
#ifndef TESSERA_TESTS_MATMUL_TEST_HELPERS_
#define TESSERA_TESTS_MATMUL_TEST_HELPERS_
namespace tessera::kernels::ktest {

// Owns the storage for a WeightMatrix built from random floats with the reference quantizers.
struct OwnedMatrix {
  WeightMatrix w;
  std::vector<uint8_t> bytes;  // codes or raw elements (+ misalignment slack)
  std::vector<uint16_t> scales, mins;
};

inline OwnedMatrix MakeMatrix(WType type, size_t rows, size_t cols, size_t group, uint32_t seed,
                              size_t misalign) {
  OwnedMatrix m;
  std::vector<float> f(rows * cols);
  FillWeights(f.data(), f.size(), group ? group : 0, seed, 0.1f);
  const size_t ng = group ? cols / group : 0;
  size_t elem_bytes = 4;
  switch (type) {
    case WType::kF32:
      elem_bytes = 4;
      break;
    case WType::kF16:
    case WType::kBF16:
      elem_bytes = 2;
      break;
    default:
      elem_bytes = 1;
      break;
  }
  m.bytes.resize(rows * cols * elem_bytes + 64);
  uint8_t* p = m.bytes.data() + misalign * elem_bytes;
  m.scales.resize(rows * ng + 1);
  m.mins.resize(rows * ng + 1);
  for (size_t r = 0; r < rows; ++r) {
    const float* fr = f.data() + r * cols;
    switch (type) {
      case WType::kF32:
        std::memcpy(p + r * cols * 4, fr, cols * 4);
        break;
      case WType::kF16:
        F32ToF16_ref(fr, cols, reinterpret_cast<uint16_t*>(p) + r * cols);
        break;
      case WType::kBF16:
        F32ToBF16_ref(fr, cols, reinterpret_cast<uint16_t*>(p) + r * cols);
        break;
      case WType::kI8:
        QuantizeRowI8_ref(fr, cols, group, reinterpret_cast<int8_t*>(p) + r * cols,
                          m.scales.data() + r * ng);
        break;
      case WType::kI4Sym:
        QuantizeRowI4Sym_ref(fr, cols, group, p + r * cols / 2, m.scales.data() + r * ng);
        break;
      case WType::kI4Asym:
        QuantizeRowI4Asym_ref(fr, cols, group, p + r * cols / 2, m.scales.data() + r * ng,
                              m.mins.data() + r * ng);
        break;
      case WType::kI6Sym:
        QuantizeRowI6Sym_ref(fr, cols, group, p + r * cols / 4 * 3, m.scales.data() + r * ng);
        break;
      case WType::kI4Nl:  // any nibbles and scales are valid int4-nl data: reuse int4 sym's
        QuantizeRowI4Sym_ref(fr, cols, group, p + r * cols / 2, m.scales.data() + r * ng);
        break;
    }
  }
  m.w.type = type;
  m.w.data = p;
  m.w.scales = ng ? m.scales.data() : nullptr;
  m.w.mins = type == WType::kI4Asym ? m.mins.data() : nullptr;
  m.w.rows = rows;
  m.w.cols = cols;
  m.w.group = group;
  return m;
}

}  // namespace tessera::kernels::ktest
#endif  // TESSERA_TESTS_MATMUL_TEST_HELPERS_

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace {

struct Case {
  WType type;
  size_t rows, cols, group;
};

std::vector<Case> Cases() {
  std::vector<Case> c;
  for (WType t : {WType::kF32, WType::kF16, WType::kBF16}) {
    for (size_t cols : {1, 7, 16, 33, 100, 515}) c.push_back({t, 13, cols, 0});
  }
  for (size_t g : {32, 64, 96, 128}) {
    for (size_t k : {1, 3, 8}) c.push_back({WType::kI8, 11, g * k, g});
  }
  for (WType t : {WType::kI4Sym, WType::kI4Asym, WType::kI6Sym, WType::kI4Nl}) {
    for (size_t g : {32, 64, 128}) {
      for (size_t k : {1, 3, 8}) c.push_back({t, 11, g * k, g});
    }
  }
  // int6 groups the quantizer never writes but a pack may hold (any multiple of 32).
  c.push_back({WType::kI6Sym, 11, 96 * 3, 96});
  c.push_back({WType::kI6Sym, 11, 256 * 2, 256});
  return c;
}

void TestMatMulAllTypes() {
  uint32_t seed = 1;
  for (const Case& c : Cases()) {
    for (size_t T : {1, 2, 5}) {
      const size_t misalign = seed % 3;
      ktest::OwnedMatrix m = ktest::MakeMatrix(c.type, c.rows, c.cols, c.group, seed++, misalign);
      const size_t ldx = c.cols + 3;
      const size_t ldy = c.rows + 2;
      ktest::Buf<float> x(T * ldx, 1 + seed % 2);
      ktest::FillUniform(x.data(), T * ldx, seed++, -2.0f, 2.0f);
      ktest::Buf<float> y(T * ldy, 1);
      const float kSentinel = 12345.0f;
      for (size_t i = 0; i < T * ldy; ++i) y[i] = kSentinel;
      const size_t rb = 1, re = c.rows - 2;
      HWY_NAMESPACE::MatMul(m.w, x.data(), T, ldx, y.data(), ldy, rb, re);
      const std::string what = "type=" + std::to_string(static_cast<int>(c.type)) +
                               " cols=" + std::to_string(c.cols) + " G=" + std::to_string(c.group) +
                               " T=" + std::to_string(T);
      for (size_t t = 0; t < T; ++t) {
        for (size_t r = 0; r < ldy; ++r) {
          const float got = y[t * ldy + r];
          if (r < rb || r >= re) {
            ASSERT_EQ(got, kSentinel) << what << " wrote outside rows, r=" << r;
            continue;
          }
          double abs_sum = 0.0;
          const double ref = DotRow_ref(m.w, r, x.data() + t * ldx, &abs_sum);
          ASSERT_NEAR(got, ref, 1e-5 * abs_sum + 1e-30) << what << " t=" << t << " r=" << r;
        }
      }
    }
  }
}

// Every T in 1..20 (fused path up to kFusedMaxT, tiled prefill path above, tiles with token and
// row tails) and a few larger T; row counts crossing the kBlockRows/kTileR boundaries; row
// sub-ranges. Also: for T <= kFusedMaxT a token's result is bit-identical to computing it alone.
void TestMatMulAllT() {
  struct TC {
    WType type;
    size_t rows, cols, group;
  };
  const TC cases[] = {{WType::kF32, 37, 45, 0},   {WType::kF16, 21, 100, 0},
                      {WType::kBF16, 19, 64, 0},  {WType::kI8, 37, 96, 32},
                      {WType::kI8, 18, 192, 64},  {WType::kI4Sym, 37, 96, 32},
                      {WType::kI4Sym, 23, 128, 64}, {WType::kI4Sym, 17, 256, 128},
                      {WType::kI4Asym, 37, 64, 32}, {WType::kI4Asym, 21, 256, 128},
                      {WType::kI6Sym, 37, 96, 32},  {WType::kI6Sym, 21, 256, 64},
                      {WType::kI6Sym, 17, 256, 128}, {WType::kI4Nl, 37, 96, 32},
                      {WType::kI4Nl, 21, 256, 64},  {WType::kI4Nl, 17, 256, 128}};
  uint32_t seed = 1000;
  for (const TC& c : cases) {
    const size_t misalign = seed % 3;
    ktest::OwnedMatrix m = ktest::MakeMatrix(c.type, c.rows, c.cols, c.group, seed++, misalign);
    std::vector<size_t> Ts;
    for (size_t T = 1; T <= 20; ++T) Ts.push_back(T);
    Ts.push_back(33);
    Ts.push_back(64);
    for (size_t T : Ts) {
      const size_t ldx = c.cols + 1;
      const size_t ldy = c.rows + 3;
      ktest::Buf<float> x(T * ldx, seed % 2);
      ktest::FillUniform(x.data(), T * ldx, seed++, -2.0f, 2.0f);
      ktest::Buf<float> y(T * ldy, 1);
      const float kSentinel = -777.0f;
      for (size_t i = 0; i < T * ldy; ++i) y[i] = kSentinel;
      const size_t rb = T % 3, re = c.rows - (T % 2);
      HWY_NAMESPACE::MatMul(m.w, x.data(), T, ldx, y.data(), ldy, rb, re);
      const std::string what = "type=" + std::to_string(static_cast<int>(c.type)) +
                               " rows=" + std::to_string(c.rows) + " cols=" +
                               std::to_string(c.cols) + " T=" + std::to_string(T);
      for (size_t t = 0; t < T; ++t) {
        for (size_t r = 0; r < ldy; ++r) {
          const float got = y[t * ldy + r];
          if (r < rb || r >= re) {
            ASSERT_EQ(got, kSentinel) << what << " wrote outside rows, r=" << r;
            continue;
          }
          double abs_sum = 0.0;
          const double ref = DotRow_ref(m.w, r, x.data() + t * ldx, &abs_sum);
          ASSERT_NEAR(got, ref, 1e-5 * abs_sum + 1e-30) << what << " t=" << t << " r=" << r;
        }
      }
      if (T <= kFusedMaxT) {
        std::vector<float> y1(c.rows);
        for (size_t t = 0; t < T; ++t) {
          HWY_NAMESPACE::MatMul(m.w, x.data() + t * ldx, 1, ldx, y1.data(), c.rows, rb, re);
          for (size_t r = rb; r < re; ++r) {
            ASSERT_EQ(y1[r], y[t * ldy + r]) << what << " solo != batched t=" << t << " r=" << r;
          }
        }
      }
    }
  }
}

// Large-K accuracy check (4096 like a real layer) for the quantized fused and batched paths.
void TestMatMulLargeK() {
  for (WType t : {WType::kF32, WType::kBF16, WType::kI8, WType::kI4Sym, WType::kI4Asym, WType::kI6Sym, WType::kI4Nl}) {
    const size_t rows = 5, cols = 4096;
    ktest::OwnedMatrix m = ktest::MakeMatrix(t, rows, cols, 32, 77, 0);
    for (size_t T : {1, 3, 17, 24}) {
      std::vector<float> x(T * cols);
      ktest::FillUniform(x.data(), x.size(), 78, -1.0f, 1.0f);
      std::vector<float> y(T * rows);
      HWY_NAMESPACE::MatMul(m.w, x.data(), T, cols, y.data(), rows, 0, rows);
      std::vector<double> yr(T * rows);
      MatMul_ref(m.w, x.data(), T, cols, yr.data(), rows, 0, rows);
      for (size_t tt = 0; tt < T; ++tt) {
        for (size_t r = 0; r < rows; ++r) {
          double abs_sum = 0.0;
          DotRow_ref(m.w, r, x.data() + tt * cols, &abs_sum);
          ASSERT_NEAR(y[tt * rows + r], yr[tt * rows + r], 1e-5 * abs_sum)
              << "type " << static_cast<int>(t) << " T=" << T;
        }
      }
    }
  }
}

// F32 weights and activations that end exactly at the end of their heap blocks (no slack), K
// not a multiple of the vector length: the K tail of the decode and prefill paths must not read
// past the row (the ASan build reports it; EMU128's MaskedLoad reads whole vectors).
void TestMatMulF32TailsStayInBounds() {
  const size_t rows = 5;
  for (size_t K : {1, 2, 3, 5, 7, 13, 17, 31, 33}) {
    std::vector<float> w(rows * K);
    ktest::FillUniform(w.data(), w.size(), static_cast<uint32_t>(K), -1.0f, 1.0f);
    WeightMatrix m;
    m.type = WType::kF32;
    m.data = w.data();
    m.rows = rows;
    m.cols = K;
    for (size_t T : {size_t{1}, size_t{3}, kFusedMaxT + 1}) {
      std::vector<float> x(T * K);
      ktest::FillUniform(x.data(), x.size(), static_cast<uint32_t>(K + 100 * T), -1.0f, 1.0f);
      std::vector<float> y(T * rows);
      HWY_NAMESPACE::MatMul(m, x.data(), T, K, y.data(), rows, 0, rows);
      std::vector<double> yr(T * rows);
      MatMul_ref(m, x.data(), T, K, yr.data(), rows, 0, rows);
      for (size_t i = 0; i < T * rows; ++i)
        ASSERT_NEAR(y[i], yr[i], 1e-5 * K) << "K=" << K << " T=" << T << " i=" << i;
    }
  }
}

}  // namespace
}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tessera::kernels {
HWY_BEFORE_TEST(MatMulTest);
HWY_EXPORT_AND_TEST_P(MatMulTest, TestMatMulAllTypes);
HWY_EXPORT_AND_TEST_P(MatMulTest, TestMatMulLargeK);
HWY_EXPORT_AND_TEST_P(MatMulTest, TestMatMulAllT);
HWY_EXPORT_AND_TEST_P(MatMulTest, TestMatMulF32TailsStayInBounds);

TEST(MatMulDispatchTest, PublicApiMatchesRef) {
  for (WType t :
       {WType::kF32, WType::kF16, WType::kBF16, WType::kI8, WType::kI4Sym, WType::kI4Asym, WType::kI6Sym, WType::kI4Nl}) {
    const size_t rows = 9, cols = 256;
    ktest::OwnedMatrix m = ktest::MakeMatrix(t, rows, cols, 64, 5, 1);
    std::vector<float> x(2 * cols);
    ktest::FillUniform(x.data(), x.size(), 6);
    std::vector<float> y(2 * rows);
    MatMul(m.w, x.data(), 2, cols, y.data(), rows, 0, rows);
    for (size_t tt = 0; tt < 2; ++tt) {
      for (size_t r = 0; r < rows; ++r) {
        double abs_sum = 0.0;
        const double ref = DotRow_ref(m.w, r, x.data() + tt * cols, &abs_sum);
        ASSERT_NEAR(y[tt * rows + r], ref, 1e-5 * abs_sum);
      }
    }
  }
  EXPECT_NE(ActiveTargetName(), nullptr);
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
