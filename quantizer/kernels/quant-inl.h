// Per-target row quantizers / dequantizers (re-included once per Highway target).
// Integer codes and f16 scales are bit-exact with ref.cc on every target (see ref.h).
#if defined(TESSERA_KERNELS_QUANT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_QUANT_INL_H_
#undef TESSERA_KERNELS_QUANT_INL_H_
#else
#define TESSERA_KERNELS_QUANT_INL_H_
#endif

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/half.h"
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "quantizer/kernels/convert-inl.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Quantized kernels use at most 16 float lanes, so every half group (>= 16 elements) is a
// whole number of vectors and no tails exist inside a group.
using QuantTag = hn::CappedTag<float, 16>;

// Round-half-even to int for |v| < 2^22 (exact on every target, unlike SCALAR NearestInt).
template <class DF>
HWY_INLINE hn::Vec<hn::RebindToSigned<DF>> RoundToInt(DF df, hn::Vec<DF> v) {
  const hn::RebindToSigned<DF> di;
  const auto magic = hn::Set(df, 12582912.0f);  // 1.5 * 2^23
  return hn::Sub(hn::BitCast(di, hn::Add(v, magic)), hn::BitCast(di, magic));
}

// Rounds a scale to f16 and returns the rounded value; stores 0 for a zero scale.
HWY_INLINE float QuantRoundScale(float s, uint16_t* stored) {
  const uint16_t h = tessera::F32ToF16(s);
  const float r = tessera::F16ToF32(h);
  *stored = (r == 0.0f) ? uint16_t{0} : h;
  return r;
}

// The group's value of largest magnitude, with its sign (positive on a tie; group a multiple of
// the lane count): the symmetric schemes map it to the most negative level, as Q4_0 does.
template <class DF>
HWY_INLINE float SignedAbsMaxGroup(DF df, const float* HWY_RESTRICT xg, size_t group) {
  const size_t N = hn::Lanes(df);
  auto vmax = hn::Set(df, -hwy::HighestValue<float>());
  auto vamax = hn::Zero(df);
  for (size_t i = 0; i < group; i += N) {
    const auto v = hn::LoadU(df, xg + i);
    vmax = hn::Max(vmax, v);
    vamax = hn::Max(vamax, hn::Abs(v));
  }
  const float smax = hn::GetLane(hn::MaxOfLanes(df, vmax));
  const float amax = hn::GetLane(hn::MaxOfLanes(df, vamax));
  return (smax >= amax) ? amax : -amax;
}

HWY_MAYBE_UNUSED static void QuantizeRowI4Sym(const float* HWY_RESTRICT x, size_t n, size_t group,
                                              uint8_t* HWY_RESTRICT codes,
                                              uint16_t* HWY_RESTRICT scales) {
  const QuantTag df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df);
  const size_t half = group / 2;
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    uint8_t* cg = codes + g * half;
    const float m = SignedAbsMaxGroup(df, xg, group);
    const float d = QuantRoundScale(m / -8.0f, &scales[g]);
    if (d == 0.0f) {
      memset(cg, 0x88, half);
      continue;
    }
    const auto vinv = hn::Set(df, 1.0f / d);
    const auto lo = hn::Set(df, -8.0f);
    const auto hi = hn::Set(df, 7.0f);
    const auto eight = hn::Set(di, 8);
    for (size_t j = 0; j < half; j += N) {
      const auto a = hn::Min(hn::Max(hn::Mul(hn::LoadU(df, xg + j), vinv), lo), hi);
      const auto b = hn::Min(hn::Max(hn::Mul(hn::LoadU(df, xg + j + half), vinv), lo), hi);
      const auto qa = hn::Add(RoundToInt(df, a), eight);
      const auto qb = hn::Add(RoundToInt(df, b), eight);
      hn::StoreU(hn::DemoteTo(du8, hn::Or(qa, hn::ShiftLeft<4>(qb))), du8, cg + j);
    }
  }
}

HWY_MAYBE_UNUSED static void QuantizeRowI4Asym(const float* HWY_RESTRICT x, size_t n, size_t group,
                                               uint8_t* HWY_RESTRICT codes,
                                               uint16_t* HWY_RESTRICT scales,
                                               uint16_t* HWY_RESTRICT mins) {
  const QuantTag df;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df);
  const size_t half = group / 2;
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    uint8_t* cg = codes + g * half;
    auto vmin = hn::LoadU(df, xg);
    auto vmax = vmin;
    for (size_t i = N; i < group; i += N) {
      const auto v = hn::LoadU(df, xg + i);
      vmin = hn::Min(vmin, v);
      vmax = hn::Max(vmax, v);
    }
    float mn = hn::GetLane(hn::MinOfLanes(df, vmin));
    const float mx = hn::GetLane(hn::MaxOfLanes(df, vmax));
    if (mn == 0.0f) mn = 0.0f;  // canonical +0 (Min of +-0 is order dependent)
    mins[g] = tessera::F32ToF16(mn);
    const float min_r = tessera::F16ToF32(mins[g]);
    const float s = QuantRoundScale((mx - mn) / 15.0f, &scales[g]);
    if (s == 0.0f) {
      memset(cg, 0, half);
      continue;
    }
    const auto vinv = hn::Set(df, 1.0f / s);
    const auto vmn = hn::Set(df, min_r);
    const auto lo = hn::Zero(df);
    const auto hi = hn::Set(df, 15.0f);
    for (size_t j = 0; j < half; j += N) {
      const auto a = hn::Min(hn::Max(hn::Mul(hn::Sub(hn::LoadU(df, xg + j), vmn), vinv), lo), hi);
      const auto b =
          hn::Min(hn::Max(hn::Mul(hn::Sub(hn::LoadU(df, xg + j + half), vmn), vinv), lo), hi);
      const auto qa = RoundToInt(df, a);
      const auto qb = RoundToInt(df, b);
      hn::StoreU(hn::DemoteTo(du8, hn::Or(qa, hn::ShiftLeft<4>(qb))), du8, cg + j);
    }
  }
}

HWY_MAYBE_UNUSED static void QuantizeRowI8(const float* HWY_RESTRICT x, size_t n, size_t group,
                                           int8_t* HWY_RESTRICT codes,
                                           uint16_t* HWY_RESTRICT scales) {
  const QuantTag df;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const size_t N = hn::Lanes(df);
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    int8_t* cg = codes + g * group;
    auto vamax = hn::Zero(df);
    for (size_t i = 0; i < group; i += N) vamax = hn::Max(vamax, hn::Abs(hn::LoadU(df, xg + i)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, vamax));
    const float d = QuantRoundScale(amax / 127.0f, &scales[g]);
    if (d == 0.0f) {
      memset(cg, 0, group);
      continue;
    }
    const auto vinv = hn::Set(df, 1.0f / d);
    const auto lo = hn::Set(df, -127.0f);
    const auto hi = hn::Set(df, 127.0f);
    for (size_t i = 0; i < group; i += N) {
      const auto a = hn::Min(hn::Max(hn::Mul(hn::LoadU(df, xg + i), vinv), lo), hi);
      hn::StoreU(hn::DemoteTo(di8, RoundToInt(df, a)), di8, cg + i);
    }
  }
}

// ---- I6 sym (layout in kernels.h) ----------------------------------------------------------
static_assert(std::endian::native == std::endian::little, "I6 unpacking assumes little endian");

// Codes of n elements -> c (0..63, one byte each), 8 elements per u64 (SWAR, no tables, no
// divisions: G is a template constant). Quarter k of a group (elements [kG/4, (k+1)G/4)) takes its
// low nibbles from low-nibble bytes (k & 1) G/4 .. shifted right by 4 (k >> 1), its high bits from
// high-bit bytes 0 .. G/4 shifted right by 2k.
template <size_t G>
HWY_INLINE void UnpackI6GroupsToU8(const uint8_t* HWY_RESTRICT codes, size_t ngroups,
                                   uint8_t* HWY_RESTRICT out) {
  constexpr uint64_t kNib = 0x0F0F0F0F0F0F0F0Full, kTwo = 0x0303030303030303ull;
  constexpr size_t kQ = G / 4;
  for (size_t g = 0; g < ngroups; ++g) {
    const uint8_t* lo = codes + g * (3 * G / 4);
    const uint8_t* hi = lo + G / 2;
    uint8_t* og = out + g * G;
#pragma GCC unroll 16
    for (size_t k = 0; k < 4; ++k) {
#pragma GCC unroll 4
      for (size_t w = 0; w < kQ; w += 8) {
        uint64_t l, h;
        memcpy(&l, lo + (k & 1) * kQ + w, 8);
        memcpy(&h, hi + w, 8);
        const uint64_t c = ((l >> (4 * (k >> 1))) & kNib) | (((h >> (2 * k)) & kTwo) << 4);
        memcpy(og + k * kQ + w, &c, 8);
      }
    }
  }
}

HWY_INLINE void UnpackI6ToU8(const uint8_t* HWY_RESTRICT codes, size_t n, size_t group,
                             uint8_t* HWY_RESTRICT out) {
  switch (group) {
    case 32: return UnpackI6GroupsToU8<32>(codes, n / 32, out);
    case 64: return UnpackI6GroupsToU8<64>(codes, n / 64, out);
    case 128: return UnpackI6GroupsToU8<128>(codes, n / 128, out);
    default:  // any other multiple of 32 (not produced by the quantizer): per-element
      for (size_t e = 0; e < n; ++e) {
        const size_t g = e / group, j = e % group, half = group / 2, quarter = group / 4;
        const uint8_t* lo = codes + g * (3 * group / 4);
        const int l = j < half ? (lo[j] & 0xF) : (lo[j - half] >> 4);
        const int h = (lo[half + j % quarter] >> (2 * (j / quarter))) & 3;
        out[e] = static_cast<uint8_t>(l | (h << 4));
      }
  }
}

// q in [-32, 31] (group values, group % 32 == 0) -> one group's 3G/4 code bytes.
HWY_INLINE void PackI6Group(const int8_t* HWY_RESTRICT q, size_t group, uint8_t* HWY_RESTRICT out) {
  const size_t half = group / 2, quarter = group / 4;
  for (size_t j = 0; j < half; ++j)
    out[j] = static_cast<uint8_t>(((q[j] + 32) & 0xF) | (((q[j + half] + 32) & 0xF) << 4));
  for (size_t j = 0; j < quarter; ++j) {
    out[half + j] = static_cast<uint8_t>(((q[j] + 32) >> 4) | (((q[j + quarter] + 32) >> 4) << 2) |
                                         (((q[j + half] + 32) >> 4) << 4) |
                                         (((q[j + 3 * quarter] + 32) >> 4) << 6));
  }
}

HWY_MAYBE_UNUSED static void QuantizeRowI6Sym(const float* HWY_RESTRICT x, size_t n, size_t group,
                                              uint8_t* HWY_RESTRICT codes,
                                              uint16_t* HWY_RESTRICT scales) {
  // group: a multiple of 32, at most 256.
  const QuantTag df;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const size_t N = hn::Lanes(df);
  HWY_ALIGN int8_t q[256];
  for (size_t g0 = 0; g0 < n; g0 += group) {
    const float* xg = x + g0;
    const float m = SignedAbsMaxGroup(df, xg, group);
    const float d = QuantRoundScale(m / -32.0f, &scales[g0 / group]);
    uint8_t* cg = codes + g0 / group * (3 * group / 4);
    if (d == 0.0f) {
      memset(q, 0, group);
    } else {
      const auto vinv = hn::Set(df, 1.0f / d);
      const auto lo = hn::Set(df, -32.0f);
      const auto hi = hn::Set(df, 31.0f);
      for (size_t i = 0; i < group; i += N) {
        const auto a = hn::Min(hn::Max(hn::Mul(hn::LoadU(df, xg + i), vinv), lo), hi);
        hn::StoreU(hn::DemoteTo(di8, RoundToInt(df, a)), di8, q + i);
      }
    }
    PackI6Group(q, group, cg);
  }
}

// ---- dequantization with f32 scales (shared with MatMul) ------------------------------------

HWY_MAYBE_UNUSED static void DequantI4SymF(const uint8_t* HWY_RESTRICT codes,
                                           const float* HWY_RESTRICT sc, size_t n, size_t group,
                                           float* HWY_RESTRICT out) {
  const QuantTag df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df);
  const size_t half = group / 2;
  const auto mask = hn::Set(di, 0xF);
  const auto eight = hn::Set(di, 8);
  for (size_t g = 0; g < n / group; ++g) {
    const uint8_t* cg = codes + g * half;
    float* og = out + g * group;
    const auto vd = hn::Set(df, sc[g]);
    for (size_t j = 0; j < half; j += N) {
      const auto b = hn::PromoteTo(di, hn::LoadU(du8, cg + j));
      const auto lo = hn::ConvertTo(df, hn::Sub(hn::And(b, mask), eight));
      const auto hi = hn::ConvertTo(df, hn::Sub(hn::ShiftRight<4>(b), eight));
      hn::StoreU(hn::Mul(lo, vd), df, og + j);
      hn::StoreU(hn::Mul(hi, vd), df, og + j + half);
    }
  }
}

HWY_MAYBE_UNUSED static void DequantI4AsymF(const uint8_t* HWY_RESTRICT codes,
                                            const float* HWY_RESTRICT sc,
                                            const float* HWY_RESTRICT mn, size_t n, size_t group,
                                            float* HWY_RESTRICT out) {
  const QuantTag df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df);
  const size_t half = group / 2;
  const auto mask = hn::Set(di, 0xF);
  for (size_t g = 0; g < n / group; ++g) {
    const uint8_t* cg = codes + g * half;
    float* og = out + g * group;
    const auto vs = hn::Set(df, sc[g]);
    const auto vm = hn::Set(df, mn[g]);
    for (size_t j = 0; j < half; j += N) {
      const auto b = hn::PromoteTo(di, hn::LoadU(du8, cg + j));
      const auto lo = hn::ConvertTo(df, hn::And(b, mask));
      const auto hi = hn::ConvertTo(df, hn::ShiftRight<4>(b));
      // Mul then Add (no FMA) to match the reference bit-exactly.
      hn::StoreU(hn::Add(hn::Mul(lo, vs), vm), df, og + j);
      hn::StoreU(hn::Add(hn::Mul(hi, vs), vm), df, og + j + half);
    }
  }
}

HWY_MAYBE_UNUSED static void DequantI8F(const int8_t* HWY_RESTRICT codes,
                                        const float* HWY_RESTRICT sc, size_t n, size_t group,
                                        float* HWY_RESTRICT out) {
  const QuantTag df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const size_t N = hn::Lanes(df);
  for (size_t g = 0; g < n / group; ++g) {
    const auto vd = hn::Set(df, sc[g]);
    for (size_t i = g * group; i < (g + 1) * group; i += N) {
      const auto q = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(di8, codes + i)));
      hn::StoreU(hn::Mul(q, vd), df, out + i);
    }
  }
}

// Thread-local scratch buffer of at least n elements of T (kIndex selects independent buffers).
template <typename T, int kIndex>
T* Scratch(size_t n) {
  static thread_local hwy::AlignedFreeUniquePtr<T[]> buf;
  static thread_local size_t cap = 0;
  if (cap < n) {
    buf = hwy::AllocateAligned<T>(n);
    cap = n;
  }
  return buf.get();
}
template <int kIndex>
int8_t* ScratchBytes(size_t n) {
  return Scratch<int8_t, kIndex>(n);
}
template <int kIndex>
float* ScratchFloats(size_t n) {
  return Scratch<float, kIndex>(n);
}

// I6 sym with f32 scales: unpack to bytes c, then float(c - 32) * d (as the reference).
HWY_MAYBE_UNUSED static void DequantI6SymF(const uint8_t* HWY_RESTRICT codes,
                                           const float* HWY_RESTRICT sc, size_t n, size_t group,
                                           float* HWY_RESTRICT out) {
  uint8_t* c = reinterpret_cast<uint8_t*>(ScratchBytes<0>(n));
  UnpackI6ToU8(codes, n, group, c);
  const QuantTag df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df);
  const auto k32 = hn::Set(di, 32);
  for (size_t g = 0; g < n / group; ++g) {
    const auto vd = hn::Set(df, sc[g]);
    for (size_t i = g * group; i < (g + 1) * group; i += N) {
      const auto q = hn::ConvertTo(df, hn::Sub(hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<decltype(di)>(), hn::LoadU(du8, c + i))), k32));
      hn::StoreU(hn::Mul(q, vd), df, out + i);
    }
  }
}

HWY_MAYBE_UNUSED static void DequantizeRowI4Sym(const uint8_t* HWY_RESTRICT codes,
                                                const uint16_t* HWY_RESTRICT scales, size_t n,
                                                size_t group, float* HWY_RESTRICT out) {
  float* sc = ScratchFloats<0>(n / group);
  F16ToF32(scales, n / group, sc);
  DequantI4SymF(codes, sc, n, group, out);
}

HWY_MAYBE_UNUSED static void DequantizeRowI4Asym(const uint8_t* HWY_RESTRICT codes,
                                                 const uint16_t* HWY_RESTRICT scales,
                                                 const uint16_t* HWY_RESTRICT mins, size_t n,
                                                 size_t group, float* HWY_RESTRICT out) {
  const size_t ng = n / group;
  float* sc = ScratchFloats<0>(2 * ng);
  F16ToF32(scales, ng, sc);
  F16ToF32(mins, ng, sc + ng);
  DequantI4AsymF(codes, sc, sc + ng, n, group, out);
}

HWY_MAYBE_UNUSED static void DequantizeRowI8(const int8_t* HWY_RESTRICT codes,
                                             const uint16_t* HWY_RESTRICT scales, size_t n,
                                             size_t group, float* HWY_RESTRICT out) {
  float* sc = ScratchFloats<0>(n / group);
  F16ToF32(scales, n / group, sc);
  DequantI8F(codes, sc, n, group, out);
}

HWY_MAYBE_UNUSED static void DequantizeRowI6Sym(const uint8_t* HWY_RESTRICT codes,
                                                const uint16_t* HWY_RESTRICT scales, size_t n,
                                                size_t group, float* HWY_RESTRICT out) {
  float* sc = ScratchFloats<0>(n / group);
  F16ToF32(scales, n / group, sc);
  DequantI6SymF(codes, sc, n, group, out);
}

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_QUANT_INL_H_
