// Per-target helpers for the I4 nl weight type (kernels.h; levels in core/iq4nl.h),
// re-included once per Highway target by matmul-inl.h.
#if defined(TESSERA_KERNELS_NL4_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_NL4_INL_H_
#undef TESSERA_KERNELS_NL4_INL_H_
#else
#define TESSERA_KERNELS_NL4_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "core/iq4nl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// n elements of I4 codes (groups of `group`, group / 2 a multiple of 16) -> their int8 levels
// kI4NlLevels[nibble]: a 16-entry byte table looked up by the nibbles (pshufb / vpshufb).
HWY_INLINE void UnpackI4NlToI8(const uint8_t* HWY_RESTRICT codes, size_t n, size_t group,
                               int8_t* HWY_RESTRICT out) {
  const size_t half = group / 2;
#if HWY_TARGET == HWY_SCALAR
  for (size_t g = 0; g < n / group; ++g) {
    for (size_t j = 0; j < half; ++j) {
      const uint8_t b = codes[g * half + j];
      out[g * group + j] = tessera::kI4NlLevels[b & 0xF];
      out[g * group + half + j] = tessera::kI4NlLevels[b >> 4];
    }
  }
#else
  const hn::Full128<uint8_t> d8;
  const hn::Full128<int8_t> di8;
  const auto lut = hn::LoadU(di8, tessera::kI4NlLevels);
  const auto mask = hn::Set(d8, uint8_t{0xF});
  for (size_t g = 0; g < n / group; ++g) {
    const uint8_t* cg = codes + g * half;
    int8_t* og = out + g * group;
    for (size_t j = 0; j < half; j += 16) {
      const auto v = hn::LoadU(d8, cg + j);
      const auto lo = hn::BitCast(di8, hn::And(v, mask));
      const auto hi = hn::BitCast(di8, hn::And(hn::ShiftRight<4>(v), mask));
      hn::StoreU(hn::TableLookupBytes(lut, lo), di8, og + j);
      hn::StoreU(hn::TableLookupBytes(lut, hi), di8, og + half + j);
    }
  }
#endif
}

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_NL4_INL_H_
