// Per-target element-wise ops and reductions (re-included once per Highway target):
// Dot, RMSNorm, Softmax, SiluMul, Axpy. Any n, unaligned pointers; tails use LoadTail and
// BlendedStore (never touch memory past n).
#if defined(TESSERA_KERNELS_OPS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_OPS_INL_H_
#undef TESSERA_KERNELS_OPS_INL_H_
#else
#define TESSERA_KERNELS_OPS_INL_H_
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Lanes 0..min(n, Lanes(d))-1 from p, the other lanes zero; never reads p[n] or beyond.
// hn::MaskedLoad alone does not promise that: where Highway sets HWY_MEM_OPS_MIGHT_FAULT it
// may read the masked-off lanes too (1.0.3's EMU128 MaskedLoad is a full Load, which ASan
// reports as a heap overflow at the end of a row), so those targets go through a stack copy.
template <class D>
HWY_INLINE hn::Vec<D> LoadTail(D d, const hn::TFromD<D>* HWY_RESTRICT p, size_t n) {
#if HWY_MEM_OPS_MIGHT_FAULT
  HWY_ALIGN hn::TFromD<D> buf[hn::MaxLanes(d)] = {};
  const size_t c = HWY_MIN(n, hn::Lanes(d));
  for (size_t i = 0; i < c; ++i) buf[i] = p[i];
  return hn::LoadU(d, buf);
#else
  return hn::MaskedLoad(hn::FirstN(d, n), d, p);
#endif
}

// sum_i a[i] * b[i] in f32 with 4 independent accumulators.
template <class DF>
HWY_INLINE float DotF32(DF df, const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, size_t n) {
  const size_t N = hn::Lanes(df);
  auto s0 = hn::Zero(df), s1 = hn::Zero(df), s2 = hn::Zero(df), s3 = hn::Zero(df);
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), s1);
    s2 = hn::MulAdd(hn::LoadU(df, a + i + 2 * N), hn::LoadU(df, b + i + 2 * N), s2);
    s3 = hn::MulAdd(hn::LoadU(df, a + i + 3 * N), hn::LoadU(df, b + i + 3 * N), s3);
  }
  for (; i + N <= n; i += N) s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
  if (i < n) {
    s1 = hn::MulAdd(LoadTail(df, a + i, n - i), LoadTail(df, b + i, n - i), s1);
  }
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
}

HWY_MAYBE_UNUSED static float Dot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b,
                                  size_t n) {
  return DotF32(hn::ScalableTag<float>(), a, b, n);
}

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; out may alias x.
HWY_MAYBE_UNUSED static void RMSNorm(const float* x, const float* HWY_RESTRICT w, size_t n,
                                     float eps, float* out) {
  if (n == 0) return;
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  auto s0 = hn::Zero(df), s1 = hn::Zero(df);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    const auto v0 = hn::LoadU(df, x + i);
    const auto v1 = hn::LoadU(df, x + i + N);
    s0 = hn::MulAdd(v0, v0, s0);
    s1 = hn::MulAdd(v1, v1, s1);
  }
  for (; i + N <= n; i += N) {
    const auto v = hn::LoadU(df, x + i);
    s0 = hn::MulAdd(v, v, s0);
  }
  if (i < n) {
    const auto v = LoadTail(df, x + i, n - i);
    s0 = hn::MulAdd(v, v, s0);
  }
  const float ss = hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1)));
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  const auto vinv = hn::Set(df, inv);
  for (i = 0; i + N <= n; i += N) {
    hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(df, x + i), vinv), hn::LoadU(df, w + i)), df, out + i);
  }
  if (i < n) {
    const auto m = hn::FirstN(df, n - i);
    const auto v =
        hn::Mul(hn::Mul(LoadTail(df, x + i, n - i), vinv), LoadTail(df, w + i, n - i));
    hn::BlendedStore(v, m, df, out + i);
  }
}

// In-place softmax; -inf entries give 0. If every entry is -inf the output is all zeros.
HWY_MAYBE_UNUSED static void Softmax(float* x, size_t n) {
  if (n == 0) return;
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  const auto neg_inf = hn::Set(df, -std::numeric_limits<float>::infinity());
  auto vmax = neg_inf;
  size_t i = 0;
  for (; i + N <= n; i += N) vmax = hn::Max(vmax, hn::LoadU(df, x + i));
  const size_t rem = n - i;
  const auto mtail = hn::FirstN(df, rem);
  if (rem) vmax = hn::Max(vmax, hn::IfThenElse(mtail, LoadTail(df, x + i, rem), neg_inf));
  const float mx = hn::GetLane(hn::MaxOfLanes(df, vmax));
  if (mx == -std::numeric_limits<float>::infinity()) {
    for (size_t k = 0; k < n; ++k) x[k] = 0.0f;
    return;
  }
  const auto vmx = hn::Set(df, mx);
  // f32 vector partial sums over chunks of 64 vectors, flushed into a double: keeps the sum
  // accurate even for the 1-lane SCALAR target and long rows.
  double sum = 0.0;
  i = 0;
  while (i + N <= n) {
    auto vsum = hn::Zero(df);
    const size_t end = (n - i) / N > 64 ? i + 64 * N : n - rem;
    for (; i < end; i += N) {
      const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, x + i), vmx));
      vsum = hn::Add(vsum, e);
      hn::StoreU(e, df, x + i);
    }
    sum += static_cast<double>(hn::GetLane(hn::SumOfLanes(df, vsum)));
  }
  if (rem) {
    const auto e =
        hn::IfThenElseZero(mtail, hn::Exp(df, hn::Sub(LoadTail(df, x + i, rem), vmx)));
    sum += static_cast<double>(hn::GetLane(hn::SumOfLanes(df, e)));
    hn::BlendedStore(e, mtail, df, x + i);
  }
  // Every entry -inf but mx finite: Highway 1.0.3's EMU128 MaxOfLanes starts from the lowest
  // finite float, so it returns -FLT_MAX there, not -inf. Every e was 0 and x already holds the
  // all-zero result (otherwise the max entry alone gives e = 1, so sum >= 1).
  if (sum == 0.0) return;
  const auto vinv = hn::Set(df, static_cast<float>(1.0 / sum));
  for (i = 0; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(df, x + i), vinv), df, x + i);
  if (rem) hn::BlendedStore(hn::Mul(LoadTail(df, x + i, rem), vinv), mtail, df, x + i);
}

template <class DF>
HWY_INLINE hn::Vec<DF> SiluMulVec(DF df, hn::Vec<DF> g, hn::Vec<DF> u) {
  // silu(g) = g / (1 + exp(-g)); clamp the exponent to stay in Exp's valid range.
  const auto e = hn::Exp(df, hn::Min(hn::Neg(g), hn::Set(df, 88.0f)));
  return hn::Mul(hn::Div(g, hn::Add(hn::Set(df, 1.0f), e)), u);
}

HWY_MAYBE_UNUSED static void SiluMul(const float* gate, const float* up, size_t n, float* out) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(SiluMulVec(df, hn::LoadU(df, gate + i), hn::LoadU(df, up + i)), df, out + i);
  }
  if (i < n) {
    const auto m = hn::FirstN(df, n - i);
    const auto v = SiluMulVec(df, LoadTail(df, gate + i, n - i), LoadTail(df, up + i, n - i));
    hn::BlendedStore(v, m, df, out + i);
  }
}

HWY_MAYBE_UNUSED static void Axpy(float a, const float* HWY_RESTRICT x, size_t n,
                                  float* HWY_RESTRICT y) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  const auto va = hn::Set(df, a);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  }
  if (i < n) {
    const auto m = hn::FirstN(df, n - i);
    const auto v = hn::MulAdd(va, LoadTail(df, x + i, n - i), LoadTail(df, y + i, n - i));
    hn::BlendedStore(v, m, df, y + i);
  }
}

// One attention head for one query over n cached positions (k_j = k + j * D, v_j = v + j * D):
// scores[j] = Dot(q, k_j, D) * scale, Softmax(scores, n), out = sum_j scores[j] * v_j (Axpy in j
// order, from zeros). The same arithmetic as those calls one by one (bit-identical) without a
// dynamic dispatch per position.
HWY_MAYBE_UNUSED static void AttendHead(const float* HWY_RESTRICT q, const float* HWY_RESTRICT k,
                                        const float* HWY_RESTRICT v, size_t n, size_t D,
                                        float scale, float* HWY_RESTRICT scores,
                                        float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  // Four positions per step (Dot's arithmetic inlined for each: independent chains, no call).
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float s0 = DotF32(df, q, k + j * D, D);
    const float s1 = DotF32(df, q, k + (j + 1) * D, D);
    const float s2 = DotF32(df, q, k + (j + 2) * D, D);
    const float s3 = DotF32(df, q, k + (j + 3) * D, D);
    scores[j] = s0 * scale;
    scores[j + 1] = s1 * scale;
    scores[j + 2] = s2 * scale;
    scores[j + 3] = s3 * scale;
  }
  for (; j < n; ++j) scores[j] = DotF32(df, q, k + j * D, D) * scale;
  Softmax(scores, n);
  if (D % N != 0) {
    for (size_t i = 0; i < D; ++i) out[i] = 0.0f;
    for (size_t j = 0; j < n; ++j) Axpy(scores[j], v + j * D, D, out);
    return;
  }
  // Up to 4 vectors of out stay in registers over all positions (Axpy's MulAdd per element, in
  // the same j order).
  for (size_t i0 = 0; i0 < D; i0 += 4 * N) {
    const size_t nv = (D - i0) / N < 4 ? (D - i0) / N : 4;
    if (nv == 4) {  // the common case (head_dim 64 / 128 on AVX-512): no lane-count tests per position
      auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
      for (size_t j = 0; j < n; ++j) {
        const auto s = hn::Set(df, scores[j]);
        const float* vj = v + j * D + i0;
        a0 = hn::MulAdd(s, hn::LoadU(df, vj), a0);
        a1 = hn::MulAdd(s, hn::LoadU(df, vj + N), a1);
        a2 = hn::MulAdd(s, hn::LoadU(df, vj + 2 * N), a2);
        a3 = hn::MulAdd(s, hn::LoadU(df, vj + 3 * N), a3);
      }
      hn::StoreU(a0, df, out + i0);
      hn::StoreU(a1, df, out + i0 + N);
      hn::StoreU(a2, df, out + i0 + 2 * N);
      hn::StoreU(a3, df, out + i0 + 3 * N);
      continue;
    }
    auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
    for (size_t j = 0; j < n; ++j) {
      const auto s = hn::Set(df, scores[j]);
      const float* vj = v + j * D + i0;
      a0 = hn::MulAdd(s, hn::LoadU(df, vj), a0);
      if (nv > 1) a1 = hn::MulAdd(s, hn::LoadU(df, vj + N), a1);
      if (nv > 2) a2 = hn::MulAdd(s, hn::LoadU(df, vj + 2 * N), a2);
      if (nv > 3) a3 = hn::MulAdd(s, hn::LoadU(df, vj + 3 * N), a3);
    }
    hn::StoreU(a0, df, out + i0);
    if (nv > 1) hn::StoreU(a1, df, out + i0 + N);
    if (nv > 2) hn::StoreU(a2, df, out + i0 + 2 * N);
    if (nv > 3) hn::StoreU(a3, df, out + i0 + 3 * N);
  }
}

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_OPS_INL_H_
