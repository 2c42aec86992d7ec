// Dynamic-dispatch entry point for MatMul (one dispatch per call).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quantizer/kernels/matmul.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "quantizer/kernels/matmul-inl.h"

#if HWY_ONCE
#include "quantizer/kernels/kernels.h"

namespace tessera::kernels {

HWY_EXPORT(MatMul);

void MatMul(const WeightMatrix& w, const float* x, size_t T, size_t ldx, float* y, size_t ldy,
            size_t row_begin, size_t row_end) {
  HWY_DYNAMIC_DISPATCH(MatMul)(w, x, T, ldx, y, ldy, row_begin, row_end);
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
