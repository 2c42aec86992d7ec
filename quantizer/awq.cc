#include "quantizer/awq.h"

#include <algorithm>
#include <cmath>

#include "core/thread_pool.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/nl4.h"

namespace tessera::quant {

std::vector<float> AwqScale(const float* act2, size_t k, double alpha) {
  std::vector<float> s(k, 1.0f);
  if (alpha == 0.0) return s;
  double logsum = 0;
  size_t n = 0;
  for (size_t j = 0; j < k; ++j)
    if (act2[j] > 0.0f) {
      logsum += alpha * 0.5 * std::log(static_cast<double>(act2[j]));
      ++n;
    }
  if (n == 0) return s;
  const double mean = logsum / static_cast<double>(n);
  for (size_t j = 0; j < k; ++j)
    if (act2[j] > 0.0f) {
      const double l = alpha * 0.5 * std::log(static_cast<double>(act2[j])) - mean;
      s[j] = static_cast<float>(std::exp(std::clamp(l, -9.0, 9.0)));  // within e^+-9 of the mean
    }
  return s;
}

double AwqRowError(const float* w, size_t k, const TensorScheme& scheme, const float* s, const float* act2,
                   const double* cov) {
  const size_t g = scheme.group;
  const size_t kp = (k + g - 1) / g * g, ng = kp / g;
  std::vector<float> x(kp, 0.0f), deq(kp);
  for (size_t j = 0; j < k; ++j) x[j] = s ? w[j] * s[j] : w[j];
  std::vector<uint8_t> codes(kp);
  std::vector<uint16_t> sc(ng), mn(ng);
  if (scheme.type == QType::kI4Asym) {
    kernels::QuantizeRowI4Asym(x.data(), kp, g, codes.data(), sc.data(), mn.data());
    kernels::DequantizeRowI4Asym(codes.data(), sc.data(), mn.data(), kp, g, deq.data());
  } else if (scheme.type == QType::kI6Sym) {
    kernels::QuantizeRowI6Sym(x.data(), kp, g, codes.data(), sc.data());
    kernels::DequantizeRowI6Sym(codes.data(), sc.data(), kp, g, deq.data());
  } else if (scheme.type == QType::kI4Nl) {
    quant::QuantizeRowGridRtn_ref(x.data(), kp, g, quant::Nl4Grid(), codes.data(), sc.data());
    quant::DequantizeRowGrid_ref(codes.data(), sc.data(), kp, g, quant::Nl4Grid(), deq.data());
  } else if (scheme.type == QType::kI8) {
    kernels::QuantizeRowI8(x.data(), kp, g, reinterpret_cast<int8_t*>(codes.data()), sc.data());
    kernels::DequantizeRowI8(reinterpret_cast<int8_t*>(codes.data()), sc.data(), kp, g, deq.data());
  } else {
    kernels::QuantizeRowI4Sym(x.data(), kp, g, codes.data(), sc.data());
    kernels::DequantizeRowI4Sym(codes.data(), sc.data(), kp, g, deq.data());
  }
  std::vector<double> e(k);
  for (size_t j = 0; j < k; ++j) e[j] = static_cast<double>(w[j]) - static_cast<double>(deq[j]) / (s ? s[j] : 1.0f);
  double err = 0;
  if (cov != nullptr) {
    for (size_t i = 0; i < k; ++i) {
      double r = 0;
      const double* h = cov + i * k;
      for (size_t j = 0; j < k; ++j) r += h[j] * e[j];
      err += e[i] * r;
    }
  } else {
    for (size_t j = 0; j < k; ++j) err += static_cast<double>(act2[j]) * e[j] * e[j];
  }
  return err;
}

AwqChoice ChooseAwqScale(const std::vector<AwqMatrix>& mats, size_t k, const float* act2, const double* cov,
                         const std::vector<double>& grid) {
  AwqChoice c;
  c.grid = grid;
  double best = 0;
  for (size_t gi = 0; gi < grid.size(); ++gi) {
    const std::vector<float> s = AwqScale(act2, k, grid[gi]);
    double total = 0;
    for (const AwqMatrix& m : mats) {
      std::vector<double> part(m.rows, 0.0);
      ThreadPool::Global().ParallelFor(m.rows, 8, [&](size_t r0, size_t r1) {
        for (size_t r = r0; r < r1; ++r) part[r] = AwqRowError(m.w + r * k, k, m.scheme, s.data(), act2, cov);
      });
      for (double p : part) total += p;  // row order: independent of the thread count
    }
    c.error.push_back(total);
    if (gi == 0 || total < best) {
      best = total;
      c.alpha = grid[gi];
      c.scale = s;
    }
  }
  return c;
}

}  // namespace tessera::quant
