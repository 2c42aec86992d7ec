// Dynamic-dispatch entry points for the SIMD group scale search (group_search-inl.h).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quantizer/kernels/group_search.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "quantizer/kernels/group_search-inl.h"

#if HWY_ONCE
#include "quantizer/kernels/kernels.h"

namespace tessera::kernels {

HWY_EXPORT(SearchGroupSym);
HWY_EXPORT(QuantizeRowI4SymSearch);
HWY_EXPORT(QuantizeRowI6SymSearch);

void SearchGroupSym(const float* x, const float* w, size_t group, int half_levels, int* q, uint16_t* scale) {
  HWY_DYNAMIC_DISPATCH(SearchGroupSym)(x, w, group, half_levels, q, scale);
}
void QuantizeRowI4SymSearch(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                            uint16_t* scales) {
  HWY_DYNAMIC_DISPATCH(QuantizeRowI4SymSearch)(x, w, n, group, codes, scales);
}
void QuantizeRowI6SymSearch(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                            uint16_t* scales) {
  HWY_DYNAMIC_DISPATCH(QuantizeRowI6SymSearch)(x, w, n, group, codes, scales);
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
