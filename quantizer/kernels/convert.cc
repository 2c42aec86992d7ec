// Dynamic-dispatch entry points for the conversion kernels.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quantizer/kernels/convert.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "quantizer/kernels/convert-inl.h"

#if HWY_ONCE
#include "quantizer/kernels/kernels.h"

namespace tessera::kernels {

HWY_EXPORT(F32ToBF16);
HWY_EXPORT(BF16ToF32);
HWY_EXPORT(F16ToF32);

void F32ToBF16(const float* x, size_t n, uint16_t* out) {
  HWY_DYNAMIC_DISPATCH(F32ToBF16)(x, n, out);
}
void BF16ToF32(const uint16_t* x, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(BF16ToF32)(x, n, out);
}
void F16ToF32(const uint16_t* x, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(F16ToF32)(x, n, out);
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
