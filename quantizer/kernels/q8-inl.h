// Per-target int8-activation kernels (layouts in kernels.h, "int8-activation matmul"):
// QuantizeActsQ8 (Highway ops on every target) and MatMulQ8 (AVX512-VNNI vpdpbusd on AVX3_DL,
// a portable integer loop with the same arithmetic on the other targets).
#if defined(TESSERA_KERNELS_Q8_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_Q8_INL_H_
#undef TESSERA_KERNELS_Q8_INL_H_
#else
#define TESSERA_KERNELS_Q8_INL_H_
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/half.h"
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/kernels/quant-inl.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One block of 32 floats -> 32 int8 (logical order) + scale + sum.
HWY_INLINE void QuantizeBlockQ8(const float* HWY_RESTRICT xb, int8_t* HWY_RESTRICT q, float* d,
                                int32_t* sum) {
  const QuantTag df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const size_t N = hn::Lanes(df);
  auto vmax = hn::Zero(df);
  for (size_t j = 0; j < kQ8Block; j += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + j)));
  const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
  *d = amax / 127.0f;
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  const auto vinv = hn::Set(df, inv);
  const auto lo = hn::Set(di, -127), hi = hn::Set(di, 127);
  auto vsum = hn::Zero(di);
  for (size_t j = 0; j < kQ8Block; j += N) {
    auto qi = RoundToInt(df, hn::Mul(hn::LoadU(df, xb + j), vinv));
    qi = hn::Min(hn::Max(qi, lo), hi);
    vsum = hn::Add(vsum, qi);
    hn::StoreU(hn::DemoteTo(d8, qi), d8, q + j);
  }
  *sum = hn::GetLane(hn::SumOfLanes(di, vsum));
}

HWY_MAYBE_UNUSED static void QuantizeActsQ8(const float* x, size_t ldx, size_t K, const Q8Acts& a,
                                            size_t t_begin, size_t t_end) {
  const size_t nb = a.Kp / kQ8Block;
  HWY_ALIGN float buf[kQ8Block];
  HWY_ALIGN int8_t qb[kQ8Block];
  for (size_t t = t_begin; t < t_end; ++t) {
    const float* xt = x + t * ldx;
    int8_t* qt = a.q + t * a.Kp;
    for (size_t b = 0; b < nb; ++b) {
      const size_t k0 = b * kQ8Block;
      const float* src = xt + k0;
      if (k0 + kQ8Block > K) {  // tail block: zero padded copy
        for (size_t i = 0; i < kQ8Block; ++i) buf[i] = (k0 + i < K) ? xt[k0 + i] : 0.0f;
        src = buf;
      }
      QuantizeBlockQ8(src, qb, a.d + t * nb + b, a.sum + t * nb + b);
      // Scatter the 8 runs of 4 values into the slice layout.
      int8_t* dst = qt + (b / 16) * kQ8Super + (b % 16) * 4;
      for (size_t s = 0; s < 8; ++s) std::memcpy(dst + s * 64, qb + 4 * s, 4);
    }
  }
}

// Bytes of one row's codes per superblock, and of one (row block, superblock) unit.
HWY_INLINE constexpr size_t Q8CodeBytes(bool i8) { return i8 ? 512 : 256; }
HWY_INLINE constexpr size_t Q8UnitBytes(bool i8) {
  return kQ8RowBlock * Q8CodeBytes(i8) + kQ8RowBlock * 16 * 2;
}

#if HWY_TARGET == HWY_AVX3_DL
// kQ8RowBlock x kU results (rows of one row block, kU tokens) over all superblocks. All
// rows x tokens integer accumulators are live at once (vpdpbusd has a 5-cycle latency; with
// one token each row gets two chains, even/odd slices, added exactly at the end), so the
// float work per (row, token, superblock) is one convert, one multiply and one FMA.
// kI8: I8 unit layout (8 slices of unsigned bytes per row), else packed nibbles. kShift:
// log2 of the unsigned-code bias (7 for I8, 3 for I4, also when I4 was expanded to bytes).
template <size_t kU, bool kI8, int kShift>
// The full AVX3_DL feature string plus avx512vnni: GCC merges a function's target attribute with
// the enclosing HWY_BEFORE_NAMESPACE pragma, clang replaces it (then avx512bw etc. are missing).
__attribute__((target(HWY_TARGET_STR ",avx512vnni"))) static void Q8TileVnni(
    const uint8_t* HWY_RESTRICT w, size_t nsb, const int8_t* const* aq, const float* const* ad,
    const int32_t* const* as, float* HWY_RESTRICT res) {
  constexpr size_t kR = kQ8RowBlock;
  constexpr size_t kC = kU == 1 ? 2 : 1;  // chains per (row, token)
  constexpr size_t kCB = Q8CodeBytes(kI8);
  constexpr size_t kUnit = Q8UnitBytes(kI8);
  __m512 acc[kR][kU];
#pragma GCC unroll 4
  for (size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 4
    for (size_t u = 0; u < kU; ++u) acc[r][u] = _mm512_setzero_ps();
  }
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (size_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* wb = w + sb * kUnit;
    if (sb + 2 < nsb) {
      // Two units ahead (the hardware prefetcher also follows the stream).
      const char* pf = reinterpret_cast<const char*>(wb + 2 * kUnit);
      for (size_t o = 0; o < kUnit; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
    }
    __m512i ia[kR][kU][kC];
#pragma GCC unroll 4
    for (size_t u = 0; u < kU; ++u) {
      const __m512i s = _mm512_loadu_si512(as[u] + sb * 16);
      ia[0][u][0] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(s, kShift));
#pragma GCC unroll 4
      for (size_t r = 0; r < kR; ++r) {
        ia[r][u][0] = ia[0][u][0];
        if (kC == 2) ia[r][u][kC - 1] = _mm512_setzero_si512();
      }
    }
    const int8_t* a[kU];
#pragma GCC unroll 4
    for (size_t u = 0; u < kU; ++u) a[u] = aq[u] + sb * kQ8Super;
    if (kI8) {
#pragma GCC unroll 8
      for (size_t s = 0; s < 8; ++s) {
        // Activations stay in registers across the rows (loads: rows + tokens per slice).
        __m512i av[kU];
#pragma GCC unroll 4
        for (size_t u = 0; u < kU; ++u) av[u] = _mm512_loadu_si512(a[u] + 64 * s);
#pragma GCC unroll 4
        for (size_t r = 0; r < kR; ++r) {
          const __m512i wv = _mm512_loadu_si512(wb + r * kCB + 64 * s);
#pragma GCC unroll 4
          for (size_t u = 0; u < kU; ++u)
            ia[r][u][s % kC] = _mm512_dpbusd_epi32(ia[r][u][s % kC], wv, av[u]);
        }
      }
    } else {
#pragma GCC unroll 4
      for (size_t m = 0; m < 4; ++m) {
#pragma GCC unroll 4
        for (size_t r = 0; r < kR; ++r) {
          const __m512i raw = _mm512_loadu_si512(wb + r * kCB + 64 * m);
          const __m512i lo = _mm512_and_si512(raw, m4);
          const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
#pragma GCC unroll 4
          for (size_t u = 0; u < kU; ++u) {
            ia[r][u][0] = _mm512_dpbusd_epi32(ia[r][u][0], lo, _mm512_loadu_si512(a[u] + 64 * m));
            ia[r][u][kC - 1] =
                _mm512_dpbusd_epi32(ia[r][u][kC - 1], hi, _mm512_loadu_si512(a[u] + 64 * (m + 4)));
          }
        }
      }
    }
#pragma GCC unroll 4
    for (size_t r = 0; r < kR; ++r) {
      const __m512 dw = _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + kR * kCB + r * 32)));
#pragma GCC unroll 4
      for (size_t u = 0; u < kU; ++u) {
        const __m512i S = kC == 2 ? _mm512_add_epi32(ia[r][u][0], ia[r][u][kC - 1]) : ia[r][u][0];
        acc[r][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S),
                                    _mm512_mul_ps(dw, _mm512_loadu_ps(ad[u] + sb * 16)), acc[r][u]);
      }
    }
  }
#pragma GCC unroll 4
  for (size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 4
    for (size_t u = 0; u < kU; ++u) res[r * kU + u] = _mm512_reduce_add_ps(acc[r][u]);
  }
}
#endif  // HWY_TARGET == HWY_AVX3_DL

// Portable version of the tile (same arithmetic: exact int32 block sums, then per lane
// acc = fma(float(S), d_w * d_a, acc), lanes summed 0..15 in order).
template <bool kI8>
static void Q8TilePortable(const uint8_t* HWY_RESTRICT w, size_t nsb, size_t U,
                           const int8_t* const* aq, const float* const* ad,
                           const int32_t* const* as, float* HWY_RESTRICT res) {
  constexpr size_t kCB = Q8CodeBytes(kI8);
  constexpr size_t kUnit = Q8UnitBytes(kI8);
  constexpr int32_t kBias = kI8 ? 128 : 8;
  for (size_t r = 0; r < kQ8RowBlock; ++r) {
    for (size_t u = 0; u < U; ++u) {
      float acc[16] = {0};
      for (size_t sb = 0; sb < nsb; ++sb) {
        const uint8_t* wr = w + sb * kUnit + r * kCB;
        const uint16_t* sw =
            reinterpret_cast<const uint16_t*>(w + sb * kUnit + kQ8RowBlock * kCB + r * 32);
        const int8_t* a = aq[u] + sb * kQ8Super;
        for (size_t j = 0; j < 16; ++j) {
          int32_t S = -kBias * as[u][sb * 16 + j];
          for (size_t s = 0; s < 8; ++s) {
            for (size_t i = 0; i < 4; ++i) {
              int32_t wu;
              if (kI8) {
                wu = wr[64 * s + 4 * j + i];
              } else {
                const uint8_t byte = wr[64 * (s % 4) + 4 * j + i];
                wu = s < 4 ? (byte & 0x0F) : (byte >> 4);
              }
              S += wu * a[64 * s + 4 * j + i];
            }
          }
          uint16_t h;
          std::memcpy(&h, sw + j, 2);
          const float scale = tessera::F16ToF32(h) * ad[u][sb * 16 + j];
          acc[j] = std::fma(static_cast<float>(S), scale, acc[j]);
        }
      }
      float total = 0.0f;
      for (size_t j = 0; j < 16; ++j) total += acc[j];
      res[r * U + u] = total;
    }
  }
}

#if HWY_TARGET == HWY_AVX3_DL
template <bool kI8, int kShift>
static void Q8TileVnniU(size_t U, const uint8_t* wrb, size_t nsb, const int8_t* const* aq,
                        const float* const* ad, const int32_t* const* as, float* res) {
  switch (U) {
    case 3:
      Q8TileVnni<3, kI8, kShift>(wrb, nsb, aq, ad, as, res);
      break;
    case 2:
      Q8TileVnni<2, kI8, kShift>(wrb, nsb, aq, ad, as, res);
      break;
    default:
      Q8TileVnni<1, kI8, kShift>(wrb, nsb, aq, ad, as, res);
      break;
  }
}

// Unpacks one I4 row block (nsb units) into the I8 unit layout (bytes 0..15, scales copied):
// for prefill, so the nibble split is done once per row block instead of once per token tile.
static void ExpandI4RowBlock(const uint8_t* HWY_RESTRICT src, size_t nsb, uint8_t* HWY_RESTRICT dst) {
  const hn::ScalableTag<uint8_t> d8;
  const size_t N = hn::Lanes(d8);
  const auto m4 = hn::Set(d8, 0x0F);
  for (size_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* s = src + sb * Q8UnitBytes(false);
    uint8_t* o = dst + sb * Q8UnitBytes(true);
    for (size_t r = 0; r < kQ8RowBlock; ++r) {
      for (size_t i = 0; i < 256; i += N) {
        const auto raw = hn::LoadU(d8, s + r * 256 + i);
        hn::StoreU(hn::And(raw, m4), d8, o + r * 512 + i);
        hn::StoreU(hn::ShiftRight<4>(raw), d8, o + r * 512 + 256 + i);
      }
    }
    std::memcpy(o + kQ8RowBlock * 512, s + kQ8RowBlock * 256, kQ8RowBlock * 32);
  }
}
#endif

template <bool kI8>
static void MatMulQ8T(const Q8Weights& w, const Q8Acts& a, size_t T, float* y, size_t ldy,
                      size_t rb_begin, size_t rb_end) {
  constexpr size_t kUnit = Q8UnitBytes(kI8);
  constexpr size_t kMaxU = 3;
  const size_t nsb = w.Kp / kQ8Super;
  const size_t nb = w.Kp / kQ8Block;
#if HWY_TARGET == HWY_AVX3_DL
  // Prefill of I4: expand each row block to bytes once (same integer sums, same results).
  const bool expand = !kI8 && T > kMaxU;
  uint8_t* ebuf = nullptr;
  if (expand) {
    thread_local hwy::AlignedFreeUniquePtr<uint8_t[]> buf;
    thread_local size_t cap = 0;
    const size_t need = nsb * Q8UnitBytes(true);
    if (cap < need) {
      buf = hwy::AllocateAligned<uint8_t>(need);
      cap = need;
    }
    ebuf = buf.get();
  }
#endif
  for (size_t rb = rb_begin; rb < rb_end; ++rb) {
    const uint8_t* wrb = w.data + rb * nsb * kUnit;
    const size_t r0 = rb * kQ8RowBlock;
    const size_t nr = (w.rows - r0 < kQ8RowBlock) ? w.rows - r0 : kQ8RowBlock;
#if HWY_TARGET == HWY_AVX3_DL
    if (expand) ExpandI4RowBlock(wrb, nsb, ebuf);
#endif
    for (size_t t0 = 0; t0 < T;) {
      const size_t rem = T - t0;
      const size_t U = rem >= kMaxU ? kMaxU : rem;
      const int8_t* aq[kMaxU];
      const float* ad[kMaxU];
      const int32_t* as[kMaxU];
      for (size_t u = 0; u < U; ++u) {
        aq[u] = a.q + (t0 + u) * a.Kp;
        ad[u] = a.d + (t0 + u) * nb;
        as[u] = a.sum + (t0 + u) * nb;
      }
      float res[kQ8RowBlock * kMaxU];
#if HWY_TARGET == HWY_AVX3_DL
      if (kI8) {
        Q8TileVnniU<true, 7>(U, wrb, nsb, aq, ad, as, res);
      } else if (expand) {
        Q8TileVnniU<true, 3>(U, ebuf, nsb, aq, ad, as, res);
      } else {
        Q8TileVnniU<false, 3>(U, wrb, nsb, aq, ad, as, res);
      }
#else
      Q8TilePortable<kI8>(wrb, nsb, U, aq, ad, as, res);
#endif
      for (size_t r = 0; r < nr; ++r) {
        for (size_t u = 0; u < U; ++u) y[(t0 + u) * ldy + r0 + r] = res[r * U + u];
      }
      t0 += U;
    }
  }
}

HWY_MAYBE_UNUSED static void MatMulQ8(const Q8Weights& w, const Q8Acts& a, size_t T, float* y,
                                      size_t ldy, size_t rb_begin, size_t rb_end) {
  if (T == 0 || rb_begin >= rb_end) return;
  if (w.type == WType::kI8) {
    MatMulQ8T<true>(w, a, T, y, ldy, rb_begin, rb_end);
  } else {
    MatMulQ8T<false>(w, a, T, y, ldy, rb_begin, rb_end);
  }
}

HWY_MAYBE_UNUSED static bool Q8Fast() { return HWY_TARGET == HWY_AVX3_DL; }

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_Q8_INL_H_
