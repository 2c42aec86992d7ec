#include "quantizer/nl4.h"

#include <algorithm>
#include <cmath>

#include "core/half.h"

namespace tessera::quant {
namespace {

constexpr size_t kMaxGroup = 128;

inline float Wt(const float* w, size_t i) { return w ? w[i] : 1.0f; }

// f16 of a scale; -0 / underflow -> 0; an overflow to inf is rejected as 0 (never chosen).
inline uint16_t ScaleBits(float s) {
  const uint16_t h = F32ToF16(s);
  const float back = F16ToF32(h);
  return (back == 0.0f || !std::isfinite(back)) ? uint16_t{0} : h;
}

struct Eval {
  double err;
  uint16_t h;
  int c[kMaxGroup];
};

void EvalGrid(const float* x, const float* w, size_t G, const Grid16& g, uint16_t h, Eval* e) {
  e->h = h;
  const float d = F16ToF32(h);
  double err = 0.0;
  if (d == 0.0f) {
    // The "zero" code: the level nearest 0.
    const int z = NearestLevel(g, 0.0f);
    e->h = 0;
    for (size_t i = 0; i < G; ++i) {
      e->c[i] = z;
      err += static_cast<double>(Wt(w, i)) * x[i] * x[i];
    }
    e->err = err;
    return;
  }
  const float inv = 1.0f / d;
  for (size_t i = 0; i < G; ++i) {
    const int c = NearestLevel(g, x[i] * inv);
    e->c[i] = c;
    const float diff = x[i] - g.v[c] * d;
    err += static_cast<double>(Wt(w, i)) * diff * diff;
  }
  e->err = err;
}

bool Refit(const float* x, const float* w, size_t G, const Grid16& g, const int* c, uint16_t* h) {
  double sxl = 0.0, sll = 0.0;
  for (size_t i = 0; i < G; ++i) {
    const double wi = Wt(w, i), l = g.v[c[i]];
    sxl += wi * x[i] * l;
    sll += wi * l * l;
  }
  if (!(sll > 0.0)) return false;
  *h = ScaleBits(static_cast<float>(sxl / sll));
  return *h != 0;
}

float SignedExtreme(const float* x, size_t G) {
  float vmax = -INFINITY, amax = 0.0f;
  for (size_t i = 0; i < G; ++i) {
    vmax = std::max(vmax, x[i]);
    amax = std::max(amax, std::fabs(x[i]));
  }
  return (vmax >= amax) ? amax : -amax;
}

}  // namespace

Grid16 MakeGrid16(const float* levels) {
  Grid16 g;
  for (int j = 0; j < 16; ++j) g.v[j] = levels[j];
  for (int j = 0; j < 15; ++j) g.mid[j] = 0.5f * (levels[j] + levels[j + 1]);
  return g;
}

const Grid16& Nl4Grid() {
  static const Grid16 g = [] {
    float l[16];
    for (int j = 0; j < 16; ++j) l[j] = kI4NlLevels[j];
    return MakeGrid16(l);
  }();
  return g;
}

void RtnGroupGrid(const float* x, size_t G, const Grid16& grid, int* codes, uint16_t* scale) {
  Eval e;
  EvalGrid(x, nullptr, G, grid, ScaleBits(SignedExtreme(x, G) / grid.v[0]), &e);
  *scale = e.h;
  std::copy(e.c, e.c + G, codes);
}

void SearchGroupGrid(const float* x, const float* w, size_t G, const Grid16& grid, int* codes, uint16_t* scale) {
  const float m = SignedExtreme(x, G);
  Eval best, cur;
  const float lo = grid.v[0], hi = grid.v[15];
  EvalGrid(x, w, G, grid, ScaleBits(m / lo), &best);  // RTN first
  if (m != 0.0f && best.h != 0) {
    auto consider = [&](uint16_t h) -> double {
      if (h == 0) return INFINITY;
      EvalGrid(x, w, G, grid, h, &cur);
      const double e0 = cur.err;
      if (cur.err < best.err) best = cur;
      uint16_t h2;
      if (e0 <= 1.5 * best.err && Refit(x, w, G, grid, cur.c, &h2) && h2 != cur.h) {
        EvalGrid(x, w, G, grid, h2, &cur);
        if (cur.err < best.err) best = cur;
      }
      return e0;
    };
    // The extreme mapped to lo * (1 + k / 64) and to hi * (1 + k / 64): every 4th k first, then
    // the single steps within 3 of the best coarse k of each side.
    auto side = [&](float base, int k_lo, int k_hi) {
      int kbest = k_lo;
      double ebest = INFINITY;
      auto scale_for = [&](int k) { return ScaleBits(m / (base * (1.0f + static_cast<float>(k) / 64.0f))); };
      for (int k = k_lo; k <= k_hi; k += 4) {
        const double e = consider(scale_for(k));
        if (e < ebest) ebest = e, kbest = k;
      }
      for (int k = std::max(k_lo, kbest - 3); k <= std::min(k_hi, kbest + 3); ++k)
        if ((k - k_lo) % 4 != 0) consider(scale_for(k));
    };
    side(lo, -12, 16);
    side(hi, -8, 16);
    for (int it = 0; it < 4; ++it) {
      uint16_t h2;
      if (!Refit(x, w, G, grid, best.c, &h2) || h2 == best.h) break;
      EvalGrid(x, w, G, grid, h2, &cur);
      if (!(cur.err < best.err)) break;
      best = cur;
    }
  }
  *scale = best.h;
  std::copy(best.c, best.c + G, codes);
}

namespace {
void Pack(const int* c, size_t G, uint8_t* codes) {
  const size_t half = G / 2;
  for (size_t j = 0; j < half; ++j) codes[j] = static_cast<uint8_t>(c[j] | (c[j + half] << 4));
}
}  // namespace

void QuantizeRowGridRtn_ref(const float* x, size_t n, size_t group, const Grid16& grid, uint8_t* codes,
                            uint16_t* scales) {
  int c[kMaxGroup];
  for (size_t g = 0; g < n / group; ++g) {
    RtnGroupGrid(x + g * group, group, grid, c, scales + g);
    Pack(c, group, codes + g * group / 2);
  }
}

void QuantizeRowGridSearch_ref(const float* x, const float* w, size_t n, size_t group, const Grid16& grid,
                               uint8_t* codes, uint16_t* scales) {
  int c[kMaxGroup];
  for (size_t g = 0; g < n / group; ++g) {
    SearchGroupGrid(x + g * group, w ? w + g * group : nullptr, group, grid, c, scales + g);
    Pack(c, group, codes + g * group / 2);
  }
}

void DequantizeRowGrid_ref(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group, const Grid16& grid,
                           float* out) {
  const size_t half = group / 2;
  for (size_t i = 0; i < n; ++i) {
    const size_t g = i / group, j = i % group;
    const uint8_t b = codes[g * half + (j < half ? j : j - half)];
    const int c = j < half ? (b & 0xF) : (b >> 4);
    out[i] = grid.v[c] * F16ToF32(scales[g]);
  }
}

double GroupErrorGrid(const float* x, const float* w, size_t group, const uint8_t* codes, uint16_t scale,
                      const Grid16& grid) {
  float deq[kMaxGroup];
  DequantizeRowGrid_ref(codes, &scale, group, group, grid, deq);
  double err = 0.0;
  for (size_t i = 0; i < group; ++i) {
    const float diff = x[i] - deq[i];
    err += static_cast<double>(Wt(w, i)) * diff * diff;
  }
  return err;
}

}  // namespace tessera::quant
