// Per-target tests of the f32 <-> bf16 / f16 conversion kernels against core/half.h.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tests/kernels/convert_test.cc"
#include "core/half.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/tests/hwy_gtest.h"
#include "quantizer/kernels/convert-inl.h"
#include "quantizer/kernels/ref.h"
#include "tests/kernels/kernel_test_util.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace {

using ktest::Bits;
using ktest::Buf;
using ktest::FromBits;

// Interesting float bit patterns plus random ones (covers NaN, inf, subnormals, ties).
std::vector<float> ConversionInputs(size_t n_random) {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          1.0f + 0.00390625f,      // 1 + 2^-8  -> tie, rounds down to 0x3F80
                          1.0f + 3 * 0.00390625f,  // 1 + 3*2^-8 -> tie, rounds up to 0x3F82
                          -(1.0f + 3 * 0.00390625f),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          FromBits(0x7F800001u),  // signalling NaN, payload only in low bits
                          FromBits(0xFF800001u),
                          FromBits(0x7FFFFFFFu),
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::min(),
                          std::numeric_limits<float>::denorm_min(),
                          FromBits(0x7F7F8000u),  // tie at the top: rounds to inf? (even rule)
                          FromBits(0x3F808000u),
                          FromBits(0x3F818000u),
                          65504.0f,
                          65520.0f,
                          5.9604645e-8f,
                          2.9802322e-8f};
  std::mt19937 rng(1234);
  for (size_t i = 0; i < n_random; ++i) v.push_back(FromBits(static_cast<uint32_t>(rng())));
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (size_t i = 0; i < n_random; ++i) v.push_back(nd(rng));
  return v;
}

void TestF32ToBF16() {
  const std::vector<float> in = ConversionInputs(2000);
  for (size_t n : {size_t{0}, size_t{1}, size_t{3}, size_t{15}, size_t{16}, size_t{17}, size_t{33},
                   in.size()}) {
    for (size_t off : {0, 1, 3}) {
      Buf<float> x(n, off);
      Buf<uint16_t> out(n + 1, off);
      for (size_t i = 0; i < n; ++i) x[i] = in[i];
      out[n] = 0xBEEF;
      F32ToBF16(x.data(), n, out.data());
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(out[i], tessera::F32ToBF16(x[i]))
            << "i=" << i << " bits=" << std::hex << Bits(x[i]);
      }
      ASSERT_EQ(out[n], 0xBEEF) << "wrote past the end";
    }
  }
  // Explicit RNE ties and NaN handling.
  const float ties[4] = {1.0f + 0.00390625f, 1.0f + 3 * 0.00390625f,
                         std::numeric_limits<float>::quiet_NaN(), FromBits(0x7F800001u)};
  uint16_t o[4];
  F32ToBF16(ties, 4, o);
  EXPECT_EQ(o[0], 0x3F80);
  EXPECT_EQ(o[1], 0x3F82);
  EXPECT_TRUE(std::isnan(tessera::BF16ToF32(o[2])));
  EXPECT_TRUE(std::isnan(tessera::BF16ToF32(o[3])));  // sNaN must not become inf
  EXPECT_EQ(o[3], 0x7FC0);
}

void TestBF16ToF32() {
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  for (size_t n : {size_t{1}, size_t{7}, size_t{65536}}) {
    Buf<uint16_t> x(n, 1);
    Buf<float> out(n, 1);
    for (size_t i = 0; i < n; ++i) x[i] = all[i];
    BF16ToF32(x.data(), n, out.data());
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(Bits(out[i]), Bits(tessera::BF16ToF32(x[i])));
  }
}

void TestF16ToF32() {
  // Every f16 bit pattern, including subnormals, inf and NaN payloads.
  for (size_t n : {size_t{1}, size_t{5}, size_t{31}, size_t{65536}}) {
    for (size_t off : {0, 1}) {
      Buf<uint16_t> x(n, off);
      Buf<float> out(n + 1, off);
      for (size_t i = 0; i < n; ++i)
        x[i] = static_cast<uint16_t>(i * 65536 / n + (n < 100 ? 1 : 0));
      out[n] = 123.0f;
      F16ToF32(x.data(), n, out.data());
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(Bits(out[i]), Bits(tessera::F16ToF32(x[i]))) << "h=" << std::hex << x[i];
      }
      ASSERT_EQ(out[n], 123.0f);
    }
  }
}

}  // namespace
}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tessera::kernels {
HWY_BEFORE_TEST(ConvertTest);
HWY_EXPORT_AND_TEST_P(ConvertTest, TestF32ToBF16);
HWY_EXPORT_AND_TEST_P(ConvertTest, TestBF16ToF32);
HWY_EXPORT_AND_TEST_P(ConvertTest, TestF16ToF32);

// ---- scalar reference (target independent) ------------------------------------------------

TEST(ConvertRefTest, F16RoundsToNearestEven) {
  using ktest::FromBits;
  struct Case {
    float f;
    uint16_t h;
  } cases[] = {
      {1.0f, 0x3C00},
      {1.0f + 0.00048828125f, 0x3C00},                  // 1 + 2^-11: tie -> even (down)
      {1.0f + 3 * 0.00048828125f, 0x3C02},              // 1 + 3*2^-11: tie -> even (up)
      {1.0f + 0.00048828125f + 1.1920929e-7f, 0x3C01},  // just above the tie
      {65504.0f, 0x7BFF},
      {65519.99f, 0x7BFF},
      {65520.0f, 0x7C00},  // rounds to inf
      {-65520.0f, 0xFC00},
      {5.9604645e-8f, 0x0001},  // 2^-24, smallest subnormal
      {2.9802322e-8f, 0x0000},  // 2^-25: tie -> even (0)
      {2.9802326e-8f, 0x0001},  // just above 2^-25
      {8.940697e-8f, 0x0002},   // 1.5 * 2^-24: tie -> even (2)
      {6.097555e-5f, 0x03FF},   // largest subnormal
      {6.1035156e-5f, 0x0400},  // smallest normal
      {-0.0f, 0x8000},
      {std::numeric_limits<float>::infinity(), 0x7C00},
  };
  for (const Case& c : cases) {
    uint16_t h;
    F32ToF16_ref(&c.f, 1, &h);
    EXPECT_EQ(h, c.h) << c.f;
  }
  float nan = std::numeric_limits<float>::quiet_NaN();
  uint16_t h;
  F32ToF16_ref(&nan, 1, &h);
  EXPECT_TRUE(std::isnan(tessera::F16ToF32(h)));
}

TEST(ConvertRefTest, F16RoundTripAndRandomMatchesCompiler) {
  // Every finite f16 survives f16 -> f32 -> f16.
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;  // NaN
    float f;
    F16ToF32_ref(&h, 1, &f);
    uint16_t back;
    F32ToF16_ref(&f, 1, &back);
    ASSERT_EQ(back, h);
  }
#if defined(__FLT16_MAX__)
  // The compiler's _Float16 conversion is an independent RNE implementation.
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t r = static_cast<uint32_t>(rng());
    const uint32_t e = 100 + (r >> 24) % 44;  // 2^-27 .. 2^16: subnormal, normal, overflow
    const float f = ktest::FromBits((r & 0x80000000u) | (e << 23) | (r & 0x7FFFFFu));
    if (std::isnan(f)) continue;
    const _Float16 c = static_cast<_Float16>(f);
    uint16_t expect;
    std::memcpy(&expect, &c, 2);
    uint16_t h;
    F32ToF16_ref(&f, 1, &h);
    ASSERT_EQ(h, expect) << std::hex << ktest::Bits(f);
  }
#endif
}

TEST(ConvertRefTest, BF16RefTies) {
  const float x[2] = {1.0f + 0.00390625f, 1.0f + 3 * 0.00390625f};
  uint16_t o[2];
  F32ToBF16_ref(x, 2, o);
  EXPECT_EQ(o[0], 0x3F80);
  EXPECT_EQ(o[1], 0x3F82);
}

TEST(ConvertDispatchTest, PublicApiMatchesRef) {
  std::vector<float> x(1001);
  ktest::FillUniform(x.data(), x.size(), 5, -100.0f, 100.0f);
  std::vector<uint16_t> a(x.size()), b(x.size());
  tessera::kernels::F32ToBF16(x.data(), x.size(), a.data());
  F32ToBF16_ref(x.data(), x.size(), b.data());
  EXPECT_EQ(a, b);
  std::vector<float> fa(x.size()), fb(x.size());
  tessera::kernels::BF16ToF32(a.data(), a.size(), fa.data());
  BF16ToF32_ref(a.data(), a.size(), fb.data());
  EXPECT_EQ(fa, fb);
  F32ToF16_ref(x.data(), x.size(), a.data());
  tessera::kernels::F16ToF32(a.data(), a.size(), fa.data());
  F16ToF32_ref(a.data(), a.size(), fb.data());
  EXPECT_EQ(fa, fb);
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
