#include "quantizer/gptq.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "quantizer/search.h"

namespace tessera::quant {
namespace {

// In-place lower Cholesky of a row-major n x n SPD matrix (upper part left untouched).
bool CholeskyLower(std::vector<double>& a, size_t n) {
  for (size_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (size_t k = 0; k < j; ++k) d -= a[j * n + k] * a[j * n + k];
    if (!(d > 0.0)) return false;
    d = std::sqrt(d);
    a[j * n + j] = d;
    for (size_t i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (size_t k = 0; k < j; ++k) s -= a[i * n + k] * a[j * n + k];
      a[i * n + j] = s / d;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<GptqFactor> GptqPrepare(const double* h, size_t k, double damp, bool act_order) {
  std::vector<uint32_t> perm(k);
  for (size_t i = 0; i < k; ++i) perm[i] = static_cast<uint32_t>(i);
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](uint32_t x, uint32_t y) { return h[x * k + x] > h[y * k + y]; });
  std::vector<double> a(k * k);
  for (size_t i = 0; i < k; ++i)
    for (size_t j = 0; j < k; ++j) a[i * k + j] = h[perm[i] * k + perm[j]];
  double mean_diag = 0.0;
  for (size_t i = 0; i < k; ++i) mean_diag += a[i * k + i];
  mean_diag /= static_cast<double>(std::max<size_t>(k, 1));
  if (!(mean_diag > 0.0)) mean_diag = 1.0;
  for (size_t i = 0; i < k; ++i) {
    if (!(a[i * k + i] > 0.0)) {
      for (size_t j = 0; j < k; ++j) a[i * k + j] = a[j * k + i] = 0.0;
      a[i * k + i] = 1.0;
    }
    a[i * k + i] += damp * mean_diag;
  }
  // H = L L^T  ->  Hinv = L^-T L^-1.
  for (double mult : {1.0, 10.0, 100.0}) {
    std::vector<double> l = a;
    if (mult > 1.0)
      for (size_t i = 0; i < k; ++i) l[i * k + i] += (mult - 1.0) * damp * mean_diag;
    if (!CholeskyLower(l, k)) continue;
    // Linv (lower): solve L Linv = I column by column.
    std::vector<double> linv(k * k, 0.0);
    for (size_t c = 0; c < k; ++c) {
      for (size_t i = c; i < k; ++i) {
        double s = i == c ? 1.0 : 0.0;
        for (size_t m = c; m < i; ++m) s -= l[i * k + m] * linv[m * k + c];
        linv[i * k + c] = s / l[i * k + i];
      }
    }
    // Hinv = Linv^T Linv (symmetric).
    std::vector<double> hinv(k * k, 0.0);
    for (size_t i = 0; i < k; ++i)
      for (size_t j = 0; j <= i; ++j) {
        double s = 0.0;
        for (size_t m = i; m < k; ++m) s += linv[m * k + i] * linv[m * k + j];
        hinv[i * k + j] = hinv[j * k + i] = s;
      }
    // Hinv = U^T U with U upper triangular (the transpose of Hinv's lower Cholesky factor).
    std::vector<double> u(k * k, 0.0);
    bool ok = true;
    for (size_t i = 0; i < k && ok; ++i) {
      double d = hinv[i * k + i];
      for (size_t m = 0; m < i; ++m) d -= u[m * k + i] * u[m * k + i];
      if (!(d > 0.0)) {
        ok = false;
        break;
      }
      d = std::sqrt(d);
      u[i * k + i] = d;
      for (size_t j = i + 1; j < k; ++j) {
        double s = hinv[i * k + j];
        for (size_t m = 0; m < i; ++m) s -= u[m * k + i] * u[m * k + j];
        u[i * k + j] = s / d;
      }
    }
    if (!ok) continue;
    GptqFactor f;
    f.k = k;
    f.u = std::move(u);
    f.perm = perm;
    f.act_order = act_order;
    return f;
  }
  return absl::InternalError(absl::StrCat("GPTQ: the activation covariance (", k, " x ", k, ") is not positive definite"));
}

namespace {

template <bool kAsym>
void GptqRow(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f, const float* act2,
             uint8_t* codes, uint16_t* scales, uint16_t* mins) {
  std::vector<double> w(x, x + k);
  std::vector<float> gx(group), gw(group);
  std::vector<uint8_t> gc(group / 2);
  std::vector<int> q(kp, 0);
  const size_t half = group / 2, ng = kp / group;
  // Group scale (and min) from the current weights of group g, by the weighted search.
  auto choose = [&](size_t g) {
    const size_t g0 = g * group;
    for (size_t i = 0; i < group; ++i) {
      const size_t c = g0 + i;
      gx[i] = c < k ? static_cast<float>(w[c]) : 0.0f;
      gw[i] = c < k ? (act2 ? act2[c] : 1.0f) : 0.0f;
    }
    if constexpr (kAsym) {
      QuantizeRowI4AsymSearch_ref(gx.data(), gw.data(), group, group, gc.data(), &scales[g], &mins[g]);
    } else {
      QuantizeRowI4SymSearch_ref(gx.data(), gw.data(), group, group, gc.data(), &scales[g]);
    }
  };
  auto quantize = [&](size_t c, float v) {
    const size_t g = c / group;
    const float d = F16ToF32(scales[g]);
    const float inv = d != 0.0f ? 1.0f / d : 0.0f;
    float deq;
    if constexpr (kAsym) {
      const float mn = F16ToF32(mins[g]);
      q[c] = d != 0.0f ? static_cast<int>(std::nearbyint(std::min(std::max((v - mn) * inv, 0.0f), 15.0f))) : 0;
      const float p = static_cast<float>(q[c]) * d;
      deq = p + mn;
    } else {
      q[c] = d != 0.0f ? static_cast<int>(std::nearbyint(std::min(std::max(v * inv, -8.0f), 7.0f))) + 8 : 8;
      deq = static_cast<float>(q[c] - 8) * d;
    }
    return deq;
  };
  if (f.act_order)
    for (size_t g = 0; g < ng; ++g) choose(g);
  for (size_t p = 0; p < k; ++p) {
    const size_t c = f.perm[p];
    if (!f.act_order && c % group == 0) choose(c / group);
    const float deq = quantize(c, static_cast<float>(w[c]));
    const double* urow = f.u.data() + p * k;
    const double err = (w[c] - static_cast<double>(deq)) / urow[p];
    for (size_t m = p + 1; m < k; ++m) w[f.perm[m]] -= err * urow[m];
  }
  for (size_t c = k; c < kp; ++c) {
    if (!f.act_order && c % group == 0) choose(c / group);
    quantize(c, 0.0f);
  }
  for (size_t g = 0; g < ng; ++g)
    for (size_t j = 0; j < half; ++j)
      codes[g * half + j] = static_cast<uint8_t>(q[g * group + j] | (q[g * group + j + half] << 4));
}

}  // namespace

void QuantizeRowI4SymGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                              const float* act2, uint8_t* codes, uint16_t* scales) {
  GptqRow<false>(x, k, kp, group, f, act2, codes, scales, nullptr);
}

void QuantizeRowI4AsymGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                               const float* act2, uint8_t* codes, uint16_t* scales, uint16_t* mins) {
  GptqRow<true>(x, k, kp, group, f, act2, codes, scales, mins);
}

double HessianError(const float* x, const float* xh, size_t k, const double* h) {
  std::vector<double> e(k);
  for (size_t i = 0; i < k; ++i) e[i] = static_cast<double>(x[i]) - xh[i];
  double s = 0.0;
  for (size_t i = 0; i < k; ++i) {
    double r = 0.0;
    for (size_t j = 0; j < k; ++j) r += h[i * k + j] * e[j];
    s += e[i] * r;
  }
  return s;
}

}  // namespace tessera::quant
