// Per-target tests of the SIMD group scale search (quantizer/kernels/group_search-inl.h): codes
// and f16 scales byte-identical to the scalar reference (quantizer/search.cc) on every target,
// for int4 and int6, groups 32 / 64 / 128, unit, imatrix-like and zero-padded weights, and the
// edge cases the search branches on (zero groups, scales that round to 0 or overflow f16).
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tests/kernels/group_search_test.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/tests/hwy_gtest.h"
#include "quantizer/kernels/group_search-inl.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/search.h"
#include "tests/kernels/kernel_test_util.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace {

using ktest::Buf;

enum class Wts { kNull, kOnes, kImatrix, kPadded };

// Row values at several magnitudes: 1 (f16 normal scales), 1e-6 (candidate scales in the f16
// subnormal range, some rounding to 0), 1e-9 (RTN scale 0: no search) and 1e4 (outliers of 5e5:
// candidate scales overflow f16 to inf).
void MakeRow(std::vector<float>* x, size_t n, size_t group, uint32_t seed, float scale) {
  x->resize(n);
  ktest::FillWeights(x->data(), n, group, seed, scale);
}

void MakeWeights(Wts kind, size_t n, uint32_t seed, std::vector<float>* w) {
  w->assign(n, 1.0f);
  std::mt19937 rng(seed);
  std::gamma_distribution<float> gd(0.5f, 2.0f);
  if (kind == Wts::kImatrix)
    for (size_t i = 0; i < n; ++i) (*w)[i] = (i % 37 == 5) ? 0.0f : gd(rng);  // some dead channels
  if (kind == Wts::kPadded)
    for (size_t i = n - n / 3; i < n; ++i) (*w)[i] = 0.0f;  // padding past k_logical
}

void CheckRows(int levels) {
  size_t rows = 0;
  for (size_t group : {32, 64, 128}) {
    for (float scale : {1.0f, 0.02f, 1e-6f, 1e-9f, 1e4f}) {
      for (Wts kind : {Wts::kNull, Wts::kOnes, Wts::kImatrix, Wts::kPadded}) {
        const size_t ng = 11, n = group * ng;
        const uint32_t seed = static_cast<uint32_t>(group * 131 + static_cast<size_t>(kind) * 7 + rows);
        std::vector<float> x, w;
        MakeRow(&x, n, group, seed, scale);
        MakeWeights(kind, n, seed + 1, &w);
        const float* wp = kind == Wts::kNull ? nullptr : w.data();
        const size_t cb = levels == 8 ? n / 2 : 3 * n / 4;
        std::vector<uint8_t> c(cb, 0xEE), cr(cb, 0xDD);
        std::vector<uint16_t> s(ng, 0xEEEE), sr(ng, 0xDDDD);
        if (levels == 8) {
          QuantizeRowI4SymSearch(x.data(), wp, n, group, c.data(), s.data());
          quant::QuantizeRowI4SymSearch_ref(x.data(), wp, n, group, cr.data(), sr.data());
        } else {
          QuantizeRowI6SymSearch(x.data(), wp, n, group, c.data(), s.data());
          quant::QuantizeRowI6SymSearch_ref(x.data(), wp, n, group, cr.data(), sr.data());
        }
        ASSERT_EQ(s, sr) << "levels " << levels << " group " << group << " scale " << scale << " weights "
                         << static_cast<int>(kind);
        ASSERT_EQ(c, cr) << "levels " << levels << " group " << group << " scale " << scale << " weights "
                         << static_cast<int>(kind);
        ++rows;
      }
    }
  }
  EXPECT_EQ(rows, 60u);
}

void TestI4SymSearchMatchesRef() { CheckRows(8); }
void TestI6SymSearchMatchesRef() { CheckRows(32); }

// Many small random groups (different seeds, misaligned inputs): the per-group entry point
// GPTQ uses, levels and scale identical to quant::SearchGroupSym.
void TestSearchGroupSymMatchesRef() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.0f, 3.0f);
  size_t differs_from_rtn = 0;
  for (int H : {8, 32}) {
    for (size_t group : {32, 64, 128}) {
      for (int t = 0; t < 150; ++t) {
        Buf<float> x(group, static_cast<size_t>(t % 3)), w(group, static_cast<size_t>(t % 2));
        const float sc = std::pow(10.0f, static_cast<float>(t % 7) - 4.0f);
        for (size_t i = 0; i < group; ++i) {
          x[i] = nd(rng) * sc * (t % 11 == 0 && i == 3 ? 30.0f : 1.0f);
          w[i] = ud(rng);
        }
        int q[128], qr[128];
        uint16_t s = 1, sr = 2;
        const float* wp = t % 2 ? w.data() : nullptr;
        SearchGroupSym(x.data(), wp, group, H, q, &s);
        quant::SearchGroupSym(x.data(), wp, group, H, qr, &sr);
        ASSERT_EQ(s, sr) << "H " << H << " group " << group << " trial " << t;
        for (size_t i = 0; i < group; ++i) ASSERT_EQ(q[i], qr[i]) << "H " << H << " group " << group << " i " << i;
        float m = 0.0f;
        for (size_t i = 0; i < group; ++i) m = std::max(m, std::fabs(x[i]));
        const uint16_t rtn = F32ToF16(m / static_cast<float>(H));
        if ((s & 0x7FFF) != rtn) ++differs_from_rtn;
      }
    }
  }
  // The search does change scales (the test is not comparing two copies of RTN).
  EXPECT_GT(differs_from_rtn, 300u);
}

}  // namespace
}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tessera::kernels {
HWY_BEFORE_TEST(GroupSearchTest);
HWY_EXPORT_AND_TEST_P(GroupSearchTest, TestI4SymSearchMatchesRef);
HWY_EXPORT_AND_TEST_P(GroupSearchTest, TestI6SymSearchMatchesRef);
HWY_EXPORT_AND_TEST_P(GroupSearchTest, TestSearchGroupSymMatchesRef);

// The dispatched public entry points (what QuantizeTensor calls) against the reference.
TEST(GroupSearchDispatchTest, PublicApiMatchesRef) {
  const size_t n = 4096, G = 32, ng = n / G;
  std::vector<float> x(n), w(n);
  ktest::FillWeights(x.data(), n, G, 17, 0.02f);
  ktest::FillUniform(w.data(), n, 18, 0.0f, 2.0f);
  std::vector<uint8_t> c(n / 2), cr(n / 2);
  std::vector<uint16_t> s(ng), sr(ng);
  QuantizeRowI4SymSearch(x.data(), w.data(), n, G, c.data(), s.data());
  quant::QuantizeRowI4SymSearch_ref(x.data(), w.data(), n, G, cr.data(), sr.data());
  EXPECT_EQ(c, cr);
  EXPECT_EQ(s, sr);
  std::vector<uint8_t> c6(3 * n / 4), c6r(3 * n / 4);
  QuantizeRowI6SymSearch(x.data(), nullptr, n, G, c6.data(), s.data());
  quant::QuantizeRowI6SymSearch_ref(x.data(), nullptr, n, G, c6r.data(), sr.data());
  EXPECT_EQ(c6, c6r);
  EXPECT_EQ(s, sr);
}

}  // namespace tessera::kernels
#endif
