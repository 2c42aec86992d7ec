// Dynamic-dispatch entry points for the row quantizers / dequantizers.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quantizer/kernels/quant.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "quantizer/kernels/quant-inl.h"

#if HWY_ONCE
#include "quantizer/kernels/kernels.h"

namespace tessera::kernels {

HWY_EXPORT(QuantizeRowI4Sym);
HWY_EXPORT(QuantizeRowI4Asym);
HWY_EXPORT(QuantizeRowI8);
HWY_EXPORT(QuantizeRowI6Sym);
HWY_EXPORT(DequantizeRowI6Sym);
HWY_EXPORT(DequantizeRowI4Sym);
HWY_EXPORT(DequantizeRowI4Asym);
HWY_EXPORT(DequantizeRowI8);

void QuantizeRowI4Sym(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales) {
  HWY_DYNAMIC_DISPATCH(QuantizeRowI4Sym)(x, n, group, codes, scales);
}
void QuantizeRowI4Asym(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales,
                       uint16_t* mins) {
  HWY_DYNAMIC_DISPATCH(QuantizeRowI4Asym)(x, n, group, codes, scales, mins);
}
void QuantizeRowI8(const float* x, size_t n, size_t group, int8_t* codes, uint16_t* scales) {
  HWY_DYNAMIC_DISPATCH(QuantizeRowI8)(x, n, group, codes, scales);
}
void QuantizeRowI6Sym(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales) {
  HWY_DYNAMIC_DISPATCH(QuantizeRowI6Sym)(x, n, group, codes, scales);
}
void DequantizeRowI6Sym(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                        float* out) {
  HWY_DYNAMIC_DISPATCH(DequantizeRowI6Sym)(codes, scales, n, group, out);
}
void DequantizeRowI4Sym(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                        float* out) {
  HWY_DYNAMIC_DISPATCH(DequantizeRowI4Sym)(codes, scales, n, group, out);
}
void DequantizeRowI4Asym(const uint8_t* codes, const uint16_t* scales, const uint16_t* mins,
                         size_t n, size_t group, float* out) {
  HWY_DYNAMIC_DISPATCH(DequantizeRowI4Asym)(codes, scales, mins, n, group, out);
}
void DequantizeRowI8(const int8_t* codes, const uint16_t* scales, size_t n, size_t group,
                     float* out) {
  HWY_DYNAMIC_DISPATCH(DequantizeRowI8)(codes, scales, n, group, out);
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
