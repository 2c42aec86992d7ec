// Shared helpers for the quantizer tests.
#pragma once

#include <cstddef>

namespace tessera::quant::test {

// sum_i w_i (x_i - xh_i)^2 in double, w_i = 1 where wp is null: the error the searches minimise.
inline double WeightedSse(const float* x, const float* xh, const float* wp, size_t n) {
  double e2 = 0;
  for (size_t i = 0; i < n; ++i) {
    const float diff = x[i] - xh[i];
    e2 += static_cast<double>(wp ? wp[i] : 1.0f) * diff * diff;
  }
  return e2;
}

}  // namespace tessera::quant::test
