// Shared fixtures for the int8-activation kernel tests (q8_test, gemm_test): activation buffers
// and quantized I4 sym / I4 nl / I6 sym / I8 matrices made with the scalar reference quantizers.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"

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
      // I4 nl: the same nibbles and scales read through the IQ4_NL levels (any nibbles are valid).
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

// "I4 rows=.. cols=.. G=.. T=.." for failure messages.
inline std::string Q8CaseName(WType type, size_t rows, size_t cols, size_t group, size_t T) {
  const char* t = type == WType::kI8      ? "I8"
                  : type == WType::kI6Sym ? "I6"
                  : type == WType::kI4Nl  ? "I4nl"
                                          : "I4";
  return std::string(t) + " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
         " G=" + std::to_string(group) + " T=" + std::to_string(T);
}

// got (row r of w times the f32 activations x, computed from x's int8 quantization with block
// scales d) is within the activation-quantization error of the double-precision dot:
// |sum_k w_k (x_k - xq_k)| <= sum_k |w_k| d_a / 2.
inline ::testing::AssertionResult WithinActQuantBound(const WeightMatrix& w, size_t r, const float* x,
                                                      const float* d, float got) {
  double abs_sum = 0.0;
  const double exact = DotRow_ref(w, r, x, &abs_sum);
  std::vector<float> wrow(w.cols);
  DequantizeRow_ref(w, r, wrow.data());
  double bound = 0.0;
  for (size_t k = 0; k < w.cols; ++k) bound += std::fabs(wrow[k]) * 0.5 * d[k / kQ8Block];
  const double tol = bound * 1.001 + 1e-5 * abs_sum + 1e-30;
  if (std::fabs(got - exact) <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << ", exact " << exact << ", bound " << tol;
}

}  // namespace tessera::kernels::ktest
