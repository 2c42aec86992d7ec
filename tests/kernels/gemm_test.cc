// Per-target tests of the row-interleaved int8-activation GEMM (gemm.h): MatMulGemm on repacked
// I4 sym / I4 nl / I8 weights is bit-identical to MatMulGemm_ref (computed from the original codes) on
// every target, within the activation-quantization error bound of the f32 double-precision
// dot, and bit-identical whatever the batch (each token alone == in a batch, T = 1..20, 31, 64,
// 100), the row-group sub-range and the split of the row groups over two calls.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tests/kernels/gemm_test.cc"
#include "core/half.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/tests/hwy_gtest.h"
#include "quantizer/kernels/gemm-inl.h"
#include "quantizer/kernels/q8-inl.h"
#include "quantizer/kernels/ref.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/q8_test_util.h"

#ifndef TESSERA_TESTS_GEMM_TEST_HELPERS_
#define TESSERA_TESTS_GEMM_TEST_HELPERS_
namespace tessera::kernels::gemmtest {

using OwnedActs = ktest::OwnedQ8Acts;
using OwnedMatrix = ktest::OwnedQ8Matrix;

// A quantized matrix (I4 sym / I4 nl / I8) repacked into the GEMM layout.
inline OwnedMatrix MakeMatrix(WType type, size_t rows, size_t cols, size_t group, uint32_t seed) {
  OwnedMatrix m = ktest::QuantizedQ8Matrix(type, rows, cols, group, seed);
  // Extreme codes in row 0 (I4 / I4 nl nibbles 0 and 15, I8 -128 and 127) exercise the bias trick.
  if (type == WType::kI8) {
    m.codes[0] = 0x80;
    m.codes[1] = 0x7F;
  } else {
    m.codes[0] = 0xF0;
  }
  m.packed.assign(GemmRepackedBytes(m.w), 0xEE);
  const size_t groups = GemmGroups(rows);
  // Two calls (row group ranges) to check RepackGemm's sub-range contract.
  RepackGemm(m.w, 0, groups / 2, m.packed.data());
  RepackGemm(m.w, groups / 2, groups, m.packed.data());
  m.q8.type = type;
  m.q8.data = m.packed.data();
  m.q8.rows = rows;
  m.q8.Kp = Q8PaddedK(cols);
  return m;
}

// The GEMM panel of a's T tokens, built in two calls (tile ranges).
inline std::vector<uint8_t> MakePanel(const Q8Acts& a, size_t T) {
  std::vector<uint8_t> panel(GemmPanelSize(T, a.Kp), 0xEE);
  const size_t tiles = GemmTiles(T);
  BuildGemmPanel(a, T, tiles / 2, tiles, panel.data());
  BuildGemmPanel(a, T, 0, tiles / 2, panel.data());
  return panel;
}

}  // namespace tessera::kernels::gemmtest
#endif  // TESSERA_TESTS_GEMM_TEST_HELPERS_

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace {

struct Case {
  WType type;
  size_t rows, cols, group;
};

void CheckGemm(const Case& c, size_t T, uint32_t seed) {
  gemmtest::OwnedMatrix m = gemmtest::MakeMatrix(c.type, c.rows, c.cols, c.group, seed);
  const size_t ldx = c.cols + 3, ldy = c.rows + 2;
  ktest::Buf<float> x(T * ldx, seed % 2);
  ktest::FillUniform(x.data(), T * ldx, seed + 1, -2.0f, 2.0f);
  gemmtest::OwnedActs a(T, c.cols);
  HWY_NAMESPACE::QuantizeActsQ8(x.data(), ldx, c.cols, a.a, 0, T);
  const std::vector<uint8_t> panel = gemmtest::MakePanel(a.a, T);
  const size_t groups = GemmGroups(c.rows);
  const size_t g0 = groups > 1 ? 1 : 0;  // a row-group sub-range
  const size_t r0 = g0 * kGemmRows;
  std::vector<float> y(T * ldy, -777.0f);
  HWY_NAMESPACE::MatMulGemm(m.q8, panel.data(), T, y.data(), ldy, g0, groups);
  std::vector<float> yref(T * ldy, -777.0f);
  MatMulGemm_ref(m.w, a.a, T, yref.data(), ldy, r0, c.rows);
  const size_t nb = a.a.Kp / kQ8Block;
  const std::string what = ktest::Q8CaseName(c.type, c.rows, c.cols, c.group, T);
  for (size_t t = 0; t < T; ++t) {
    for (size_t r = 0; r < ldy; ++r) {
      const float got = y[t * ldy + r];
      if (r < r0 || r >= c.rows) {
        ASSERT_EQ(got, -777.0f) << what << " wrote outside rows, r=" << r;
        continue;
      }
      ASSERT_EQ(ktest::Bits(got), ktest::Bits(yref[t * ldy + r]))
          << what << " t=" << t << " r=" << r << " got " << got << " ref " << yref[t * ldy + r];
      if (t % 7 != 0) continue;  // the double-precision bound on a sample of tokens
      ASSERT_TRUE(ktest::WithinActQuantBound(m.w, r, x.data() + t * ldx, a.d.data() + t * nb, got))
          << what << " t=" << t << " r=" << r;
    }
  }
  // Splitting the row groups over two calls (threads) changes nothing: bit-identical.
  if (groups - g0 >= 2) {
    const size_t mid = g0 + (groups - g0) / 2;
    std::vector<float> y2(T * ldy, -777.0f);
    HWY_NAMESPACE::MatMulGemm(m.q8, panel.data(), T, y2.data(), ldy, mid, groups);
    HWY_NAMESPACE::MatMulGemm(m.q8, panel.data(), T, y2.data(), ldy, g0, mid);
    for (size_t i = 0; i < y.size(); ++i)
      ASSERT_EQ(ktest::Bits(y2[i]), ktest::Bits(y[i])) << what << " split ranges differ at " << i;
  }
  // Each token alone gives bit-identical results (server batching invariant).
  if (T > 1) {
    for (size_t t = 0; t < T; ++t) {
      gemmtest::OwnedActs a1(1, c.cols);
      HWY_NAMESPACE::QuantizeActsQ8(x.data() + t * ldx, ldx, c.cols, a1.a, 0, 1);
      const std::vector<uint8_t> panel1 = gemmtest::MakePanel(a1.a, 1);
      std::vector<float> y1(c.rows, -1.0f);
      HWY_NAMESPACE::MatMulGemm(m.q8, panel1.data(), 1, y1.data(), c.rows, g0, groups);
      for (size_t r = r0; r < c.rows; ++r)
        ASSERT_EQ(ktest::Bits(y1[r]), ktest::Bits(y[t * ldy + r]))
            << what << " solo != batched at t=" << t << " r=" << r;
    }
  }
}

void TestGemmAllShapes() {
  std::vector<Case> cases;
  for (size_t g : {32, 64, 96, 128})
    for (size_t k : {1, 3, 17}) cases.push_back({WType::kI8, 19, g * k, g});
  for (size_t g : {32, 64, 128})
    for (size_t k : {1, 5, 16, 20}) cases.push_back({WType::kI4Sym, 9, g * k, g});
  for (size_t g : {32, 64})
    for (size_t k : {1, 5, 17}) cases.push_back({WType::kI4Nl, 11, g * k, g});
  cases.push_back({WType::kI4Sym, 16, 2048, 32});
  cases.push_back({WType::kI4Sym, 33, 512, 32});
  cases.push_back({WType::kI8, 1, 512, 32});
  uint32_t seed = 100;
  for (const Case& c : cases) {
    for (size_t T : {1, 2, 5, 9}) CheckGemm(c, T, seed += 3);
  }
}

void TestGemmAllT() {
  uint32_t seed = 900;
  for (const Case& c : {Case{WType::kI4Sym, 37, 544, 32}, Case{WType::kI8, 21, 1056, 32},
                        Case{WType::kI4Sym, 7, 1024, 64}, Case{WType::kI4Nl, 23, 800, 32}}) {
    for (size_t T = 1; T <= 20; ++T) CheckGemm(c, T, seed += 5);
  }
  // Prefill-sized batches: many token tiles per row group, a last tile of odd size; from T = 16
  // on AVX3_DL pairs of row groups (the second one partial here) go through the 2 x 4 tile.
  for (const Case& c : {Case{WType::kI4Sym, 50, 2048, 32}, Case{WType::kI8, 40, 1536, 64},
                        Case{WType::kI4Nl, 35, 1024, 64}}) {
    for (size_t T : {16, 31, 64, 100, 128}) CheckGemm(c, T, seed += 5);
  }
}

}  // namespace
}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tessera::kernels {
HWY_BEFORE_TEST(GemmTest);
HWY_EXPORT_AND_TEST_P(GemmTest, TestGemmAllShapes);
HWY_EXPORT_AND_TEST_P(GemmTest, TestGemmAllT);

// The AMX tests' matrices (type, rows, cols, group): every type, partial row groups (a lone one
// and pairs), K from 3 blocks to past 16 superblocks.
constexpr std::tuple<WType, int, int, int> kAmxCases[] = {
    {WType::kI4Sym, 50, 2048, 32}, {WType::kI8, 40, 1536, 64}, {WType::kI4Nl, 35, 1024, 64},
    {WType::kI4Sym, 16, 544, 32},  {WType::kI8, 19, 96, 32},   {WType::kI4Nl, 11, 160, 32},
    {WType::kI4Nl, 75, 8256, 32}};

// The AMX prefill GEMM (gemm.h) is bit-identical to MatMulGemm_ref: every type, partial row
// groups, a row-group sub-range, T from 1 (one padded token tile) to several tiles with a partial
// last one, the panel built in two tile ranges.
TEST(GemmAmx, BitIdenticalToReference) {
  if (!GemmAmxAvailable()) GTEST_SKIP() << "no AMX-INT8 on this CPU (or TESSERA_AMX=0)";
  uint32_t seed = 4000;
  for (const auto& [type, rows, cols, group] : kAmxCases) {
    gemmtest::OwnedMatrix m = gemmtest::MakeMatrix(type, rows, cols, group, seed += 7);
    for (size_t T : {1, 5, 16, 17, 31, 64, 100, 128}) {
      const size_t ldx = cols + 3, ldy = rows + 2;
      std::vector<float> x(T * ldx);
      ktest::FillUniform(x.data(), x.size(), seed += 3, -2.0f, 2.0f);
      gemmtest::OwnedActs a(T, cols);
      QuantizeActsQ8(x.data(), ldx, cols, a.a, 0, T);
      std::vector<uint8_t> panel(GemmAmxPanelSize(T, a.a.Kp), 0xEE);
      const size_t tiles = GemmAmxTiles(T);
      BuildGemmAmxPanel(a.a, T, tiles / 2, tiles, panel.data());
      BuildGemmAmxPanel(a.a, T, 0, tiles / 2, panel.data());
      const size_t groups = GemmGroups(rows), g0 = 1, r0 = g0 * kGemmRows;
      std::vector<float> y(T * ldy, -777.0f), yref(T * ldy, -777.0f);
      MatMulGemmAmx(m.q8, panel.data(), T, y.data(), ldy, g0, groups);
      MatMulGemm_ref(m.w, a.a, T, yref.data(), ldy, r0, rows);
      const std::string what = ktest::Q8CaseName(type, rows, cols, group, T);
      for (size_t t = 0; t < T; ++t)
        for (size_t r = 0; r < ldy; ++r)
          ASSERT_EQ(ktest::Bits(y[t * ldy + r]), ktest::Bits(yref[t * ldy + r])) << what << " t=" << t << " r=" << r;
    }
  }
}

// bf16(v): round to nearest even.
float RoundBf16(float v) { return tessera::BF16ToF32(tessera::F32ToBF16(v)); }

// The AMX-BF16 prefill GEMM (gemm.h) against double-precision references: the product of the
// bf16-rounded inputs (bf16(x) and bf16(code * d)) within f32 accumulation error, and the exact
// f32 product within bf16's input rounding (2^-8 relative to sum |w x|). Every type, partial row
// groups, odd row-group ranges (pairs and a lone group), partial token tiles, K past the padding.
TEST(GemmAmxBf16, MatchesBf16ReferenceAndF32Bound) {
  if (!GemmAmxBf16Available()) GTEST_SKIP() << "no AMX-BF16 on this CPU (or TESSERA_AMX=0/int8)";
  uint32_t seed = 5000;
  for (const auto& [type, rows, cols, group] : kAmxCases) {
    gemmtest::OwnedMatrix m = gemmtest::MakeMatrix(type, rows, cols, group, seed += 7);
    std::vector<float> wd(static_cast<size_t>(rows) * cols);
    for (size_t r = 0; r < static_cast<size_t>(rows); ++r) DequantizeRow_ref(m.w, r, wd.data() + r * cols);
    for (size_t T : {17, 31, 32, 64, 100}) {
      const size_t ldx = cols + 3, ldy = rows + 2;
      std::vector<float> x(T * ldx);
      ktest::FillUniform(x.data(), x.size(), seed += 3, -2.0f, 2.0f);
      const size_t Kp = Q8PaddedK(cols), tiles = GemmAmxTiles(T);
      std::vector<uint8_t> panel(GemmAmxBf16PanelSize(T, Kp), 0xEE);
      BuildGemmAmxBf16Panel(x.data(), ldx, cols, Kp, T, tiles / 2, tiles, panel.data());
      BuildGemmAmxBf16Panel(x.data(), ldx, cols, Kp, T, 0, tiles / 2, panel.data());
      const size_t groups = GemmGroups(rows), g0 = 1, r0 = g0 * kGemmRows;
      std::vector<float> y(T * ldy, -777.0f);
      // Two calls: groups [g0, 4) (a pair and a lone group when groups > 4) and [4, groups).
      const size_t split = std::min<size_t>(groups, 4);
      MatMulGemmAmxBf16(m.q8, panel.data(), T, y.data(), ldy, g0, split);
      MatMulGemmAmxBf16(m.q8, panel.data(), T, y.data(), ldy, split, groups);
      const std::string what = ktest::Q8CaseName(type, rows, cols, group, T);
      for (size_t t = 0; t < T; ++t) {
        for (size_t r = 0; r < ldy; ++r) {
          const float got = y[t * ldy + r];
          if (r < r0 || r >= static_cast<size_t>(rows)) {
            ASSERT_EQ(got, -777.0f) << what << " wrote t=" << t << " r=" << r;
            continue;
          }
          double exact = 0, rounded = 0, mag = 0;
          for (size_t k = 0; k < static_cast<size_t>(cols); ++k) {
            const float w = wd[r * cols + k], a = x[t * ldx + k];
            exact += double{w} * a;
            rounded += double{RoundBf16(w)} * RoundBf16(a);
            mag += std::fabs(double{w} * a);
          }
          ASSERT_NEAR(got, rounded, 1e-5 * mag + 1e-6) << what << " t=" << t << " r=" << r;
          ASSERT_NEAR(got, exact, std::ldexp(mag, -8) + 1e-6) << what << " t=" << t << " r=" << r;
        }
      }
    }
  }
}
}  // namespace tessera::kernels
#endif
