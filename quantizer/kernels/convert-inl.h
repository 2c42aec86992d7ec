// Per-target f32 <-> bf16 / f16 conversions (re-included once per Highway target).
// All paths are bit-exact with core/half.h on every target: we do not rely on Highway's
// DemoteTo(bf16) (truncates) or the SCALAR PromoteTo(f16) (mishandles inf/NaN).
#if defined(TESSERA_KERNELS_CONVERT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_CONVERT_INL_H_
#undef TESSERA_KERNELS_CONVERT_INL_H_
#else
#define TESSERA_KERNELS_CONVERT_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// f32 lanes -> bf16 bits in u32 lanes (RNE, NaN -> quiet NaN), recipe 7.1.
template <class DF>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> F32ToBF16Bits(DF df, hn::Vec<DF> v) {
  const hn::RebindToUnsigned<DF> du;
  const auto u = hn::BitCast(du, v);
  const auto lsb = hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u));
  const auto rounded = hn::Add(hn::Add(u, hn::Set(du, 0x7FFFu)), lsb);
  const auto quiet = hn::Or(u, hn::Set(du, 0x00400000u));
  const auto nan = hn::RebindMask(du, hn::IsNaN(v));
  (void)df;
  return hn::ShiftRight<16>(hn::IfThenElse(nan, quiet, rounded));
}

// f16 bits (in u32 lanes, upper half zero) -> f32, exact (same as tessera::F16ToF32,
// including subnormals, inf and NaN payloads).
template <class DF>
HWY_INLINE hn::Vec<DF> F16BitsToF32(DF df, hn::Vec<hn::RebindToUnsigned<DF>> h) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const auto sign = hn::ShiftLeft<16>(hn::And(h, hn::Set(du, 0x8000u)));
  const auto em = hn::And(h, hn::Set(du, 0x7FFFu));
  const auto exp = hn::And(em, hn::Set(du, 0x7C00u));
  // Normal: rebias exponent by 112; inf/NaN: exponent 31 -> 255 (add 224).
  auto bits = hn::Add(hn::ShiftLeft<13>(em), hn::Set(du, 112u << 23));
  bits = hn::IfThenElse(hn::Eq(exp, hn::Set(du, 0x7C00u)), hn::Add(bits, hn::Set(du, 112u << 23)),
                        bits);
  // Subnormal / zero: mant * 2^-24 (exact).
  const auto sub = hn::Mul(hn::ConvertTo(df, hn::BitCast(di, em)), hn::Set(df, 1.0f / 16777216.0f));
  const auto mag =
      hn::IfThenElse(hn::RebindMask(df, hn::Eq(exp, hn::Zero(du))), sub, hn::BitCast(df, bits));
  return hn::BitCast(df, hn::Or(hn::BitCast(du, mag), sign));
}

// Converts n f16 values to f32 (any n, unaligned).
HWY_MAYBE_UNUSED static void F16ToF32(const uint16_t* HWY_RESTRICT x, size_t n,
                                      float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::Rebind<uint16_t, decltype(df)> d16;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(F16BitsToF32(df, hn::PromoteTo(du, hn::LoadU(d16, x + i))), df, out + i);
  }
  if (i < n) {
    HWY_ALIGN uint16_t in[hn::MaxLanes(d16)] = {};
    HWY_ALIGN float tmp[hn::MaxLanes(df)];
    for (size_t k = i; k < n; ++k) in[k - i] = x[k];
    hn::Store(F16BitsToF32(df, hn::PromoteTo(du, hn::Load(d16, in))), df, tmp);
    for (size_t k = i; k < n; ++k) out[k] = tmp[k - i];
  }
}

HWY_MAYBE_UNUSED static void BF16ToF32(const uint16_t* HWY_RESTRICT x, size_t n,
                                       float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::Rebind<uint16_t, decltype(df)> d16;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, x + i)));
    hn::StoreU(hn::BitCast(df, v), df, out + i);
  }
  for (; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(x[i]) << 16;
    float f;
    hwy::CopySameSize(&u, &f);
    out[i] = f;
  }
}

HWY_MAYBE_UNUSED static void F32ToBF16(const float* HWY_RESTRICT x, size_t n,
                                       uint16_t* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint16_t, decltype(df)> d16;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto b = F32ToBF16Bits(df, hn::LoadU(df, x + i));
    hn::StoreU(hn::DemoteTo(d16, hn::BitCast(di, b)), d16, out + i);
  }
  if (i < n) {
    HWY_ALIGN float in[hn::MaxLanes(df)] = {};
    HWY_ALIGN uint16_t tmp[hn::MaxLanes(d16)];
    for (size_t k = i; k < n; ++k) in[k - i] = x[k];
    const auto b = F32ToBF16Bits(df, hn::Load(df, in));
    hn::Store(hn::DemoteTo(d16, hn::BitCast(di, b)), d16, tmp);
    for (size_t k = i; k < n; ++k) out[k] = tmp[k - i];
  }
}

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_CONVERT_INL_H_
