// Dynamic-dispatch entry points for the element-wise ops and ActiveTargetName().
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quantizer/kernels/ops.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/targets.h"
#include "quantizer/kernels/ops-inl.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
static const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }
}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "quantizer/kernels/kernels.h"

namespace tessera::kernels {

HWY_EXPORT(Dot);
HWY_EXPORT(RMSNorm);
HWY_EXPORT(Softmax);
HWY_EXPORT(SiluMul);
HWY_EXPORT(Axpy);
HWY_EXPORT(AttendHead);
HWY_EXPORT(TargetNameImpl);

float Dot(const float* a, const float* b, size_t n) { return HWY_DYNAMIC_DISPATCH(Dot)(a, b, n); }
void RMSNorm(const float* x, const float* w, size_t n, float eps, float* out) {
  HWY_DYNAMIC_DISPATCH(RMSNorm)(x, w, n, eps, out);
}
void Softmax(float* x, size_t n) { HWY_DYNAMIC_DISPATCH(Softmax)(x, n); }
void SiluMul(const float* gate, const float* up, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(SiluMul)(gate, up, n, out);
}
void Axpy(float a, const float* x, size_t n, float* y) { HWY_DYNAMIC_DISPATCH(Axpy)(a, x, n, y); }
void AttendHead(const float* q, const float* k, const float* v, size_t n, size_t D, float scale,
                float* scores, float* out) {
  HWY_DYNAMIC_DISPATCH(AttendHead)(q, k, v, n, D, scale, scores, out);
}
const char* ActiveTargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

}  // namespace tessera::kernels
#endif  // HWY_ONCE
