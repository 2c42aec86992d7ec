#include "quantizer/search.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/half.h"
#include "quantizer/kernels/ref.h"

namespace tessera::quant {
namespace {

constexpr size_t kMaxGroup = 128;

// Clamp, then round half to even: the same result as std::nearbyint in the default rounding mode
// for |v| < 2^22 (v is clamped to [-8, 15] here), without a libm call on baseline x86-64
// (std::nearbyint is a function call without SSE4.1; this is the search's inner loop).
inline int RoundClamp(float v, float lo, float hi) {
  v = std::min(std::max(v, lo), hi);
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23 (IEEE arithmetic: not folded without -ffast-math)
  return static_cast<int>((v + kMagic) - kMagic);
}
inline float Wt(const float* w, size_t i) { return w ? w[i] : 1.0f; }

// f16 of a scale; -0 / underflow -> 0.
inline uint16_t ScaleBits(float s) {
  const uint16_t h = F32ToF16(s);
  return F16ToF32(h) == 0.0f ? uint16_t{0} : h;
}

// ---- symmetric: x ~ l * d, l in [-H, H - 1] (H = 8 for int4, 32 for int6) -------------------
struct SymEval {
  double err;
  uint16_t h;
  int l[kMaxGroup];
};

void EvalSym(const float* x, const float* w, size_t G, int H, uint16_t h, SymEval* e) {
  e->h = h;
  const float d = F16ToF32(h);
  double err = 0.0;
  if (d == 0.0f) {
    e->h = 0;
    for (size_t i = 0; i < G; ++i) {
      e->l[i] = 0;
      err += static_cast<double>(Wt(w, i)) * x[i] * x[i];
    }
    e->err = err;
    return;
  }
  const float inv = 1.0f / d;
  for (size_t i = 0; i < G; ++i) {
    const int l = RoundClamp(x[i] * inv, static_cast<float>(-H), static_cast<float>(H - 1));
    e->l[i] = l;
    const float diff = x[i] - static_cast<float>(l) * d;
    err += static_cast<double>(Wt(w, i)) * diff * diff;
  }
  e->err = err;
}

// Weighted least-squares scale for fixed codes; false when undefined.
bool RefitSym(const float* x, const float* w, size_t G, const int* l, uint16_t* h) {
  double sxl = 0.0, sll = 0.0;
  for (size_t i = 0; i < G; ++i) {
    const double wi = Wt(w, i);
    sxl += wi * x[i] * l[i];
    sll += wi * l[i] * l[i];
  }
  if (!(sll > 0.0)) return false;
  *h = ScaleBits(static_cast<float>(sxl / sll));
  return *h != 0;
}

void SearchGroupSymLevels(const float* x, const float* w, size_t G, int H, int* l, uint16_t* scale) {
  float vmax = -INFINITY, amax = 0.0f;
  for (size_t i = 0; i < G; ++i) {
    vmax = std::max(vmax, x[i]);
    amax = std::max(amax, std::fabs(x[i]));
  }
  const float m = (vmax >= amax) ? amax : -amax;
  SymEval best, cur;
  const float fh = static_cast<float>(H);
  EvalSym(x, w, G, H, ScaleBits(m / -fh), &best);  // RTN first
  if (amax > 0.0f && best.h != 0) {
    // Returns the candidate's error before the refit; the least-squares refit is skipped for a
    // candidate more than 50 % worse than the best so far (it does not catch up in practice).
    auto consider = [&](uint16_t h) -> double {
      if (h == 0) return INFINITY;
      EvalSym(x, w, G, H, h, &cur);
      const double e0 = cur.err;
      if (cur.err < best.err) best = cur;
      uint16_t h2;
      if (e0 <= 1.5 * best.err && RefitSym(x, w, G, cur.l, &h2) && h2 != cur.h) {
        EvalSym(x, w, G, H, h2, &cur);
        if (cur.err < best.err) best = cur;
      }
      return e0;
    };
    // Extreme mapped to -(H + t) (clipping when t > 0) and to +(H - 1 + t), t in steps of H / 64
    // (1/8 for int4, 1/2 for int6: the same relative grid): a coarse pass (every 4th step), then
    // the fine steps within 3 of the best coarse candidate of each side.
    const float step = fh / 64.0f;
    auto side = [&](float base, float sign, int lo, int hi) {
      int kbest = lo;
      double ebest = INFINITY;
      for (int k = lo; k <= hi; k += 4) {
        const double e = consider(ScaleBits(m / (sign * (base + step * static_cast<float>(k)))));
        if (e < ebest) ebest = e, kbest = k;
      }
      for (int k = std::max(lo, kbest - 3); k <= std::min(hi, kbest + 3); ++k)
        if ((k - lo) % 4 != 0) consider(ScaleBits(m / (sign * (base + step * static_cast<float>(k)))));
    };
    side(fh, -1.0f, -12, 16);
    side(fh - 1.0f, 1.0f, -8, 16);
    // Polish the winner: alternate codes <-> least-squares scale while it improves.
    for (int it = 0; it < 4; ++it) {
      uint16_t h2;
      if (!RefitSym(x, w, G, best.l, &h2) || h2 == best.h) break;
      EvalSym(x, w, G, H, h2, &cur);
      if (!(cur.err < best.err)) break;
      best = cur;
    }
  }
  *scale = best.h;
  std::copy(best.l, best.l + G, l);
}

void SearchGroupSymI4(const float* x, const float* w, size_t G, uint8_t* codes, uint16_t* scale) {
  int l[kMaxGroup];
  SearchGroupSymLevels(x, w, G, 8, l, scale);
  const size_t half = G / 2;
  for (size_t j = 0; j < half; ++j) codes[j] = static_cast<uint8_t>((l[j] + 8) | ((l[j + half] + 8) << 4));
}

// ---- asymmetric: x ~ q * s + mn, q in [0, 15] ----------------------------------------------
struct AsymEval {
  double err;
  uint16_t hs, hm;
  int q[kMaxGroup];
};

void EvalAsym(const float* x, const float* w, size_t G, uint16_t hs, uint16_t hm, AsymEval* e) {
  e->hs = hs;
  e->hm = hm;
  const float s = F16ToF32(hs), mn = F16ToF32(hm);
  double err = 0.0;
  const float inv = s != 0.0f ? 1.0f / s : 0.0f;
  for (size_t i = 0; i < G; ++i) {
    const int q = s != 0.0f ? RoundClamp((x[i] - mn) * inv, 0.0f, 15.0f) : 0;
    e->q[i] = q;
    const float p = static_cast<float>(q) * s;  // two roundings, as the dequantizer
    const float diff = x[i] - (p + mn);
    err += static_cast<double>(Wt(w, i)) * diff * diff;
  }
  e->err = err;
}

bool RefitAsym(const float* x, const float* w, size_t G, const int* q, uint16_t* hs, uint16_t* hm) {
  double a = 0, b = 0, c = 0, d = 0, e = 0;
  for (size_t i = 0; i < G; ++i) {
    const double wi = Wt(w, i), qi = q[i];
    a += wi * qi * qi;
    b += wi * qi;
    c += wi;
    d += wi * qi * x[i];
    e += wi * x[i];
  }
  const double det = a * c - b * b;
  if (!(det > 0.0)) return false;
  const double s = (c * d - b * e) / det;
  double mn = (a * e - b * d) / det;
  if (!(s > 0.0)) return false;
  *hs = ScaleBits(static_cast<float>(s));
  if (*hs == 0) return false;
  float mf = static_cast<float>(mn);
  *hm = F32ToF16(mf == 0.0f ? 0.0f : mf);
  if (F16ToF32(*hm) == 0.0f) *hm = 0;
  return true;
}

void SearchGroupAsym(const float* x, const float* w, size_t G, uint8_t* codes, uint16_t* scale, uint16_t* min) {
  float vmin = x[0], vmax = x[0];
  for (size_t i = 0; i < G; ++i) {
    vmin = std::min(vmin, x[i]);
    vmax = std::max(vmax, x[i]);
  }
  if (vmin == 0.0f) vmin = 0.0f;
  const uint16_t hmin = F32ToF16(vmin);
  AsymEval best, cur;
  EvalAsym(x, w, G, ScaleBits((vmax - vmin) / 15.0f), hmin, &best);  // RTN first
  if (best.hs != 0) {
    auto consider = [&](uint16_t hs, uint16_t hm) -> double {
      if (hs == 0) return INFINITY;
      EvalAsym(x, w, G, hs, hm, &cur);
      const double e0 = cur.err;
      if (cur.err < best.err) best = cur;
      uint16_t hs2, hm2;
      if (e0 <= 1.5 * best.err && RefitAsym(x, w, G, cur.q, &hs2, &hm2) && (hs2 != cur.hs || hm2 != cur.hm)) {
        EvalAsym(x, w, G, hs2, hm2, &cur);
        if (cur.err < best.err) best = cur;
      }
      return e0;
    };
    // range / (15 + t), t in 1/8 steps: coarse (every 4th), then 1/8 steps around the best.
    int kbest = -8;
    double ebest = INFINITY;
    for (int k = -8; k <= 12; k += 4) {
      const double e = consider(ScaleBits((vmax - vmin) / (15.0f + 0.125f * static_cast<float>(k))), hmin);
      if (e < ebest) ebest = e, kbest = k;
    }
    for (int k = std::max(-8, kbest - 3); k <= std::min(12, kbest + 3); ++k)
      if ((k + 8) % 4 != 0) consider(ScaleBits((vmax - vmin) / (15.0f + 0.125f * static_cast<float>(k))), hmin);
    for (int it = 0; it < 4; ++it) {
      uint16_t hs2, hm2;
      if (!RefitAsym(x, w, G, best.q, &hs2, &hm2) || (hs2 == best.hs && hm2 == best.hm)) break;
      EvalAsym(x, w, G, hs2, hm2, &cur);
      if (!(cur.err < best.err)) break;
      best = cur;
    }
  }
  *scale = best.hs;
  *min = best.hm;
  const size_t half = G / 2;
  for (size_t j = 0; j < half; ++j) codes[j] = static_cast<uint8_t>(best.q[j] | (best.q[j + half] << 4));
}

}  // namespace

void QuantizeRowI4SymSearch_ref(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                                uint16_t* scales) {
  for (size_t g = 0; g < n / group; ++g)
    SearchGroupSymI4(x + g * group, w ? w + g * group : nullptr, group, codes + g * group / 2, scales + g);
}

void SearchGroupSym(const float* x, const float* w, size_t group, int half_levels, int* q, uint16_t* scale) {
  SearchGroupSymLevels(x, w, group, half_levels, q, scale);
}

void QuantizeRowI6SymSearch_ref(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                                uint16_t* scales) {
  int q[kMaxGroup];
  for (size_t g = 0; g < n / group; ++g) {
    SearchGroupSymLevels(x + g * group, w ? w + g * group : nullptr, group, 32, q, scales + g);
    kernels::PackI6_ref(q, group, group, codes + g * (3 * group / 4));
  }
}

double GroupErrorI6Sym(const float* x, const float* w, size_t group, const uint8_t* codes, uint16_t scale) {
  int q[kMaxGroup];
  kernels::UnpackI6_ref(codes, group, group, q);
  const float d = F16ToF32(scale);
  double err = 0.0;
  for (size_t i = 0; i < group; ++i) {
    const float diff = x[i] - static_cast<float>(q[i]) * d;
    err += static_cast<double>(Wt(w, i)) * diff * diff;
  }
  return err;
}

void QuantizeRowI4AsymSearch_ref(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                                 uint16_t* scales, uint16_t* mins) {
  for (size_t g = 0; g < n / group; ++g)
    SearchGroupAsym(x + g * group, w ? w + g * group : nullptr, group, codes + g * group / 2, scales + g,
                    mins + g);
}

double GroupErrorI4Sym(const float* x, const float* w, size_t group, const uint8_t* codes, uint16_t scale) {
  const float d = F16ToF32(scale);
  const size_t half = group / 2;
  double err = 0.0;
  for (size_t i = 0; i < group; ++i) {
    const int c = i < half ? (codes[i] & 0xF) : (codes[i - half] >> 4);
    const float diff = x[i] - static_cast<float>(c - 8) * d;
    err += static_cast<double>(Wt(w, i)) * diff * diff;
  }
  return err;
}

double GroupErrorI4Asym(const float* x, const float* w, size_t group, const uint8_t* codes, uint16_t scale,
                        uint16_t min) {
  const float s = F16ToF32(scale), mn = F16ToF32(min);
  const size_t half = group / 2;
  double err = 0.0;
  for (size_t i = 0; i < group; ++i) {
    const int c = i < half ? (codes[i] & 0xF) : (codes[i - half] >> 4);
    const float p = static_cast<float>(c) * s;
    const float diff = x[i] - (p + mn);
    err += static_cast<double>(Wt(w, i)) * diff * diff;
  }
  return err;
}

void SearchWeights(const float* x, size_t n, size_t k_logical, const float* act2, float* w) {
  (void)x;
  for (size_t i = 0; i < n; ++i) {
    if (i >= k_logical) {
      w[i] = 0.0f;
    } else if (act2) {
      w[i] = act2[i];
    } else {
      w[i] = 1.0f;
    }
  }
}

}  // namespace tessera::quant
