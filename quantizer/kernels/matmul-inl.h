// Per-target MatMul (weights [rows][cols] in any WType times f32 activations), re-included
// once per Highway target. Accumulates in f32.
//   T <= kFusedMaxT : fused dequant + dot per (row, token) (HIGHWAY.md recipe 7.5). A row's
//            result for a token does not depend on T, so a sequence decoded alone or batched
//            with others (the server's continuous batching) gets bit-identical logits.
//   T  > kFusedMaxT : each weight row is dequantized/promoted once into a thread-local f32
//            buffer and dotted with all T activation rows (prefill).
#if defined(TESSERA_KERNELS_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_MATMUL_INL_H_
#undef TESSERA_KERNELS_MATMUL_INL_H_
#else
#define TESSERA_KERNELS_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "core/half.h"
#include "hwy/highway.h"
#include "quantizer/kernels/convert-inl.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/kernels/ops-inl.h"
#include "quantizer/kernels/quant-inl.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// f16 weights (finite) . x
template <class DF>
HWY_INLINE float DotF16Row(DF df, const uint16_t* HWY_RESTRICT w, const float* HWY_RESTRICT x,
                           size_t n) {
  const hn::Rebind<hwy::float16_t, DF> dh;
  const hwy::float16_t* wh = reinterpret_cast<const hwy::float16_t*>(w);
  const size_t N = hn::Lanes(df);
  auto s0 = hn::Zero(df), s1 = hn::Zero(df);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dh, wh + i)), hn::LoadU(df, x + i), s0);
    s1 = hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dh, wh + i + N)), hn::LoadU(df, x + i + N), s1);
  }
  for (; i + N <= n; i += N) {
    s0 = hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dh, wh + i)), hn::LoadU(df, x + i), s0);
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += tessera::F16ToF32(w[i]) * x[i];
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1))) + tail;
}

// bf16 weights . x
template <class DF>
HWY_INLINE float DotBF16Row(DF df, const uint16_t* HWY_RESTRICT w, const float* HWY_RESTRICT x,
                            size_t n) {
  const hn::RebindToUnsigned<DF> du;
  const hn::Rebind<uint16_t, DF> d16;
  const size_t N = hn::Lanes(df);
  auto s0 = hn::Zero(df), s1 = hn::Zero(df);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    const auto w0 = hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, w + i))));
    const auto w1 =
        hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, w + i + N))));
    s0 = hn::MulAdd(w0, hn::LoadU(df, x + i), s0);
    s1 = hn::MulAdd(w1, hn::LoadU(df, x + i + N), s1);
  }
  for (; i + N <= n; i += N) {
    const auto w0 = hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, w + i))));
    s0 = hn::MulAdd(w0, hn::LoadU(df, x + i), s0);
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += tessera::BF16ToF32(w[i]) * x[i];
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1))) + tail;
}

// int8 row (f32 scales per group) . x
HWY_INLINE float DotI8Row(const int8_t* HWY_RESTRICT q, const float* HWY_RESTRICT sc,
                          const float* HWY_RESTRICT x, size_t n, size_t group) {
  const QuantTag df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const size_t N = hn::Lanes(df);
  auto acc = hn::Zero(df);
  for (size_t g = 0; g < n / group; ++g) {
    const size_t base = g * group;
    auto a0 = hn::Zero(df), a1 = hn::Zero(df);
    size_t i = 0;
    for (; i + 2 * N <= group; i += 2 * N) {
      const auto w0 = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(di8, q + base + i)));
      const auto w1 = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(di8, q + base + i + N)));
      a0 = hn::MulAdd(w0, hn::LoadU(df, x + base + i), a0);
      a1 = hn::MulAdd(w1, hn::LoadU(df, x + base + i + N), a1);
    }
    for (; i < group; i += N) {
      const auto w0 = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(di8, q + base + i)));
      a0 = hn::MulAdd(w0, hn::LoadU(df, x + base + i), a0);
    }
    acc = hn::MulAdd(hn::Set(df, sc[g]), hn::Add(a0, a1), acc);
  }
  return hn::GetLane(hn::SumOfLanes(df, acc));
}

// int4 row . x: sym  sum_g d_g * sum (q - 8) x ;  asym  sum_g s_g * sum q x + min_g * sum x.
template <bool kAsym>
HWY_INLINE float DotI4Row(const uint8_t* HWY_RESTRICT codes, const float* HWY_RESTRICT sc,
                          const float* HWY_RESTRICT mn, const float* HWY_RESTRICT x, size_t n,
                          size_t group) {
  const QuantTag df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df);
  const size_t half = group / 2;
  const auto mask = hn::Set(di, 0xF);
  const auto eight = hn::Set(di, 8);
  auto acc = hn::Zero(df);
  for (size_t g = 0; g < n / group; ++g) {
    const uint8_t* cg = codes + g * half;
    const float* xg = x + g * group;
    auto alo = hn::Zero(df), ahi = hn::Zero(df);
    auto xs = hn::Zero(df);
    for (size_t j = 0; j < half; j += N) {
      const auto b = hn::PromoteTo(di, hn::LoadU(du8, cg + j));
      auto qlo = hn::And(b, mask);
      auto qhi = hn::ShiftRight<4>(b);
      if (!kAsym) {
        qlo = hn::Sub(qlo, eight);
        qhi = hn::Sub(qhi, eight);
      }
      const auto xlo = hn::LoadU(df, xg + j);
      const auto xhi = hn::LoadU(df, xg + j + half);
      alo = hn::MulAdd(hn::ConvertTo(df, qlo), xlo, alo);
      ahi = hn::MulAdd(hn::ConvertTo(df, qhi), xhi, ahi);
      if (kAsym) xs = hn::Add(xs, hn::Add(xlo, xhi));
    }
    acc = hn::MulAdd(hn::Set(df, sc[g]), hn::Add(alo, ahi), acc);
    if (kAsym) acc = hn::MulAdd(hn::Set(df, mn[g]), xs, acc);
  }
  return hn::GetLane(hn::SumOfLanes(df, acc));
}

constexpr size_t kFusedMaxT = 16;

HWY_MAYBE_UNUSED static void MatMul(const WeightMatrix& w, const float* x, size_t T, size_t ldx,
                                    float* y, size_t ldy, size_t row_begin, size_t row_end) {
  if (T == 0 || row_begin >= row_end) return;
  const hn::ScalableTag<float> df;
  const size_t K = w.cols;
  const size_t G = w.group;
  const size_t ng = (G != 0) ? K / G : 0;

  // Dots a promoted/dequantized row with every activation row.
  const auto dot_all = [&](size_t r, const float* row) HWY_ATTR {
    for (size_t t = 0; t < T; ++t) y[t * ldy + r] = DotF32(df, row, x + t * ldx, K);
  };

  switch (w.type) {
    case WType::kF32: {
      const float* W = static_cast<const float*>(w.data);
      for (size_t r = row_begin; r < row_end; ++r) dot_all(r, W + r * K);
      return;
    }
    case WType::kF16:
    case WType::kBF16: {
      const uint16_t* W = static_cast<const uint16_t*>(w.data);
      const bool f16 = w.type == WType::kF16;
      if (T <= kFusedMaxT) {
        for (size_t r = row_begin; r < row_end; ++r) {
          for (size_t t = 0; t < T; ++t) {
            const float* xt = x + t * ldx;
            y[t * ldy + r] = f16 ? DotF16Row(df, W + r * K, xt, K) : DotBF16Row(df, W + r * K, xt, K);
          }
        }
        return;
      }
      float* buf = ScratchFloats<1>(K);
      for (size_t r = row_begin; r < row_end; ++r) {
        if (f16) {
          F16ToF32(W + r * K, K, buf);
        } else {
          BF16ToF32(W + r * K, K, buf);
        }
        dot_all(r, buf);
      }
      return;
    }
    case WType::kI8: {
      const int8_t* W = static_cast<const int8_t*>(w.data);
      float* sc = ScratchFloats<2>(ng);
      float* buf = (T <= kFusedMaxT) ? nullptr : ScratchFloats<1>(K);
      for (size_t r = row_begin; r < row_end; ++r) {
        F16ToF32(w.scales + r * ng, ng, sc);
        if (T <= kFusedMaxT) {
          for (size_t t = 0; t < T; ++t) y[t * ldy + r] = DotI8Row(W + r * K, sc, x + t * ldx, K, G);
        } else {
          DequantI8F(W + r * K, sc, K, G, buf);
          dot_all(r, buf);
        }
      }
      return;
    }
    case WType::kI4Sym:
    case WType::kI4Asym: {
      const uint8_t* W = static_cast<const uint8_t*>(w.data);
      const bool asym = w.type == WType::kI4Asym;
      float* sc = ScratchFloats<2>(2 * ng);
      float* mn = sc + ng;
      float* buf = (T <= kFusedMaxT) ? nullptr : ScratchFloats<1>(K);
      for (size_t r = row_begin; r < row_end; ++r) {
        const uint8_t* codes = W + r * (K / 2);
        F16ToF32(w.scales + r * ng, ng, sc);
        if (asym) F16ToF32(w.mins + r * ng, ng, mn);
        if (T <= kFusedMaxT) {
          for (size_t t = 0; t < T; ++t) {
            const float* xt = x + t * ldx;
            y[t * ldy + r] = asym ? DotI4Row<true>(codes, sc, mn, xt, K, G)
                                  : DotI4Row<false>(codes, sc, nullptr, xt, K, G);
          }
        } else {
          if (asym) {
            DequantI4AsymF(codes, sc, mn, K, G, buf);
          } else {
            DequantI4SymF(codes, sc, K, G, buf);
          }
          dot_all(r, buf);
        }
      }
      return;
    }
  }
}

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_MATMUL_INL_H_
