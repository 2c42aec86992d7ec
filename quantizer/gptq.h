// GPTQ (Frantar et al. 2022) for group-wise INT4 / INT6 with f16 scales, scalar reference.
//
// With H = E[x x^T] over the calibration activations of a matrix's input, the output error of
// a quantized row is (w - q) H (w - q)^T. GPTQ quantizes one column at a time and spreads each
// column's rounding error over the not yet quantized columns through the upper Cholesky factor U
// of (H + damp)^-1 (Hinv = U^T U): w_k -= (w_j - q_j) / U_jj * U_jk for k > j. Each group's scale
// (and min) is chosen when the group is reached, from the already-updated weights, by the scale
// search of quantizer/search.h weighted with diag(H); the codes are then the nearest for that
// scale, column by column. Rows are independent (run in parallel); each row is sequential double
// arithmetic in a fixed order, so the result is deterministic. The stored format is unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera::quant {

struct GptqFactor {
  size_t k = 0;
  // Column processing order: identity, or with act_order the columns by decreasing diag(H)
  // (ties by index); U is the factor of H permuted to that order.
  std::vector<uint32_t> perm;
  bool act_order = false;
  std::vector<double> u;  // row-major k x k, upper triangular: (P (H + damp I) P^T)^-1 = U^T U
  std::vector<double> h;  // H itself (original order), for the final scale refit
};

// h: k x k symmetric (mean of x x^T). damp: fraction of mean(diag(H)) added to the diagonal;
// channels with a zero diagonal ("dead") get diagonal 1. With act_order, group scales are fixed
// up front from the original weights ("static groups") and columns are quantized in decreasing
// order of activation energy (measured on kjv6L int4-g32: KLD 0.0167 vs 0.0156 without, so off
// by default; damp 0.001 / 0.1 gave 0.0158 / 0.0156).
absl::StatusOr<GptqFactor> GptqPrepare(const double* h, size_t k, double damp = 0.01, bool act_order = false);

// After the column pass, the group scales (and mins) of the row are re-fitted jointly by least
// squares in the H metric with the codes fixed, rounded to f16, and kept only if
// (x - deq) H (x - deq)^T decreases.
// One row: x has k logical values; codes/scales(/mins) cover kp = k rounded up to `group`
// (padding quantizes zeros). act2: diag(H) (k values), the weights of the per-group scale search.
void QuantizeRowI4SymGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                              const float* act2, uint8_t* codes, uint16_t* scales);
void QuantizeRowI4AsymGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                               const float* act2, uint8_t* codes, uint16_t* scales, uint16_t* mins);
// The same column pass with int6 levels [-32, 31] (kernels.h I6 sym layout, 3 kp / 4 code bytes).
void QuantizeRowI6SymGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                              const float* act2, uint8_t* codes, uint16_t* scales);

// The same column pass on a 16-level grid (quantizer/nl4.h: w = grid.v[c] * d, int4 code layout).
struct Grid16;
void QuantizeRowGridGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                             const float* act2, const Grid16& grid, uint8_t* codes, uint16_t* scales);

// Sequential calibration: h = E[x~ x~^T] of the inputs x~ the quantized model gives a matrix,
// cross = E[x x~^T] with the source model's inputs x ([i][j] = E[x_i x~_j]), both k x k. Returns A
// (k x k, row-major) = (C - H) (H + damp)^-1 (the same damping and dead-channel handling as
// GptqPrepare), so that w' = w + w A = w C (H + damp)^-1 up to the damping term: the row whose
// output on x~ best matches w's output on x, E[(w x - w' x~)^2] minimal. C = H gives A = 0.
absl::StatusOr<std::vector<double>> GptqTargetMap(const double* h, const double* cross, size_t k, double damp = 0.01);
// row[j] += sum_i row[i] A[i][j] (k values, in double).
void ApplyTargetMap(const double* a, size_t k, float* row);

// Output-error proxy of a dequantized row: (x - xh) H (x - xh)^T.
double HessianError(const float* x, const float* xh, size_t k, const double* h);

}  // namespace tessera::quant
