// Per-target MatMul (weights [rows][cols] in any WType times f32 activations), re-included
// once per Highway target. Accumulates in f32.
//   T <= kFusedMaxT : fused dequant + dot per (row, token) (HIGHWAY.md recipe 7.5). A row's
//            result for a token does not depend on T, so a sequence decoded alone or batched
//            with others (the server's continuous batching) gets bit-identical logits.
//   T  > kFusedMaxT : blocks of kBlockRows weight rows are dequantized/promoted once into a
//            thread-local f32 buffer and multiplied with all T activation rows in
//            register-blocked kTileR x kTileT tiles (prefill).
#if defined(TESSERA_KERNELS_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_MATMUL_INL_H_
#undef TESSERA_KERNELS_MATMUL_INL_H_
#else
#define TESSERA_KERNELS_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "core/half.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "quantizer/kernels/convert-inl.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/kernels/nl4-inl.h"
#include "quantizer/kernels/ops-inl.h"
#include "quantizer/kernels/quant-inl.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Decode streams f16 / bf16 rows from memory: prefetch this many elements (8 KiB) ahead, which
// runs on into the next rows (rows are contiguous). AMD EPYC, kernels_bench MatMulT1/f16 (4096 x
// 4096, 1 thread): 29-30 GB/s without, 31 / 37 / 40 GB/s at 4 / 8 / 16 KiB. Xeon (AMX machine),
// 1.1B f16 decode on 2 threads from huge pages, tok/s: 14.5 at 4-8 KiB, 13.8 at 16, 13.2 at 32.
// Into L2 (locality 2, prefetcht1 on x86), not L1: 13.7 -> 14.6 tok/s on the Xeon.
constexpr size_t kF16Prefetch = 4096;

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
    __builtin_prefetch(wh + i + kF16Prefetch, 0, 2);
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
    __builtin_prefetch(w + i + kF16Prefetch, 0, 2);
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

// int6 row unpacked to bytes c (0..63; weight (c - 32) * sc[g]) . x: DotI8Row's arithmetic
// (float(c - 32) is the same value as float(int8 q)).
HWY_INLINE float DotI6Row(const uint8_t* HWY_RESTRICT c, const float* HWY_RESTRICT sc,
                          const float* HWY_RESTRICT x, size_t n, size_t group) {
  const QuantTag df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df);
  const auto k32 = hn::Set(di, 32);
  auto acc = hn::Zero(df);
  for (size_t g = 0; g < n / group; ++g) {
    const size_t base = g * group;
    auto a0 = hn::Zero(df), a1 = hn::Zero(df);
    size_t i = 0;
    for (; i + 2 * N <= group; i += 2 * N) {
      const auto w0 = hn::ConvertTo(df, hn::Sub(hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(du8, c + base + i))), k32));
      const auto w1 = hn::ConvertTo(df, hn::Sub(hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(du8, c + base + i + N))), k32));
      a0 = hn::MulAdd(w0, hn::LoadU(df, x + base + i), a0);
      a1 = hn::MulAdd(w1, hn::LoadU(df, x + base + i + N), a1);
    }
    for (; i < group; i += N) {
      const auto w0 = hn::ConvertTo(df, hn::Sub(hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(du8, c + base + i))), k32));
      a0 = hn::MulAdd(w0, hn::LoadU(df, x + base + i), a0);
    }
    acc = hn::MulAdd(hn::Set(df, sc[g]), hn::Add(a0, a1), acc);
  }
  return hn::GetLane(hn::SumOfLanes(df, acc));
}

// kR int4 rows . x at once (decode): each x load is shared by kR rows. Every row gets exactly
// the arithmetic of kR == 1 (own accumulators, same op order), so a row's result does not
// depend on the blocking. sc[i] / mn[i] are row i's f32 group scales / mins.
// AVX-512: each group's 16 possible weight values (q - 8) * d (sym) or q * s + min (asym) are
// put in one register and the nibbles pick from it with a lane permute (no int->float convert,
// no per-group scale multiply of the partial sums).
template <size_t kR, bool kAsym>
HWY_INLINE void DotI4Rows(const uint8_t* const* HWY_RESTRICT codes, const float* const* sc,
                          const float* const* mn, const float* HWY_RESTRICT x, size_t n,
                          size_t group, float* out, size_t out_stride) {
  const QuantTag df;
  using V = hn::Vec<decltype(df)>;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df);
  const size_t half = group / 2;
  const auto mask = hn::Set(di, 0xF);
  V acc[kR], acc2[kR];
#pragma GCC unroll 8
  for (size_t i = 0; i < kR; ++i) acc[i] = acc2[i] = hn::Zero(df);
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  static_assert(hn::MaxLanes(QuantTag()) == 16, "16-entry LUT needs 16 f32 lanes");
  HWY_ALIGN static constexpr float kLut[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const V lut = hn::Load(df, kLut);
  const V eight = hn::Set(df, 8.0f);
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    V tbl[kR];
#pragma GCC unroll 8
    for (size_t i = 0; i < kR; ++i) {
      tbl[i] = kAsym ? hn::MulAdd(lut, hn::Set(df, sc[i][g]), hn::Set(df, mn[i][g]))
                     : hn::Mul(hn::Sub(lut, eight), hn::Set(df, sc[i][g]));
    }
    for (size_t j = 0; j < half; j += N) {
      const V xlo = hn::LoadU(df, xg + j);
      const V xhi = hn::LoadU(df, xg + j + half);
#pragma GCC unroll 8
      for (size_t i = 0; i < kR; ++i) {
        const auto b = hn::PromoteTo(di, hn::LoadU(du8, codes[i] + g * half + j));
        const V wlo = hn::TableLookupLanes(tbl[i], hn::IndicesFromVec(df, hn::And(b, mask)));
        const V whi = hn::TableLookupLanes(tbl[i], hn::IndicesFromVec(df, hn::ShiftRight<4>(b)));
        acc[i] = hn::MulAdd(wlo, xlo, acc[i]);
        acc2[i] = hn::MulAdd(whi, xhi, acc2[i]);
      }
    }
  }
#pragma GCC unroll 8
  for (size_t i = 0; i < kR; ++i) {
    out[i * out_stride] = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc[i], acc2[i])));
  }
#else
  const auto ieight = hn::Set(di, 8);
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    V alo[kR], ahi[kR];
#pragma GCC unroll 8
    for (size_t i = 0; i < kR; ++i) alo[i] = ahi[i] = hn::Zero(df);
    auto xs = hn::Zero(df);
    for (size_t j = 0; j < half; j += N) {
      const V xlo = hn::LoadU(df, xg + j);
      const V xhi = hn::LoadU(df, xg + j + half);
      if (kAsym) xs = hn::Add(xs, hn::Add(xlo, xhi));
#pragma GCC unroll 8
      for (size_t i = 0; i < kR; ++i) {
        const auto b = hn::PromoteTo(di, hn::LoadU(du8, codes[i] + g * half + j));
        auto qlo = hn::And(b, mask);
        auto qhi = hn::ShiftRight<4>(b);
        if (!kAsym) {
          qlo = hn::Sub(qlo, ieight);
          qhi = hn::Sub(qhi, ieight);
        }
        alo[i] = hn::MulAdd(hn::ConvertTo(df, qlo), xlo, alo[i]);
        ahi[i] = hn::MulAdd(hn::ConvertTo(df, qhi), xhi, ahi[i]);
      }
    }
#pragma GCC unroll 8
    for (size_t i = 0; i < kR; ++i) {
      acc[i] = hn::MulAdd(hn::Set(df, sc[i][g]), hn::Add(alo[i], ahi[i]), acc[i]);
      if (kAsym) acc[i] = hn::MulAdd(hn::Set(df, mn[i][g]), xs, acc[i]);
    }
  }
#pragma GCC unroll 8
  for (size_t i = 0; i < kR; ++i) out[i * out_stride] = hn::GetLane(hn::SumOfLanes(df, acc[i]));
  (void)acc2;
#endif
}

// ---- prefill: register-blocked f32 tiles --------------------------------------------------
// y[t * ldy + i] = rows[i] . x[t * ldx], i < kR, t < kT, over K floats. kR x kT accumulators
// share each row / activation load (the old path did one row load per activation load).
template <size_t kR, size_t kT, class DF>
HWY_INLINE void TileF32(DF df, const float* const* HWY_RESTRICT rows, const float* HWY_RESTRICT x,
                        size_t ldx, size_t K, float* HWY_RESTRICT y, size_t ldy) {
  using V = hn::Vec<DF>;
  const size_t N = hn::Lanes(df);
  V acc[kR][kT];
#pragma GCC unroll 8
  for (size_t i = 0; i < kR; ++i) {
#pragma GCC unroll 8
    for (size_t t = 0; t < kT; ++t) acc[i][t] = hn::Zero(df);
  }
  size_t k = 0;
  for (; k + N <= K; k += N) {
    V w[kR];
#pragma GCC unroll 8
    for (size_t i = 0; i < kR; ++i) w[i] = hn::LoadU(df, rows[i] + k);
#pragma GCC unroll 8
    for (size_t t = 0; t < kT; ++t) {
      const V xv = hn::LoadU(df, x + t * ldx + k);
#pragma GCC unroll 8
      for (size_t i = 0; i < kR; ++i) acc[i][t] = hn::MulAdd(w[i], xv, acc[i][t]);
    }
  }
  if (k < K) {
    V w[kR];
#pragma GCC unroll 8
    for (size_t i = 0; i < kR; ++i) w[i] = LoadTail(df, rows[i] + k, K - k);
#pragma GCC unroll 8
    for (size_t t = 0; t < kT; ++t) {
      const V xv = LoadTail(df, x + t * ldx + k, K - k);
#pragma GCC unroll 8
      for (size_t i = 0; i < kR; ++i) acc[i][t] = hn::MulAdd(w[i], xv, acc[i][t]);
    }
  }
#pragma GCC unroll 8
  for (size_t t = 0; t < kT; ++t) {
#pragma GCC unroll 8
    for (size_t i = 0; i < kR; ++i) y[t * ldy + i] = hn::GetLane(hn::SumOfLanes(df, acc[i][t]));
  }
}

// Token tile width: AVX-512 has 32 vector registers (4x6 accumulators + 4 rows + 1 x), the
// others 16 (4x2 + 4 + 1).
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr size_t kTileT = 6;
#else
constexpr size_t kTileT = 2;
#endif
constexpr size_t kTileR = 4;
// Rows dequantized per block (kept in L2 while every token tile sweeps them).
constexpr size_t kBlockRows = 16;

// rows[0..nr) (nr <= kBlockRows) times all T activation rows; y points at column r0.
template <class DF>
HWY_INLINE void BlockTimesAll(DF df, const float* const* rows, size_t nr, const float* x, size_t T,
                              size_t ldx, size_t K, float* y, size_t ldy) {
  size_t t = 0;
  for (; t + kTileT <= T; t += kTileT) {
    size_t i = 0;
    for (; i + kTileR <= nr; i += kTileR)
      TileF32<kTileR, kTileT>(df, rows + i, x + t * ldx, ldx, K, y + t * ldy + i, ldy);
    for (; i < nr; ++i) TileF32<1, kTileT>(df, rows + i, x + t * ldx, ldx, K, y + t * ldy + i, ldy);
  }
  for (; t < T; ++t) {
    size_t i = 0;
    for (; i + kTileR <= nr; i += kTileR)
      TileF32<kTileR, 1>(df, rows + i, x + t * ldx, ldx, K, y + t * ldy + i, ldy);
    for (; i < nr; ++i) TileF32<1, 1>(df, rows + i, x + t * ldx, ldx, K, y + t * ldy + i, ldy);
  }
}

constexpr size_t kFusedMaxT = 16;

HWY_MAYBE_UNUSED static void MatMul(const WeightMatrix& w, const float* x, size_t T, size_t ldx,
                                    float* y, size_t ldy, size_t row_begin, size_t row_end) {
  if (T == 0 || row_begin >= row_end) return;
  const hn::ScalableTag<float> df;
  const size_t K = w.cols;
  const size_t G = w.group;
  const size_t ng = (G != 0) ? K / G : 0;

  if (T > kFusedMaxT) {
    // Prefill: dequantize/promote kBlockRows rows once, then register-blocked tiles.
    const float* rows[kBlockRows];
    float* buf = (w.type == WType::kF32) ? nullptr : ScratchFloats<1>(kBlockRows * K);
    float* sc = ScratchFloats<2>(2 * ng + 1);
    float* mn = sc + ng;
    for (size_t r0 = row_begin; r0 < row_end; r0 += kBlockRows) {
      const size_t nr = (row_end - r0 < kBlockRows) ? row_end - r0 : kBlockRows;
      for (size_t i = 0; i < nr; ++i) {
        const size_t r = r0 + i;
        float* out = buf ? buf + i * K : nullptr;
        switch (w.type) {
          case WType::kF32:
            rows[i] = static_cast<const float*>(w.data) + r * K;
            continue;
          case WType::kF16:
            F16ToF32(static_cast<const uint16_t*>(w.data) + r * K, K, out);
            break;
          case WType::kBF16:
            BF16ToF32(static_cast<const uint16_t*>(w.data) + r * K, K, out);
            break;
          case WType::kI8:
            F16ToF32(w.scales + r * ng, ng, sc);
            DequantI8F(static_cast<const int8_t*>(w.data) + r * K, sc, K, G, out);
            break;
          case WType::kI4Sym:
            F16ToF32(w.scales + r * ng, ng, sc);
            DequantI4SymF(static_cast<const uint8_t*>(w.data) + r * (K / 2), sc, K, G, out);
            break;
          case WType::kI4Asym:
            F16ToF32(w.scales + r * ng, ng, sc);
            F16ToF32(w.mins + r * ng, ng, mn);
            DequantI4AsymF(static_cast<const uint8_t*>(w.data) + r * (K / 2), sc, mn, K, G, out);
            break;
          case WType::kI6Sym:
            F16ToF32(w.scales + r * ng, ng, sc);
            DequantI6SymF(static_cast<const uint8_t*>(w.data) + r * (3 * K / 4), sc, K, G, out);
            break;
          case WType::kI4Nl: {
            int8_t* q = ScratchBytes<2>(K);
            F16ToF32(w.scales + r * ng, ng, sc);
            UnpackI4NlToI8(static_cast<const uint8_t*>(w.data) + r * (K / 2), K, G, q);
            DequantI8F(q, sc, K, G, out);
            break;
          }
        }
        rows[i] = out;
      }
      BlockTimesAll(df, rows, nr, x, T, ldx, K, y + r0, ldy);
    }
    return;
  }

  // Decode (T <= kFusedMaxT): fused dequant + dot per (row, token); a token's result does not
  // depend on T or on the other tokens.
  switch (w.type) {
    case WType::kF32: {
      const float* W = static_cast<const float*>(w.data);
      for (size_t r = row_begin; r < row_end; ++r) {
        for (size_t t = 0; t < T; ++t) y[t * ldy + r] = DotF32(df, W + r * K, x + t * ldx, K);
      }
      return;
    }
    case WType::kF16:
    case WType::kBF16: {
      const uint16_t* W = static_cast<const uint16_t*>(w.data);
      const bool f16 = w.type == WType::kF16;
      for (size_t r = row_begin; r < row_end; ++r) {
        for (size_t t = 0; t < T; ++t) {
          const float* xt = x + t * ldx;
          y[t * ldy + r] = f16 ? DotF16Row(df, W + r * K, xt, K) : DotBF16Row(df, W + r * K, xt, K);
        }
      }
      return;
    }
    case WType::kI8: {
      const int8_t* W = static_cast<const int8_t*>(w.data);
      float* sc = ScratchFloats<2>(ng);
      for (size_t r = row_begin; r < row_end; ++r) {
        F16ToF32(w.scales + r * ng, ng, sc);
        for (size_t t = 0; t < T; ++t) y[t * ldy + r] = DotI8Row(W + r * K, sc, x + t * ldx, K, G);
      }
      return;
    }
    case WType::kI6Sym: {
      // Each row is unpacked once to bytes c (UnpackI6ToU8) and then takes the int8 dot product
      // with c - 32: the same float arithmetic as an I8 matrix holding c - 32, for any T.
      const uint8_t* W = static_cast<const uint8_t*>(w.data);
      float* sc = ScratchFloats<2>(ng);
      uint8_t* c = reinterpret_cast<uint8_t*>(ScratchBytes<1>(K));
      for (size_t r = row_begin; r < row_end; ++r) {
        F16ToF32(w.scales + r * ng, ng, sc);
        UnpackI6ToU8(W + r * (3 * K / 4), K, G, c);
        for (size_t t = 0; t < T; ++t) y[t * ldy + r] = DotI6Row(c, sc, x + t * ldx, K, G);
      }
      return;
    }
    case WType::kI4Nl: {
      // Each row's nibbles are looked up once into int8 levels and then take the int8 dot
      // product: the same float arithmetic as an I8 matrix holding the levels, for any T.
      const uint8_t* W = static_cast<const uint8_t*>(w.data);
      float* sc = ScratchFloats<2>(ng);
      int8_t* q = ScratchBytes<1>(K);
      for (size_t r = row_begin; r < row_end; ++r) {
        F16ToF32(w.scales + r * ng, ng, sc);
        UnpackI4NlToI8(W + r * (K / 2), K, G, q);
        for (size_t t = 0; t < T; ++t) y[t * ldy + r] = DotI8Row(q, sc, x + t * ldx, K, G);
      }
      return;
    }
    case WType::kI4Sym:
    case WType::kI4Asym: {
      const uint8_t* W = static_cast<const uint8_t*>(w.data);
      const bool asym = w.type == WType::kI4Asym;
      constexpr size_t kR = 4;
      float* sbuf = ScratchFloats<2>(2 * kR * ng);
      const uint8_t* codes[kR];
      const float* sc[kR];
      const float* mn[kR];
      for (size_t r0 = row_begin; r0 < row_end; r0 += kR) {
        const size_t nr = (row_end - r0 < kR) ? row_end - r0 : kR;
        for (size_t i = 0; i < nr; ++i) {
          const size_t r = r0 + i;
          codes[i] = W + r * (K / 2);
          float* s = sbuf + 2 * i * ng;
          F16ToF32(w.scales + r * ng, ng, s);
          if (asym) F16ToF32(w.mins + r * ng, ng, s + ng);
          sc[i] = s;
          mn[i] = s + ng;
        }
        for (size_t t = 0; t < T; ++t) {
          const float* xt = x + t * ldx;
          float* yt = y + t * ldy + r0;
          if (nr == kR) {
            if (asym) {
              DotI4Rows<kR, true>(codes, sc, mn, xt, K, G, yt, 1);
            } else {
              DotI4Rows<kR, false>(codes, sc, mn, xt, K, G, yt, 1);
            }
          } else {
            for (size_t i = 0; i < nr; ++i) {
              if (asym) {
                DotI4Rows<1, true>(codes + i, sc + i, mn + i, xt, K, G, yt + i, 1);
              } else {
                DotI4Rows<1, false>(codes + i, sc + i, mn + i, xt, K, G, yt + i, 1);
              }
            }
          }
        }
      }
      return;
    }
  }
}

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_MATMUL_INL_H_
