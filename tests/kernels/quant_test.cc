// Per-target tests of the row quantizers / dequantizers: codes and f16 scales bit-exact
// against ref.cc on every target, dequantized values bit-exact, round-trip error bounded.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tests/kernels/quant_test.cc"
#include "core/half.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/tests/hwy_gtest.h"
#include "quantizer/kernels/quant-inl.h"
#include "quantizer/kernels/ref.h"
#include "tests/kernels/kernel_test_util.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace {

// The value of largest magnitude among x[0, n), positive on a tie (0 for an all-zero group).
float SignedExtreme(const float* x, size_t n) {
  float amax = 0.0f, m = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax || (std::fabs(x[i]) == amax && x[i] > 0)) {
      amax = std::fabs(x[i]);
      m = x[i];
    }
  }
  return m;
}

using ktest::Bits;
using ktest::Buf;

struct Shape {
  size_t group;
  size_t ngroups;
};

std::vector<Shape> I4Shapes() {
  std::vector<Shape> s;
  for (size_t g : {32, 64, 128}) {
    for (size_t k : {1, 3, 7, 11}) s.push_back({g, k});
  }
  return s;
}

std::vector<Shape> I8Shapes() {
  std::vector<Shape> s;
  for (size_t g : {32, 64, 96, 128, 256}) {
    for (size_t k : {1, 2, 9}) s.push_back({g, k});
  }
  return s;
}

// Checks |x - xhat| <= half a step (+ float slack) unless the code was clipped at the end of
// the range (only possible for the opposite-sign extreme in I4 sym, and through f16 rounding
// of the scale / min).
void CheckRoundTrip(const float* x, const float* xh, size_t n, size_t group, const float* step,
                    const char* what) {
  for (size_t i = 0; i < n; ++i) {
    const float d = std::fabs(step[i / group]);
    const float err = std::fabs(x[i] - xh[i]);
    const float tol = 0.5f * d + 2e-6f * std::fabs(x[i]) + 1e-30f;
    if (err > tol) {
      // Allowed only for clipped values, and never by more than one step.
      ASSERT_LE(err, 1.01f * d + 2e-6f * std::fabs(x[i])) << what << " i=" << i << " x=" << x[i];
    }
  }
}

void TestQuantizeI4Sym() {
  for (const Shape& s : I4Shapes()) {
    const size_t n = s.group * s.ngroups;
    const size_t ng = s.ngroups;
    for (size_t off : {0, 1, 3}) {
      Buf<float> x(n, off);
      ktest::FillWeights(x.data(), n, s.group, static_cast<uint32_t>(n + off));
      Buf<uint8_t> codes(n / 2, off), codes_ref(n / 2, 0);
      Buf<uint16_t> sc(ng, off), sc_ref(ng, 0);
      QuantizeRowI4Sym(x.data(), n, s.group, codes.data(), sc.data());
      QuantizeRowI4Sym_ref(x.data(), n, s.group, codes_ref.data(), sc_ref.data());
      for (size_t g = 0; g < ng; ++g) ASSERT_EQ(sc[g], sc_ref[g]) << "G=" << s.group << " g=" << g;
      for (size_t j = 0; j < n / 2; ++j) {
        ASSERT_EQ(codes[j], codes_ref[j]) << "G=" << s.group << " n=" << n << " j=" << j;
      }
      // Scale rule: d = f16(m / -8), m the signed extreme.
      for (size_t g = 0; g < ng; ++g) {
        const float m = SignedExtreme(x.data() + g * s.group, s.group);
        const uint16_t expect = m == 0.0f ? 0 : tessera::F32ToF16(m / -8.0f);
        ASSERT_EQ(sc[g], expect);
      }
      // Dequantize: bit-exact vs ref, and error within half a step.
      Buf<float> out(n, off), out_ref(n, 0);
      DequantizeRowI4Sym(codes.data(), sc.data(), n, s.group, out.data());
      DequantizeRowI4Sym_ref(codes.data(), sc.data(), n, s.group, out_ref.data());
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(Bits(out[i]), Bits(out_ref[i])) << i;
      std::vector<float> step(ng);
      for (size_t g = 0; g < ng; ++g) step[g] = tessera::F16ToF32(sc[g]);
      CheckRoundTrip(x.data(), out.data(), n, s.group, step.data(), "i4sym");
    }
  }
}

void TestQuantizeI4SymEdgeCases() {
  // d = 1 (extreme -8): exact ties must round half to even; 0.49999997 must round to 0
  // (SCALAR NearestInt gets this wrong, our kernels must not).
  std::vector<float> x(32, 0.0f);
  x[0] = -8.0f;
  x[1] = 2.5f;
  x[2] = 3.5f;
  x[3] = -2.5f;
  x[4] = 0.49999997f;
  x[5] = -0.5f;
  x[6] = 1.5f;
  x[7] = 7.4f;
  x[16] = 6.5f;
  x[17] = -7.5f;
  uint8_t codes[16];
  uint16_t sc;
  QuantizeRowI4Sym(x.data(), 32, 32, codes, &sc);
  EXPECT_EQ(sc, tessera::F32ToF16(1.0f));
  EXPECT_EQ(codes[0], (0) | ((6 + 8) << 4));  // -8 -> 0 ; 6.5 -> 6
  EXPECT_EQ(codes[1] & 0xF, 2 + 8);           // 2.5 -> 2
  EXPECT_EQ(codes[1] >> 4, -8 + 8);           // -7.5 -> -8
  EXPECT_EQ(codes[2] & 0xF, 4 + 8);           // 3.5 -> 4
  EXPECT_EQ(codes[3] & 0xF, -2 + 8);          // -2.5 -> -2
  EXPECT_EQ(codes[4] & 0xF, 0 + 8);           // 0.49999997 -> 0
  EXPECT_EQ(codes[5] & 0xF, 0 + 8);           // -0.5 -> 0
  EXPECT_EQ(codes[6] & 0xF, 2 + 8);           // 1.5 -> 2
  EXPECT_EQ(codes[7] & 0xF, 7 + 8);           // 7.4 -> 7
  // Positive extreme preferred on |x| ties: {+5, -5} -> m = +5, d = -0.625.
  std::vector<float> y(32, 0.0f);
  y[3] = -5.0f;
  y[20] = 5.0f;
  QuantizeRowI4Sym(y.data(), 32, 32, codes, &sc);
  EXPECT_EQ(sc, tessera::F32ToF16(-0.625f));
  EXPECT_EQ(codes[4] >> 4, 0);    // +5 -> -8
  EXPECT_EQ(codes[3] & 0xF, 15);  // -5 -> +8 clipped to 7
  // All-zero group: scale 0, all codes 8.
  std::vector<float> z(64, 0.0f);
  uint8_t zc[32];
  uint16_t zs[2] = {1, 1};
  QuantizeRowI4Sym(z.data(), 64, 64, zc, zs);
  EXPECT_EQ(zs[0], 0);
  for (uint8_t c : std::vector<uint8_t>(zc, zc + 32)) EXPECT_EQ(c, 0x88);
  // Tiny values whose scale underflows f16: scale 0, codes 8.
  std::vector<float> t(32, 1e-9f);
  QuantizeRowI4Sym(t.data(), 32, 32, codes, &sc);
  EXPECT_EQ(sc, 0);
  EXPECT_EQ(codes[0], 0x88);
}

void TestQuantizeI4Asym() {
  for (const Shape& s : I4Shapes()) {
    const size_t n = s.group * s.ngroups;
    const size_t ng = s.ngroups;
    for (size_t off : {0, 1, 2}) {
      Buf<float> x(n, off);
      ktest::FillWeights(x.data(), n, s.group, static_cast<uint32_t>(3 * n + off), 0.02f);
      Buf<uint8_t> codes(n / 2, off), codes_ref(n / 2, 0);
      Buf<uint16_t> sc(ng, off), sc_ref(ng, 0), mn(ng, off), mn_ref(ng, 0);
      QuantizeRowI4Asym(x.data(), n, s.group, codes.data(), sc.data(), mn.data());
      QuantizeRowI4Asym_ref(x.data(), n, s.group, codes_ref.data(), sc_ref.data(), mn_ref.data());
      for (size_t g = 0; g < ng; ++g) {
        ASSERT_EQ(sc[g], sc_ref[g]) << "G=" << s.group << " g=" << g;
        ASSERT_EQ(mn[g], mn_ref[g]) << "G=" << s.group << " g=" << g;
      }
      for (size_t j = 0; j < n / 2; ++j) ASSERT_EQ(codes[j], codes_ref[j]) << "j=" << j;
      Buf<float> out(n, off), out_ref(n, 0);
      DequantizeRowI4Asym(codes.data(), sc.data(), mn.data(), n, s.group, out.data());
      DequantizeRowI4Asym_ref(codes.data(), sc.data(), mn.data(), n, s.group, out_ref.data());
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(Bits(out[i]), Bits(out_ref[i])) << i;
      // Half a step, plus the f16 rounding of the min (values below min_r clip to 0).
      for (size_t i = 0; i < n; ++i) {
        const size_t g = i / s.group;
        const float step = tessera::F16ToF32(sc[g]);
        float gmin = x[g * s.group];
        for (size_t k = 0; k < s.group; ++k) gmin = std::min(gmin, x[g * s.group + k]);
        const float min_err = std::fabs(gmin - tessera::F16ToF32(mn[g]));
        ASSERT_LE(std::fabs(x[i] - out[i]),
                  0.5f * step + min_err + 2e-6f * std::fabs(x[i]) + 1e-30f)
            << "i=" << i;
      }
    }
  }
  // Constant group: scale 0, codes 0, min holds the value.
  std::vector<float> c(32, 0.75f);
  uint8_t codes[16];
  uint16_t sc, mn;
  QuantizeRowI4Asym(c.data(), 32, 32, codes, &sc, &mn);
  EXPECT_EQ(sc, 0);
  EXPECT_EQ(mn, tessera::F32ToF16(0.75f));
  EXPECT_EQ(codes[0], 0);
  float out[32];
  DequantizeRowI4Asym(codes, &sc, &mn, 32, 32, out);
  EXPECT_EQ(out[31], 0.75f);
}

void TestQuantizeI8() {
  for (const Shape& s : I8Shapes()) {
    const size_t n = s.group * s.ngroups;
    const size_t ng = s.ngroups;
    for (size_t off : {0, 1, 5}) {
      Buf<float> x(n, off);
      ktest::FillWeights(x.data(), n, s.group, static_cast<uint32_t>(7 * n + off), 3.0f);
      Buf<int8_t> codes(n, off), codes_ref(n, 0);
      Buf<uint16_t> sc(ng, off), sc_ref(ng, 0);
      QuantizeRowI8(x.data(), n, s.group, codes.data(), sc.data());
      QuantizeRowI8_ref(x.data(), n, s.group, codes_ref.data(), sc_ref.data());
      for (size_t g = 0; g < ng; ++g) ASSERT_EQ(sc[g], sc_ref[g]) << "G=" << s.group << " g=" << g;
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(codes[i], codes_ref[i]) << "i=" << i;
      for (size_t i = 0; i < n; ++i) {
        ASSERT_GE(codes[i], -127);
      }
      Buf<float> out(n, off), out_ref(n, 0);
      DequantizeRowI8(codes.data(), sc.data(), n, s.group, out.data());
      DequantizeRowI8_ref(codes.data(), sc.data(), n, s.group, out_ref.data());
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(Bits(out[i]), Bits(out_ref[i])) << i;
      std::vector<float> step(ng);
      for (size_t g = 0; g < ng; ++g) step[g] = tessera::F16ToF32(sc[g]);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_LE(std::fabs(x[i] - out[i]),
                  0.5f * step[i / s.group] + 2e-6f * std::fabs(x[i]) + 1e-30f);
      }
    }
  }
  // Ties: amax 127 -> d = 1.
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = -127.0f;
  x[2] = 2.5f;
  x[3] = -3.5f;
  x[4] = 0.49999997f;
  int8_t q[32];
  uint16_t sc;
  QuantizeRowI8(x.data(), 32, 32, q, &sc);
  EXPECT_EQ(sc, tessera::F32ToF16(1.0f));
  EXPECT_EQ(q[0], 127);
  EXPECT_EQ(q[1], -127);
  EXPECT_EQ(q[2], 2);
  EXPECT_EQ(q[3], -4);
  EXPECT_EQ(q[4], 0);
}

// I6 sym: codes and scales bit-exact vs ref on this target, the scale rule d = f16(m / -32),
// the SWAR unpacking (UnpackI6ToU8, used by MatMul) against ref's per-element unpacking,
// dequantization bit-exact and within half a step (one step for the clipped +32).
void TestQuantizeI6Sym() {
  for (const Shape& s : I4Shapes()) {
    const size_t n = s.group * s.ngroups;
    const size_t ng = s.ngroups;
    for (size_t off : {0, 1, 3}) {
      Buf<float> x(n, off);
      ktest::FillWeights(x.data(), n, s.group, static_cast<uint32_t>(3 * n + off));
      Buf<uint8_t> codes(3 * n / 4, off), codes_ref(3 * n / 4, 0);
      Buf<uint16_t> sc(ng, off), sc_ref(ng, 0);
      QuantizeRowI6Sym(x.data(), n, s.group, codes.data(), sc.data());
      QuantizeRowI6Sym_ref(x.data(), n, s.group, codes_ref.data(), sc_ref.data());
      for (size_t g = 0; g < ng; ++g) ASSERT_EQ(sc[g], sc_ref[g]) << "G=" << s.group << " g=" << g;
      for (size_t j = 0; j < 3 * n / 4; ++j)
        ASSERT_EQ(codes[j], codes_ref[j]) << "G=" << s.group << " n=" << n << " j=" << j;
      for (size_t g = 0; g < ng; ++g) {
        const float m = SignedExtreme(x.data() + g * s.group, s.group);
        const uint16_t expect = m == 0.0f ? 0 : tessera::F32ToF16(m / -32.0f);
        ASSERT_EQ(sc[g], expect);
      }
      // Codes really use 6 bits: q = round(x / d) for unclipped values.
      std::vector<int> q(n);
      UnpackI6_ref(codes.data(), n, s.group, q.data());
      std::vector<uint8_t> cu(n);
      UnpackI6ToU8(codes.data(), n, s.group, cu.data());
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(static_cast<int>(cu[i]) - 32, q[i]) << "SWAR unpack G=" << s.group << " i=" << i;
        const float d = tessera::F16ToF32(sc[i / s.group]);
        ASSERT_GE(q[i], -32);
        ASSERT_LE(q[i], 31);
        if (d != 0.0f) {
          const float t = x[i] * (1.0f / d);
          if (t < 31.0f) {
            ASSERT_EQ(q[i], RoundHalfEven_ref(t)) << i;
          }
        }
      }
      Buf<float> out(n, off), out_ref(n, 0);
      DequantizeRowI6Sym(codes.data(), sc.data(), n, s.group, out.data());
      DequantizeRowI6Sym_ref(codes.data(), sc.data(), n, s.group, out_ref.data());
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(Bits(out[i]), Bits(out_ref[i])) << i;
      std::vector<float> step(ng);
      for (size_t g = 0; g < ng; ++g) step[g] = tessera::F16ToF32(sc[g]);
      CheckRoundTrip(x.data(), out.data(), n, s.group, step.data(), "i6sym");
      // 4 more levels per sign than int4: the step is a quarter of int4's for the same group.
      std::vector<uint16_t> sc4(ng);
      std::vector<uint8_t> c4(n / 2);
      QuantizeRowI4Sym_ref(x.data(), n, s.group, c4.data(), sc4.data());
      for (size_t g = 0; g < ng; ++g)
        ASSERT_NEAR(std::fabs(tessera::F16ToF32(sc[g])), std::fabs(tessera::F16ToF32(sc4[g])) / 4, 1e-3f * std::fabs(tessera::F16ToF32(sc4[g])));
    }
  }
}

void TestQuantizeI6SymEdgeCases() {
  // d = 1 (extreme -32): every level -32..31 round-trips through the packing, ties to even.
  std::vector<float> x(64, 0.0f);
  x[0] = -32.0f;
  for (int i = 1; i < 64; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i - 32);  // -31 .. 31
  uint8_t codes[48];
  uint16_t sc[2];
  QuantizeRowI6Sym(x.data(), 64, 32, codes, sc);
  EXPECT_EQ(sc[0], tessera::F32ToF16(1.0f));
  int q[64];
  UnpackI6_ref(codes, 64, 32, q);
  for (size_t i = 0; i < 32; ++i) EXPECT_EQ(q[i], static_cast<int>(x[i])) << i;
  // Second group: extreme +31 -> d = -31/32; x = v maps to round(-v * 32 / 31).
  const float d1 = tessera::F16ToF32(sc[1]);
  EXPECT_EQ(sc[1], tessera::F32ToF16(31.0f / -32.0f));
  for (size_t i = 32; i < 64; ++i) EXPECT_EQ(q[i], std::clamp(RoundHalfEven_ref(x[i] / d1), -32, 31)) << i;
  // Ties: d = 1 groups, 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, 0.49999997 -> 0, 31.5 -> clipped 31.
  std::vector<float> y(32, 0.0f);
  y[0] = -32.0f;
  y[1] = 2.5f;
  y[2] = 3.5f;
  y[3] = -2.5f;
  y[4] = 0.49999997f;
  y[5] = 31.5f;
  QuantizeRowI6Sym(y.data(), 32, 32, codes, sc);
  UnpackI6_ref(codes, 32, 32, q);
  EXPECT_EQ(q[1], 2);
  EXPECT_EQ(q[2], 4);
  EXPECT_EQ(q[3], -2);
  EXPECT_EQ(q[4], 0);
  EXPECT_EQ(q[5], 31);
  // All-zero group: scale 0, code 32 (low nibbles 0, high pairs 2 -> 0xAA).
  std::vector<float> z(64, 0.0f);
  uint8_t zc[48];
  uint16_t zs[1] = {1};
  QuantizeRowI6Sym(z.data(), 64, 64, zc, zs);
  EXPECT_EQ(zs[0], 0);
  for (size_t i = 0; i < 32; ++i) EXPECT_EQ(zc[i], 0x00) << i;
  for (size_t i = 32; i < 48; ++i) EXPECT_EQ(zc[i], 0xAA) << i;
}

}  // namespace
}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tessera::kernels {
HWY_BEFORE_TEST(QuantTest);
HWY_EXPORT_AND_TEST_P(QuantTest, TestQuantizeI4Sym);
HWY_EXPORT_AND_TEST_P(QuantTest, TestQuantizeI4SymEdgeCases);
HWY_EXPORT_AND_TEST_P(QuantTest, TestQuantizeI4Asym);
HWY_EXPORT_AND_TEST_P(QuantTest, TestQuantizeI8);
HWY_EXPORT_AND_TEST_P(QuantTest, TestQuantizeI6Sym);
HWY_EXPORT_AND_TEST_P(QuantTest, TestQuantizeI6SymEdgeCases);

TEST(QuantDispatchTest, PublicApiMatchesRef) {
  const size_t n = 4096, G = 64, ng = n / G;
  std::vector<float> x(n);
  ktest::FillWeights(x.data(), n, G, 99);
  std::vector<uint8_t> c(n / 2), cr(n / 2);
  std::vector<uint16_t> s(ng), sr(ng), m(ng), mr(ng);
  QuantizeRowI4Sym(x.data(), n, G, c.data(), s.data());
  QuantizeRowI4Sym_ref(x.data(), n, G, cr.data(), sr.data());
  EXPECT_EQ(c, cr);
  EXPECT_EQ(s, sr);
  QuantizeRowI4Asym(x.data(), n, G, c.data(), s.data(), m.data());
  QuantizeRowI4Asym_ref(x.data(), n, G, cr.data(), sr.data(), mr.data());
  EXPECT_EQ(c, cr);
  EXPECT_EQ(s, sr);
  EXPECT_EQ(m, mr);
  std::vector<float> o(n), orf(n);
  DequantizeRowI4Asym(c.data(), s.data(), m.data(), n, G, o.data());
  DequantizeRowI4Asym_ref(c.data(), s.data(), m.data(), n, G, orf.data());
  EXPECT_EQ(o, orf);
  std::vector<int8_t> q(n), qr(n);
  QuantizeRowI8(x.data(), n, G, q.data(), s.data());
  QuantizeRowI8_ref(x.data(), n, G, qr.data(), sr.data());
  EXPECT_EQ(q, qr);
  EXPECT_EQ(s, sr);
  std::vector<uint8_t> c6(3 * n / 4), c6r(3 * n / 4);
  QuantizeRowI6Sym(x.data(), n, G, c6.data(), s.data());
  QuantizeRowI6Sym_ref(x.data(), n, G, c6r.data(), sr.data());
  EXPECT_EQ(c6, c6r);
  EXPECT_EQ(s, sr);
  DequantizeRowI6Sym(c6.data(), s.data(), n, G, o.data());
  DequantizeRowI6Sym_ref(c6.data(), s.data(), n, G, orf.data());
  EXPECT_EQ(o, orf);
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
