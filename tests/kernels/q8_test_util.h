// Shared fixtures for the int8-activation kernel tests (q8_test, gemm_test): activation buffers
// and quantized I4 sym / I6 sym / I8 matrices made with the scalar reference quantizers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "quantizer/kernels/kernels.h"
#include "quantizer/kernels/ref.h"
#include "tests/kernels/kernel_test_util.h"

namespace tessera::kernels::ktest {

// Quantized activations for T tokens of K values, prefilled with junk the kernels must overwrite.
struct OwnedQ8Acts {
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int32_t> sum;
  Q8Acts a;
  OwnedQ8Acts(size_t T, size_t K, int8_t fill = 99) {
    a.Kp = Q8PaddedK(K);
    q.assign(T * a.Kp, fill);
    d.assign(T * a.Kp / kQ8Block, -1.0f);
    sum.assign(T * a.Kp / kQ8Block, 12345);
    a.q = q.data();
    a.d = d.data();
    a.sum = sum.data();
  }
};

// A matrix, its canonical codes and scales, and (filled in by the caller) a repacked layout.
struct OwnedQ8Matrix {
  WeightMatrix w;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;
  std::vector<uint8_t> packed;
  Q8Weights q8;
};

// rows x cols weights (FillWeights) quantized to `type` by the scalar reference; m.w is set,
// m.packed and m.q8 are left for the layout under test.
inline OwnedQ8Matrix QuantizedQ8Matrix(WType type, size_t rows, size_t cols, size_t group,
                                       uint32_t seed) {
  OwnedQ8Matrix m;
  std::vector<float> f(rows * cols);
  FillWeights(f.data(), f.size(), group, seed, 0.1f);
  const size_t ng = cols / group;
  const size_t row_bytes = type == WType::kI8 ? cols : type == WType::kI6Sym ? 3 * cols / 4 : cols / 2;
  m.codes.resize(rows * row_bytes);
  m.scales.resize(rows * ng);
  for (size_t r = 0; r < rows; ++r) {
    if (type == WType::kI8) {
      QuantizeRowI8_ref(f.data() + r * cols, cols, group,
                        reinterpret_cast<int8_t*>(m.codes.data()) + r * cols,
                        m.scales.data() + r * ng);
    } else if (type == WType::kI6Sym) {
      QuantizeRowI6Sym_ref(f.data() + r * cols, cols, group, m.codes.data() + r * row_bytes,
                           m.scales.data() + r * ng);
    } else {
      QuantizeRowI4Sym_ref(f.data() + r * cols, cols, group, m.codes.data() + r * row_bytes,
                           m.scales.data() + r * ng);
    }
  }
  m.w.type = type;
  m.w.data = m.codes.data();
  m.w.scales = m.scales.data();
  m.w.rows = rows;
  m.w.cols = cols;
  m.w.group = group;
  return m;
}

}  // namespace tessera::kernels::ktest
