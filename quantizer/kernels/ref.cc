// Scalar reference kernels: see ref.h for the exact rules.
#include "quantizer/kernels/ref.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/half.h"
#include "core/iq4nl.h"

namespace tessera::kernels {

void F32ToBF16_ref(const float* x, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = tessera::F32ToBF16(x[i]);
}
void BF16ToF32_ref(const uint16_t* x, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = tessera::BF16ToF32(x[i]);
}
void F32ToF16_ref(const float* x, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = tessera::F32ToF16(x[i]);
}
void F16ToF32_ref(const uint16_t* x, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = tessera::F16ToF32(x[i]);
}

int RoundHalfEven_ref(float v) { return static_cast<int>(std::nearbyint(v)); }

namespace {

// Rounds a scale to f16 and returns the rounded value; stores 0 for a zero scale.
float RoundScale(float s, uint16_t* stored) {
  const uint16_t h = tessera::F32ToF16(s);
  const float r = tessera::F16ToF32(h);
  *stored = (r == 0.0f) ? uint16_t{0} : h;
  return r;
}

int QuantizeOne(float v, float lo, float hi) {
  v = std::min(std::max(v, lo), hi);
  return RoundHalfEven_ref(v);
}

}  // namespace

// The group's value of largest magnitude, with its sign (positive on a tie): symmetric schemes
// map it to the most negative level (Q4_0's convention), which uses all 2^b levels.
static float SignedAbsMax(const float* xg, size_t group) {
  float vmax = -std::numeric_limits<float>::infinity();
  float amax = 0.0f;
  for (size_t i = 0; i < group; ++i) {
    vmax = std::max(vmax, xg[i]);
    amax = std::max(amax, std::fabs(xg[i]));
  }
  return (vmax >= amax) ? amax : -amax;
}

void QuantizeRowI4Sym_ref(const float* x, size_t n, size_t group, uint8_t* codes,
                          uint16_t* scales) {
  const size_t half = group / 2;
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    uint8_t* cg = codes + g * half;
    const float m = SignedAbsMax(xg, group);
    const float d = RoundScale(m / -8.0f, &scales[g]);
    if (d == 0.0f) {
      std::fill(cg, cg + half, uint8_t{0x88});
      continue;
    }
    const float inv = 1.0f / d;
    for (size_t j = 0; j < half; ++j) {
      const int lo = QuantizeOne(xg[j] * inv, -8.0f, 7.0f) + 8;
      const int hi = QuantizeOne(xg[j + half] * inv, -8.0f, 7.0f) + 8;
      cg[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void QuantizeRowI4Asym_ref(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales,
                           uint16_t* mins) {
  const size_t half = group / 2;
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    uint8_t* cg = codes + g * half;
    float vmin = xg[0], vmax = xg[0];
    for (size_t i = 0; i < group; ++i) {
      vmin = std::min(vmin, xg[i]);
      vmax = std::max(vmax, xg[i]);
    }
    if (vmin == 0.0f) vmin = 0.0f;  // canonical +0
    mins[g] = tessera::F32ToF16(vmin);
    const float min_r = tessera::F16ToF32(mins[g]);
    const float s = RoundScale((vmax - vmin) / 15.0f, &scales[g]);
    if (s == 0.0f) {
      std::fill(cg, cg + half, uint8_t{0});
      continue;
    }
    const float inv = 1.0f / s;
    for (size_t j = 0; j < half; ++j) {
      const int lo = QuantizeOne((xg[j] - min_r) * inv, 0.0f, 15.0f);
      const int hi = QuantizeOne((xg[j + half] - min_r) * inv, 0.0f, 15.0f);
      cg[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void QuantizeRowI8_ref(const float* x, size_t n, size_t group, int8_t* codes, uint16_t* scales) {
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    int8_t* cg = codes + g * group;
    float amax = 0.0f;
    for (size_t i = 0; i < group; ++i) amax = std::max(amax, std::fabs(xg[i]));
    const float d = RoundScale(amax / 127.0f, &scales[g]);
    if (d == 0.0f) {
      std::fill(cg, cg + group, int8_t{0});
      continue;
    }
    const float inv = 1.0f / d;
    for (size_t i = 0; i < group; ++i) {
      cg[i] = static_cast<int8_t>(QuantizeOne(xg[i] * inv, -127.0f, 127.0f));
    }
  }
}

void PackI6_ref(const int* q, size_t n, size_t group, uint8_t* codes) {
  const size_t half = group / 2, quarter = group / 4;
  for (size_t g = 0; g < n / group; ++g) {
    const int* qg = q + g * group;
    uint8_t* lo = codes + g * (3 * group / 4);
    uint8_t* hi = lo + half;
    for (size_t j = 0; j < half; ++j)
      lo[j] = static_cast<uint8_t>(((qg[j] + 32) & 0xF) | (((qg[j + half] + 32) & 0xF) << 4));
    for (size_t j = 0; j < quarter; ++j) {
      int b = 0;
      for (size_t p = 0; p < 4; ++p) b |= ((qg[j + p * quarter] + 32) >> 4) << (2 * p);
      hi[j] = static_cast<uint8_t>(b);
    }
  }
}

void UnpackI6_ref(const uint8_t* codes, size_t n, size_t group, int* q) {
  const size_t half = group / 2, quarter = group / 4;
  for (size_t g = 0; g < n / group; ++g) {
    const uint8_t* lo = codes + g * (3 * group / 4);
    const uint8_t* hi = lo + half;
    for (size_t e = 0; e < group; ++e) {
      const int l = e < half ? (lo[e] & 0xF) : (lo[e - half] >> 4);
      const int h = (hi[e % quarter] >> (2 * (e / quarter))) & 3;
      q[g * group + e] = (l | (h << 4)) - 32;
    }
  }
}

void QuantizeRowI6Sym_ref(const float* x, size_t n, size_t group, uint8_t* codes,
                          uint16_t* scales) {
  std::vector<int> q(group);
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    const float m = SignedAbsMax(xg, group);
    const float d = RoundScale(m / -32.0f, &scales[g]);
    const float inv = d == 0.0f ? 0.0f : 1.0f / d;
    for (size_t i = 0; i < group; ++i) q[i] = d == 0.0f ? 0 : QuantizeOne(xg[i] * inv, -32.0f, 31.0f);
    PackI6_ref(q.data(), group, group, codes + g * (3 * group / 4));
  }
}

void DequantizeRowI6Sym_ref(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                            float* out) {
  std::vector<int> q(n);
  UnpackI6_ref(codes, n, group, q.data());
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(q[i]) * tessera::F16ToF32(scales[i / group]);
}

namespace {
// Group-wise nibbles (byte j of a group: element j low, element j + G/2 high) times the group's
// f16 scale, each nibble's value given by level(q).
template <class Level>
void DequantizeNibbles_ref(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                           const Level& level, float* out) {
  const size_t half = group / 2;
  for (size_t g = 0; g < n / group; ++g) {
    const float d = tessera::F16ToF32(scales[g]);
    const uint8_t* cg = codes + g * half;
    float* og = out + g * group;
    for (size_t j = 0; j < half; ++j) {
      og[j] = static_cast<float>(level(cg[j] & 0xF)) * d;
      og[j + half] = static_cast<float>(level(cg[j] >> 4)) * d;
    }
  }
}
}  // namespace

void DequantizeRowI4Nl_ref(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                           float* out) {
  DequantizeNibbles_ref(codes, scales, n, group, [](int q) { return tessera::kI4NlLevels[q]; }, out);
}

void DequantizeRowI4Sym_ref(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                            float* out) {
  DequantizeNibbles_ref(codes, scales, n, group, [](int q) { return q - 8; }, out);
}

void DequantizeRowI4Asym_ref(const uint8_t* codes, const uint16_t* scales, const uint16_t* mins,
                             size_t n, size_t group, float* out) {
  const size_t half = group / 2;
  for (size_t g = 0; g < n / group; ++g) {
    const float s = tessera::F16ToF32(scales[g]);
    const float mn = tessera::F16ToF32(mins[g]);
    const uint8_t* cg = codes + g * half;
    float* og = out + g * group;
    for (size_t j = 0; j < half; ++j) {
      const float lo = static_cast<float>(cg[j] & 0xF) * s;  // separate statements: no FMA
      const float hi = static_cast<float>(cg[j] >> 4) * s;
      og[j] = lo + mn;
      og[j + half] = hi + mn;
    }
  }
}

void DequantizeRowI8_ref(const int8_t* codes, const uint16_t* scales, size_t n, size_t group,
                         float* out) {
  for (size_t g = 0; g < n / group; ++g) {
    const float d = tessera::F16ToF32(scales[g]);
    for (size_t i = 0; i < group; ++i) {
      out[g * group + i] = static_cast<float>(codes[g * group + i]) * d;
    }
  }
}

void DequantizeRow_ref(const WeightMatrix& w, size_t r, float* out) {
  const size_t K = w.cols;
  const size_t ng = w.group ? K / w.group : 0;
  switch (w.type) {
    case WType::kF32:
      std::copy_n(static_cast<const float*>(w.data) + r * K, K, out);
      break;
    case WType::kF16:
      F16ToF32_ref(static_cast<const uint16_t*>(w.data) + r * K, K, out);
      break;
    case WType::kBF16:
      BF16ToF32_ref(static_cast<const uint16_t*>(w.data) + r * K, K, out);
      break;
    case WType::kI8:
      DequantizeRowI8_ref(static_cast<const int8_t*>(w.data) + r * K, w.scales + r * ng, K, w.group,
                          out);
      break;
    case WType::kI4Sym:
      DequantizeRowI4Sym_ref(static_cast<const uint8_t*>(w.data) + r * (K / 2), w.scales + r * ng,
                             K, w.group, out);
      break;
    case WType::kI4Asym:
      DequantizeRowI4Asym_ref(static_cast<const uint8_t*>(w.data) + r * (K / 2), w.scales + r * ng,
                              w.mins + r * ng, K, w.group, out);
      break;
    case WType::kI6Sym:
      DequantizeRowI6Sym_ref(static_cast<const uint8_t*>(w.data) + r * (3 * K / 4), w.scales + r * ng,
                             K, w.group, out);
      break;
    case WType::kI4Nl:
      DequantizeRowI4Nl_ref(static_cast<const uint8_t*>(w.data) + r * (K / 2), w.scales + r * ng, K,
                            w.group, out);
      break;
  }
}

double Dot_ref(const float* a, const float* b, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

double DotRow_ref(const WeightMatrix& w, size_t r, const float* x, double* abs_sum) {
  std::vector<float> row(w.cols);
  DequantizeRow_ref(w, r, row.data());
  if (abs_sum) {
    double a = 0.0;
    for (size_t k = 0; k < w.cols; ++k) a += std::fabs(static_cast<double>(row[k]) * x[k]);
    *abs_sum = a;
  }
  return Dot_ref(row.data(), x, w.cols);
}

void MatMul_ref(const WeightMatrix& w, const float* x, size_t T, size_t ldx, double* y, size_t ldy,
                size_t row_begin, size_t row_end) {
  std::vector<float> row(w.cols);
  for (size_t r = row_begin; r < row_end; ++r) {
    DequantizeRow_ref(w, r, row.data());
    for (size_t t = 0; t < T; ++t) y[t * ldy + r] = Dot_ref(row.data(), x + t * ldx, w.cols);
  }
}

void RMSNorm_ref(const float* x, const float* w, size_t n, float eps, double* out) {
  double ss = 0.0;
  for (size_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
}

void Softmax_ref(const float* x, size_t n, double* out) {
  double mx = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  if (mx == -std::numeric_limits<double>::infinity()) {  // everything masked: all zeros
    std::fill(out, out + n, 0.0);
    return;
  }
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += (out[i] = std::exp(static_cast<double>(x[i]) - mx));
  for (size_t i = 0; i < n; ++i) out[i] /= sum;
}

void SiluMul_ref(const float* gate, const float* up, size_t n, double* out) {
  for (size_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = g / (1.0 + std::exp(-g)) * up[i];
  }
}

void Axpy_ref(float a, const float* x, size_t n, double* y) {
  for (size_t i = 0; i < n; ++i) y[i] += static_cast<double>(a) * x[i];
}

// ---- int8-activation path ----
void QuantizeActsQ8_ref(const float* x, size_t ldx, size_t K, const Q8Acts& a, size_t t_begin,
                        size_t t_end) {
  const size_t nb = a.Kp / kQ8Block;
  for (size_t t = t_begin; t < t_end; ++t) {
    for (size_t b = 0; b < nb; ++b) {
      float v[kQ8Block];
      float amax = 0.0f;
      for (size_t i = 0; i < kQ8Block; ++i) {
        const size_t k = b * kQ8Block + i;
        v[i] = k < K ? x[t * ldx + k] : 0.0f;
        amax = std::max(amax, std::fabs(v[i]));
      }
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      a.d[t * nb + b] = amax / 127.0f;
      int32_t sum = 0;
      for (size_t i = 0; i < kQ8Block; ++i) {
        const int q = std::clamp(RoundHalfEven_ref(v[i] * inv), -127, 127);
        sum += q;
        const size_t sb = b / 16, j = b % 16, s = i / 4, e = i % 4;
        a.q[t * a.Kp + sb * kQ8Super + 64 * s + 4 * j + e] = static_cast<int8_t>(q);
      }
      a.sum[t * nb + b] = sum;
    }
  }
}

int8_t Q8ActAt_ref(const Q8Acts& a, size_t t, size_t k) {
  const size_t sb = k / kQ8Super, j = (k % kQ8Super) / kQ8Block, i = k % kQ8Block;
  return a.q[t * a.Kp + sb * kQ8Super + 64 * (i / 4) + 4 * j + i % 4];
}

void MatMulQ8_ref(const WeightMatrix& w, const Q8Acts& a, size_t T, double* y, size_t ldy,
                  size_t row_begin, size_t row_end) {
  const size_t K = w.cols, G = w.group, ng = K / G, nb = a.Kp / kQ8Block;
  std::vector<int> row_q(w.type == WType::kI6Sym ? K : 0);  // I6: row r unpacked (c - 32)
  for (size_t r = row_begin; r < row_end; ++r) {
    if (w.type == WType::kI6Sym) UnpackI6_ref(static_cast<const uint8_t*>(w.data) + r * (3 * K / 4), K, G, row_q.data());
    for (size_t t = 0; t < T; ++t) {
      float lanes[16] = {0};
      for (size_t b = 0; b < nb; ++b) {
        int32_t S = 0;
        float dw = 0.0f;
        for (size_t i = 0; i < kQ8Block; ++i) {
          const size_t k = b * kQ8Block + i;
          if (k >= K) break;
          int wi;
          if (w.type == WType::kI8) {
            wi = static_cast<const int8_t*>(w.data)[r * K + k];
          } else if (w.type == WType::kI6Sym) {
            wi = row_q[k];
          } else {
            const size_t g = k / G, e = k % G, half = G / 2;
            const uint8_t byte = static_cast<const uint8_t*>(w.data)[r * (K / 2) + g * half + e % half];
            wi = (e < half ? (byte & 0x0F) : (byte >> 4)) - 8;
          }
          S += wi * Q8ActAt_ref(a, t, k);
          dw = tessera::F16ToF32(w.scales[r * ng + k / G]);
        }
        lanes[b % 16] = std::fma(static_cast<float>(S), dw * a.d[t * nb + b], lanes[b % 16]);
      }
      double total = 0.0;
      for (float v : lanes) total += v;
      y[t * ldy + r] = total;
    }
  }
}

void MatMulGemm_ref(const WeightMatrix& w, const Q8Acts& a, size_t T, float* y, size_t ldy,
                    size_t row_begin, size_t row_end) {
  const size_t K = w.cols, G = w.group, ng = K / G, nb = a.Kp / kQ8Block;
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t t = 0; t < T; ++t) {
      float acc = 0.0f;
      for (size_t b = 0; b < nb; ++b) {
        int32_t S = 0;
        const size_t k0 = b * kQ8Block;
        const float dw = k0 < K ? tessera::F16ToF32(w.scales[r * ng + k0 / G]) : 0.0f;
        for (size_t k = k0; k < k0 + kQ8Block && k < K; ++k) {
          int wi;
          if (w.type == WType::kI8) {
            wi = static_cast<const int8_t*>(w.data)[r * K + k];
          } else {
            const size_t g = k / G, e = k % G, half = G / 2;
            const uint8_t byte = static_cast<const uint8_t*>(w.data)[r * (K / 2) + g * half + e % half];
            const int nibble = e < half ? (byte & 0x0F) : (byte >> 4);
            wi = w.type == WType::kI4Nl ? tessera::kI4NlLevels[nibble] : nibble - 8;
          }
          S += wi * Q8ActAt_ref(a, t, k);
        }
        acc = std::fma(static_cast<float>(S), dw * a.d[t * nb + b], acc);
      }
      y[t * ldy + r] = acc;
    }
  }
}

}  // namespace tessera::kernels
