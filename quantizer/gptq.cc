#include "quantizer/gptq.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/kernels/ref.h"
#include "quantizer/nl4.h"
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
    f.h.assign(h, h + k * k);
    return f;
  }
  return absl::InternalError(absl::StrCat("GPTQ: the activation covariance (", k, " x ", k, ") is not positive definite"));
}

namespace {

// Solves L L^T x = b in place (L: n x n lower triangular, row-major, from CholeskyLower).
void CholeskySolveInPlace(const std::vector<double>& l, size_t n, double* b) {
  for (size_t i = 0; i < n; ++i) {
    double s = b[i];
    for (size_t m = 0; m < i; ++m) s -= l[i * n + m] * b[m];
    b[i] = s / l[i * n + i];
  }
  for (size_t i = n; i-- > 0;) {
    double s = b[i];
    for (size_t m = i + 1; m < n; ++m) s -= l[m * n + i] * b[m];
    b[i] = s / l[i * n + i];
  }
}

// Small dense SPD solve (Cholesky); false if not positive definite.
bool SolveSpd(std::vector<double> a, std::vector<double> b, size_t n, std::vector<double>* x) {
  if (!CholeskyLower(a, n)) return false;
  CholeskySolveInPlace(a, n, b.data());
  *x = std::move(b);
  return true;
}

// Sym codes q are stored offset by H (H = 8 for int4, 32 for int6): w = (q - H) * d.
// grid (sym only): q is a level index, w = grid->v[q] * d.
template <bool kAsym>
void Dequant(const std::vector<int>& q, size_t k, size_t group, int H, const Grid16* grid, const uint16_t* scales,
             const uint16_t* mins, std::vector<double>* out) {
  out->resize(k);
  for (size_t c = 0; c < k; ++c) {
    const size_t g = c / group;
    const float d = F16ToF32(scales[g]);
    if constexpr (kAsym) {
      const float p = static_cast<float>(q[c]) * d;
      (*out)[c] = static_cast<double>(p + F16ToF32(mins[g]));
    } else {
      (*out)[c] = static_cast<double>((grid ? grid->v[q[c]] : static_cast<float>(q[c] - H)) * d);
    }
  }
}

double HError(const float* x, const std::vector<double>& deq, size_t k, const double* h) {
  std::vector<double> e(k);
  for (size_t i = 0; i < k; ++i) e[i] = static_cast<double>(x[i]) - deq[i];
  double s = 0.0;
  for (size_t i = 0; i < k; ++i) {
    double r = 0.0;
    const double* hr = h + i * k;
    for (size_t j = 0; j < k; ++j) r += hr[j] * e[j];
    s += e[i] * r;
  }
  return s;
}

template <bool kAsym>
void RefitScales(const float* x, size_t k, size_t group, size_t ng, int H, const Grid16* grid, const double* h,
                 const std::vector<int>& q, uint16_t* scales, uint16_t* mins) {
  // Parameters: per group with real columns, the scale (and the min).
  const size_t ngr = (k + group - 1) / group;
  const size_t per = kAsym ? 2 : 1, n = ngr * per;
  auto basis = [&](size_t p, size_t c) -> double {  // b_p[c]
    const size_t g = p / per;
    if (c / group != g) return 0.0;
    if constexpr (kAsym) return (p % 2 == 0) ? static_cast<double>(q[c]) : 1.0;
    return grid ? static_cast<double>(grid->v[q[c]]) : static_cast<double>(q[c] - H);
  };
  std::vector<double> hb(n * k, 0.0);  // (H b_p)[i]
  for (size_t p = 0; p < n; ++p) {
    const size_t g = p / per, c0 = g * group, c1 = std::min(k, c0 + group);
    for (size_t i = 0; i < k; ++i) {
      double s = 0.0;
      for (size_t c = c0; c < c1; ++c) s += h[i * k + c] * basis(p, c);
      hb[p * k + i] = s;
    }
  }
  std::vector<double> a(n * n), rhs(n);
  double tr = 0.0;
  for (size_t p = 0; p < n; ++p) {
    const size_t g = p / per, c0 = g * group, c1 = std::min(k, c0 + group);
    for (size_t r = 0; r < n; ++r) {
      double s = 0.0;
      for (size_t c = c0; c < c1; ++c) s += basis(p, c) * hb[r * k + c];
      a[p * n + r] = s;
    }
    double s = 0.0;
    for (size_t i = 0; i < k; ++i) s += static_cast<double>(x[i]) * hb[p * k + i];
    rhs[p] = s;
    tr += a[p * n + p];
  }
  for (size_t p = 0; p < n; ++p) a[p * n + p] += 1e-9 * tr / static_cast<double>(n) + 1e-30;
  std::vector<double> theta;
  if (!SolveSpd(a, rhs, n, &theta)) return;
  std::vector<uint16_t> ns(scales, scales + ng), nm;
  if constexpr (kAsym) nm.assign(mins, mins + ng);
  for (size_t g = 0; g < ngr; ++g) {
    const float sv = static_cast<float>(theta[g * per]);
    uint16_t hs = F32ToF16(sv);
    if (F16ToF32(hs) == 0.0f) hs = 0;
    if (!std::isfinite(F16ToF32(hs))) return;
    ns[g] = hs;
    if constexpr (kAsym) {
      const float mv = static_cast<float>(theta[g * per + 1]);
      uint16_t hm = F32ToF16(mv == 0.0f ? 0.0f : mv);
      if (F16ToF32(hm) == 0.0f) hm = 0;
      if (!std::isfinite(F16ToF32(hm))) return;
      nm[g] = hm;
    }
  }
  std::vector<double> d_old, d_new;
  Dequant<kAsym>(q, k, group, H, grid, scales, mins, &d_old);
  Dequant<kAsym>(q, k, group, H, grid, ns.data(), kAsym ? nm.data() : nullptr, &d_new);
  if (HError(x, d_new, k, h) < HError(x, d_old, k, h)) {
    std::copy(ns.begin(), ns.end(), scales);
    if constexpr (kAsym) std::copy(nm.begin(), nm.end(), mins);
  }
}

// Sym: H = 8 (int4) or 32 (int6); the codes q (offset by H) are returned in *q_out (kp values);
// asym (int4 only): H unused. grid (sym only, H unused): q is a level index, w = grid->v[q] * d.
template <bool kAsym>
void GptqRow(const float* x, size_t k, size_t kp, size_t group, int H, const Grid16* grid, const GptqFactor& f,
             const float* act2, std::vector<int>* q_out, uint16_t* scales, uint16_t* mins) {
  std::vector<double> w(x, x + k);
  std::vector<float> gx(group), gw(group);
  std::vector<uint8_t> gc(group / 2);
  std::vector<int> gq(group);
  std::vector<int>& q = *q_out;
  q.assign(kp, 0);
  const size_t ng = kp / group;
  const float fh = static_cast<float>(H);
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
    } else if (grid) {
      SearchGroupGrid(gx.data(), gw.data(), group, *grid, gq.data(), &scales[g]);
    } else {
      kernels::SearchGroupSym(gx.data(), gw.data(), group, H, gq.data(), &scales[g]);  // == quant::SearchGroupSym
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
    } else if (grid) {
      q[c] = NearestLevel(*grid, d != 0.0f ? v * inv : 0.0f);
      deq = grid->v[q[c]] * d;
    } else {
      q[c] = d != 0.0f ? static_cast<int>(std::nearbyint(std::min(std::max(v * inv, -fh), fh - 1.0f))) + H : H;
      deq = static_cast<float>(q[c] - H) * d;
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
  RefitScales<kAsym>(x, k, group, ng, H, grid, f.h.data(), q, scales, mins);
}

void PackI4(const std::vector<int>& q, size_t kp, size_t group, uint8_t* codes) {
  const size_t half = group / 2;
  for (size_t g = 0; g < kp / group; ++g)
    for (size_t j = 0; j < half; ++j)
      codes[g * half + j] = static_cast<uint8_t>(q[g * group + j] | (q[g * group + j + half] << 4));
}

}  // namespace

void QuantizeRowI4SymGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                              const float* act2, uint8_t* codes, uint16_t* scales) {
  std::vector<int> q;
  GptqRow<false>(x, k, kp, group, 8, nullptr, f, act2, &q, scales, nullptr);
  PackI4(q, kp, group, codes);
}

void QuantizeRowI6SymGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                              const float* act2, uint8_t* codes, uint16_t* scales) {
  std::vector<int> q;
  GptqRow<false>(x, k, kp, group, 32, nullptr, f, act2, &q, scales, nullptr);
  for (int& v : q) v -= 32;
  kernels::PackI6_ref(q.data(), kp, group, codes);
}

void QuantizeRowI4AsymGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                               const float* act2, uint8_t* codes, uint16_t* scales, uint16_t* mins) {
  std::vector<int> q;
  GptqRow<true>(x, k, kp, group, 0, nullptr, f, act2, &q, scales, mins);
  PackI4(q, kp, group, codes);
}

void QuantizeRowGridGptq_ref(const float* x, size_t k, size_t kp, size_t group, const GptqFactor& f,
                             const float* act2, const Grid16& grid, uint8_t* codes, uint16_t* scales) {
  std::vector<int> q;
  GptqRow<false>(x, k, kp, group, 0, &grid, f, act2, &q, scales, nullptr);
  PackI4(q, kp, group, codes);
}

absl::StatusOr<std::vector<double>> GptqTargetMap(const double* h, const double* cross, size_t k, double damp) {
  std::vector<double> l(h, h + k * k);
  double mean_diag = 0.0;
  for (size_t i = 0; i < k; ++i) mean_diag += l[i * k + i];
  mean_diag /= static_cast<double>(std::max<size_t>(k, 1));
  if (!(mean_diag > 0.0)) mean_diag = 1.0;
  std::vector<bool> dead(k, false);
  for (size_t i = 0; i < k; ++i) {
    if (!(l[i * k + i] > 0.0)) {
      dead[i] = true;
      for (size_t j = 0; j < k; ++j) l[i * k + j] = l[j * k + i] = 0.0;
      l[i * k + i] = 1.0;
    }
    l[i * k + i] += damp * mean_diag;
  }
  if (!CholeskyLower(l, k))
    return absl::InternalError(absl::StrCat("GPTQ target: the activation covariance (", k, " x ", k, ") is not positive definite"));
  // Row i of A solves (H + damp) a_i = (C - H)[i, :]^T (H symmetric); a dead input channel x~_j
  // (always 0) carries nothing, so its column of C - H is dropped.
  std::vector<double> a(k * k), b(k);
  for (size_t i = 0; i < k; ++i) {
    for (size_t j = 0; j < k; ++j) b[j] = dead[j] ? 0.0 : cross[i * k + j] - h[i * k + j];
    CholeskySolveInPlace(l, k, b.data());
    std::copy(b.begin(), b.end(), a.begin() + static_cast<std::ptrdiff_t>(i * k));
  }
  return a;
}

void ApplyTargetMap(const double* a, size_t k, float* row) {
  std::vector<double> out(row, row + k);
  for (size_t i = 0; i < k; ++i) {
    const double wi = static_cast<double>(row[i]);
    if (wi == 0.0) continue;
    const double* ar = a + i * k;
    for (size_t j = 0; j < k; ++j) out[j] += wi * ar[j];
  }
  for (size_t j = 0; j < k; ++j) row[j] = static_cast<float>(out[j]);
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
