// AWQ-style per-input-channel scaling (Lin et al. 2023), folded exactly into the preceding norm.
//
// A matrix W whose input is the output of a norm with weight g (and bias b) computes
// W (g * x^) = (W diag(s)) ((g / s) * x^): storing W' = W diag(s) and g' = g / s (b' = b / s)
// leaves the float model unchanged, but channels with large activations (s > 1) get finer
// quantization steps relative to their weight. s_j = a_j^alpha / geomean(a^alpha), a_j = the
// RMS of input channel j on the calibration text; alpha is chosen from a grid (0 = no scaling)
// to minimise the output-error proxy sum_rows e H e^T of round-to-nearest quantization
// (e = W - Q(W diag(s)) diag(s)^-1, H = E[x x^T], or diag(mean x^2) without covariances),
// summed over every matrix reading that norm (attn_q/k/v, ffn_gate/up, lm/output).
#pragma once

#include <cstddef>
#include <vector>

#include "quantizer/recipes.h"

namespace tessera::quant {

struct AwqMatrix {
  const float* w = nullptr;  // rows x k, row-major (logical columns)
  size_t rows = 0;
  TensorScheme scheme;       // int4 sym/asym; its group (<= k rounded up)
};

struct AwqChoice {
  double alpha = 0;
  std::vector<float> scale;        // s, k values (all 1 when alpha = 0)
  std::vector<double> error;       // proxy error for each alpha of the grid
  std::vector<double> grid;
};

// act2: mean(x^2) per input channel (k values); cov: k x k E[x x^T] or null.
AwqChoice ChooseAwqScale(const std::vector<AwqMatrix>& mats, size_t k, const float* act2, const double* cov,
                         const std::vector<double>& grid = {0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8});

// s for a given alpha (normalised to geometric mean 1; channels with no activation get s = 1).
std::vector<float> AwqScale(const float* act2, size_t k, double alpha);

// Output-error proxy of quantizing row w (k values) with `scheme` by round to nearest after
// scaling by s (null: no scaling): e H e^T (cov) or sum act2 e^2.
double AwqRowError(const float* w, size_t k, const TensorScheme& scheme, const float* s, const float* act2,
                   const double* cov);

}  // namespace tessera::quant
