// Per-target int8-activation kernels (layouts in kernels.h, "int8-activation matmul"):
// QuantizeActsQ8 (Highway ops on every target) and MatMulQ8 (AVX512-VNNI vpdpbusd on AVX3_DL,
// a portable integer loop with the same arithmetic on the other targets) for I6 sym repacked
// weights. (I4 sym / I4 nl / I8 run in the GEMM layout, gemm-inl.h.)
#if defined(TESSERA_KERNELS_Q8_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_Q8_INL_H_
#undef TESSERA_KERNELS_Q8_INL_H_
#else
#define TESSERA_KERNELS_Q8_INL_H_
#endif

#include <algorithm>
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
// (I6 sym: 4 nibble vectors + 2 vectors of high bit pairs; I8, the layout I6 is unpacked to: 8.)
HWY_INLINE constexpr size_t Q8CodeBytes(WType t) { return t == WType::kI8 ? 512 : 384; }
HWY_INLINE constexpr size_t Q8UnitBytes(WType t) {
  return kQ8RowBlock * Q8CodeBytes(t) + kQ8RowBlock * 16 * 2;
}
// log2 of the bias subtracted per unit of activation sum (the codes are unsigned): I8 128,
// I6 sym 32.
HWY_INLINE constexpr int Q8BiasShift(WType t) { return t == WType::kI8 ? 7 : 5; }
// Bit offset of slice s's high pair in its I6 high vector (4 + (s % 4) / 2), see kernels.h.
HWY_INLINE constexpr int Q8I6PairShift(size_t s) { return (s % 2 ? 4 : 0) + (s >= 4 ? 2 : 0); }

#if HWY_TARGET == HWY_AVX3_DL
// The 4 rows of one row block x kU tokens (kU <= 3) over all superblocks.
// - Per (row, token) one int32 accumulator per superblock, started at -bias * sum(a) (the
//   codes are unsigned). With one token each row gets two chains (vpdpbusd latency), added
//   exactly at the end.
// - kU > 1: slice by slice, the 4 weight vectors of a slice stay in registers and each
//   activation vector is loaded once per slice and used for the 4 rows: 4 + kU loads per
//   4 * kU vpdpbusd. (Letting the compiler fold the activation loads into the vpdpbusd
//   instead, i.e. 1 + 1/4 loads per vpdpbusd, made the kernel load-bound: about 1.5x slower
//   at T = 8; the empty asm statements pin the values to registers.)
// - The float work per (row, token, superblock) is one convert, one multiply and one FMA in
//   the same order for every kU, so a token's results do not depend on the tile it lands in.
//   The 4 * kU float accumulators stay in registers too (4 * 3 * 2 + 4 + 1 + 1 = 30 zmm);
//   a 4 x 4 tile has to keep them in L1 and measured slower than 3 + 1 or 2 + 2 tiles.
// - Prefetch: while computing superblock sb the tile requests the lines of [pf + sb * pf_step,
//   + pf_step) that lie below pf + pf_bytes (the caller's share of the next row block).
// kT: I6 sym nibbles + high pairs (bias 32; c = nibble | pair << 4 is rebuilt per slice with one
// shift of the pair vector (none for 1 slice in 4), an and and a ternary-logic merge), or the I8
// unit layout (8 slices of unsigned bytes per row), which carries I6 codes unpacked once per row
// block for prefill (kShift = log2 of the bias: Q8BiasShift(kI6Sym)).
// The target attribute is the full AVX3_DL feature string plus avx512vnni: GCC merges a function's
// target attribute with the enclosing HWY_BEFORE_NAMESPACE pragma, clang replaces it (then
// avx512bw etc. would be missing).
// Slice s's 6-bit codes from its nibble vector (slice in bits 0-3; bits 4-7 are ignored) and
// its high-pair vector.
__attribute__((target(HWY_TARGET_STR ",avx512vnni"))) HWY_INLINE __m512i Q8I6Codes(
    __m512i nib, __m512i hv, size_t s) {
  __m512i h = hv;
  constexpr int kTo = 4;  // the pair's bits in c
  const int from = Q8I6PairShift(s);
  if (from < kTo) h = _mm512_slli_epi16(hv, kTo - from == 4 ? 4 : 2);
  if (from > kTo) h = _mm512_srli_epi16(hv, 2);
  h = _mm512_and_si512(h, _mm512_set1_epi8(0x30));
  // (nib & 0x0F) | h
  return _mm512_ternarylogic_epi32(nib, h, _mm512_set1_epi8(0x0F), 0xEC);
}

template <size_t kU, WType kT, int kShift>
__attribute__((target(HWY_TARGET_STR ",avx512vnni"))) static void Q8TileVnni(
    const uint8_t* HWY_RESTRICT w, size_t nsb, const int8_t* const* aq, const float* const* ad,
    const int32_t* const* as, const uint8_t* pf, size_t pf_step, size_t pf_bytes,
    float* HWY_RESTRICT res) {
  constexpr size_t kR = kQ8RowBlock;
  constexpr size_t kC = kU == 1 ? 2 : 1;  // chains per (row, token)
  constexpr bool kI8 = kT == WType::kI8;
  constexpr size_t kCB = Q8CodeBytes(kT);
  constexpr size_t kUnit = Q8UnitBytes(kT);
  static_assert(kU >= 1 && kU <= 3, "float accumulators must fit in registers");
  __m512 acc[kR][kU];
#pragma GCC unroll 4
  for (size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 4
    for (size_t u = 0; u < kU; ++u) acc[r][u] = _mm512_setzero_ps();
  }
  for (size_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* wb = w + sb * kUnit;
    // Into L2, not L1 (as the GEMM's decode prefetch, gemm-inl.h): 1.1B int4-mixed decode on 2
    // threads (Xeon) 38.9 -> 44.2 tok/s with both.
    for (size_t o = sb * pf_step; o < (sb + 1) * pf_step && o < pf_bytes; o += 64)
      _mm_prefetch(reinterpret_cast<const char*>(pf + o), _MM_HINT_T1);
    __m512i ia[kR][kU][kC];
#pragma GCC unroll 4
    for (size_t u = 0; u < kU; ++u) {
      const __m512i s = _mm512_loadu_si512(as[u] + sb * 16);
      const __m512i bias = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(s, kShift));
#pragma GCC unroll 4
      for (size_t r = 0; r < kR; ++r) {
        ia[r][u][0] = bias;
        if (kC == 2) ia[r][u][kC - 1] = _mm512_setzero_si512();
      }
    }
    const int8_t* a[kU];
#pragma GCC unroll 4
    for (size_t u = 0; u < kU; ++u) a[u] = aq[u] + sb * kQ8Super;
    if (kU > 1) {
      // Slice s of an I4 row is the low (s < 4) or high nibble of its vector s % 4.
#pragma GCC unroll 8
      for (size_t s = 0; s < 8; ++s) {
        __m512i wv[kR];
#pragma GCC unroll 4
        for (size_t r = 0; r < kR; ++r) {
          if (kI8) {
            wv[r] = _mm512_loadu_si512(wb + r * kCB + 64 * s);
          } else {
            const __m512i raw = _mm512_loadu_si512(wb + r * kCB + 64 * (s % 4));
            const __m512i hv = _mm512_loadu_si512(wb + r * kCB + 256 + 64 * ((s % 4) / 2));
            wv[r] = Q8I6Codes(s < 4 ? raw : _mm512_srli_epi16(raw, 4), hv, s);
          }
          asm("" : "+v"(wv[r]));
        }
#pragma GCC unroll 4
        for (size_t u = 0; u < kU; ++u) {
          __m512i x = _mm512_loadu_si512(a[u] + 64 * s);
          asm("" : "+v"(x));
#pragma GCC unroll 4
          for (size_t r = 0; r < kR; ++r) ia[r][u][0] = _mm512_dpbusd_epi32(ia[r][u][0], wv[r], x);
        }
      }
    } else if (kI8) {
      // One token: chains of even / odd slices.
#pragma GCC unroll 8
      for (size_t s = 0; s < 8; ++s) {
        const __m512i x = _mm512_loadu_si512(a[0] + 64 * s);
#pragma GCC unroll 4
        for (size_t r = 0; r < kR; ++r)
          ia[r][0][s % kC] =
              _mm512_dpbusd_epi32(ia[r][0][s % kC], _mm512_loadu_si512(wb + r * kCB + 64 * s), x);
      }
    } else {
      // One token, I6 nibbles + high pairs: both planes of a weight vector at once (chains lo /
      // hi); the pairs of slices m and m + 4 share a high vector.
#pragma GCC unroll 4
      for (size_t m = 0; m < 4; ++m) {
#pragma GCC unroll 4
        for (size_t r = 0; r < kR; ++r) {
          const __m512i raw = _mm512_loadu_si512(wb + r * kCB + 64 * m);
          const __m512i hv = _mm512_loadu_si512(wb + r * kCB + 256 + 64 * (m / 2));
          const __m512i lo = Q8I6Codes(raw, hv, m);
          const __m512i hi = Q8I6Codes(_mm512_srli_epi16(raw, 4), hv, m + 4);
          ia[r][0][0] = _mm512_dpbusd_epi32(ia[r][0][0], lo, _mm512_loadu_si512(a[0] + 64 * m));
          ia[r][0][kC - 1] =
              _mm512_dpbusd_epi32(ia[r][0][kC - 1], hi, _mm512_loadu_si512(a[0] + 64 * (m + 4)));
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

template <WType kT, int kShift = Q8BiasShift(kT)>
static void Q8TileVnniU(size_t U, const uint8_t* wrb, size_t nsb, const int8_t* const* aq,
                        const float* const* ad, const int32_t* const* as, const uint8_t* pf,
                        size_t pf_step, size_t pf_bytes, float* res) {
  switch (U) {
    case 3:
      Q8TileVnni<3, kT, kShift>(wrb, nsb, aq, ad, as, pf, pf_step, pf_bytes, res);
      break;
    case 2:
      Q8TileVnni<2, kT, kShift>(wrb, nsb, aq, ad, as, pf, pf_step, pf_bytes, res);
      break;
    default:
      Q8TileVnni<1, kT, kShift>(wrb, nsb, aq, ad, as, pf, pf_step, pf_bytes, res);
      break;
  }
}

// An I6 row block unpacked to the I8 unit layout holding the codes c (bias 32). A batch that
// runs many token tiles over a row block (prefill) unpacks it once into L1/L2 and reads bytes in
// every tile instead of rebuilding the codes per tile (the integer sums, hence the results, are
// the same).
__attribute__((target(HWY_TARGET_STR ",avx512vnni"))) static void Q8UnpackI6RowBlock(
    const uint8_t* HWY_RESTRICT w, size_t nsb, uint8_t* HWY_RESTRICT out) {
  constexpr size_t kR = kQ8RowBlock;
  constexpr size_t kIn = Q8UnitBytes(WType::kI6Sym), kOut = Q8UnitBytes(WType::kI8);
  constexpr size_t kCBIn = Q8CodeBytes(WType::kI6Sym), kCBOut = Q8CodeBytes(WType::kI8);
  for (size_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* u = w + sb * kIn;
    uint8_t* o = out + sb * kOut;
#pragma GCC unroll 4
    for (size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 4
      for (size_t m = 0; m < 4; ++m) {
        const __m512i raw = _mm512_loadu_si512(u + r * kCBIn + 64 * m);
        const __m512i hv = _mm512_loadu_si512(u + r * kCBIn + 256 + 64 * (m / 2));
        _mm512_storeu_si512(o + r * kCBOut + 64 * m, Q8I6Codes(raw, hv, m));
        _mm512_storeu_si512(o + r * kCBOut + 64 * (m + 4),
                            Q8I6Codes(_mm512_srli_epi16(raw, 4), hv, m + 4));
      }
    }
    std::memcpy(o + kR * kCBOut, u + kR * kCBIn, kR * 32);  // the f16 scales
  }
}
#endif  // HWY_TARGET == HWY_AVX3_DL

// Portable version of the tile (same arithmetic: exact int32 block sums, then per lane
// acc = fma(float(S), d_w * d_a, acc), lanes summed 0..15 in order).
template <WType kT>
static void Q8TilePortable(const uint8_t* HWY_RESTRICT w, size_t nsb, size_t U,
                           const int8_t* const* aq, const float* const* ad,
                           const int32_t* const* as, float* HWY_RESTRICT res) {
  static_assert(kT == WType::kI6Sym, "the portable tile reads the packed I6 layout");
  constexpr size_t kCB = Q8CodeBytes(kT);
  constexpr size_t kUnit = Q8UnitBytes(kT);
  constexpr int32_t kBias = 32;
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
              const uint8_t byte = wr[64 * (s % 4) + 4 * j + i];
              const uint8_t hv = wr[256 + 64 * ((s % 4) / 2) + 4 * j + i];
              const int32_t wu = (s < 4 ? (byte & 0x0F) : (byte >> 4)) |
                                 (((hv >> Q8I6PairShift(s)) & 3) << 4);
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

template <WType kT>
static void MatMulQ8T(const Q8Weights& w, const Q8Acts& a, size_t T, float* y, size_t ldy,
                      size_t rb_begin, size_t rb_end) {
  constexpr size_t kUnit = Q8UnitBytes(kT);
  constexpr size_t kMaxU = 3;
  const size_t nsb = w.Kp / kQ8Super;
  const size_t nb = w.Kp / kQ8Block;
  const size_t rb_bytes = nsb * kUnit;
#if HWY_TARGET == HWY_AVX3_DL
  // I6 with many token tiles: each row block unpacked once (Q8UnpackI6RowBlock). kernels_bench
  // 4096 x 4096 (time per call, unpack-once vs rebuilding the codes in every tile): T = 4 1.01x,
  // 8 1.03x, 16 1.05x (slower), T = 32 0.81x, 64 0.76x.
  uint8_t* i6bytes = kT == WType::kI6Sym && T > 16
                         ? Scratch<uint8_t, 1>(nsb * Q8UnitBytes(WType::kI8))
                         : nullptr;
#endif
  for (size_t rb = rb_begin; rb < rb_end; ++rb) {
    const uint8_t* wrb = w.data + rb * rb_bytes;
    const size_t r0 = rb * kQ8RowBlock;
    const size_t nr = (w.rows - r0 < kQ8RowBlock) ? w.rows - r0 : kQ8RowBlock;
    // Token tiles of at most kMaxU, balanced (8 -> 3 + 3 + 2); after the first tile the row
    // block is read from L1. The last row block of the range prefetches nothing.
    const size_t tiles = (T + kMaxU - 1) / kMaxU;
    for (size_t k = 0, t0 = 0; k < tiles; ++k) {
      const size_t U = (T - t0 + (tiles - k) - 1) / (tiles - k);
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
      // The next row block's lines, split evenly over this block's tiles x superblocks (one
      // row block ahead; measured faster than two units ahead in the first tile only).
      const size_t pf_step = (rb_bytes / tiles / nsb + 63) / 64 * 64;
      const size_t pf_off = std::min(k * pf_step * nsb, rb_bytes);
      const size_t pf_bytes = rb + 1 < rb_end ? rb_bytes - pf_off : 0;
      const uint8_t* pf = pf_bytes > 0 ? wrb + rb_bytes + pf_off : wrb;
      if (i6bytes != nullptr) {
        if (k == 0) Q8UnpackI6RowBlock(wrb, nsb, i6bytes);
        Q8TileVnniU<WType::kI8, Q8BiasShift(WType::kI6Sym)>(U, i6bytes, nsb, aq, ad, as, pf,
                                                             pf_step, pf_bytes, res);
      } else {
        Q8TileVnniU<kT>(U, wrb, nsb, aq, ad, as, pf, pf_step, pf_bytes, res);
      }
#else
      Q8TilePortable<kT>(wrb, nsb, U, aq, ad, as, res);
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
  if (T == 0 || rb_begin >= rb_end || w.type != WType::kI6Sym) return;
  MatMulQ8T<WType::kI6Sym>(w, a, T, y, ldy, rb_begin, rb_end);
}

HWY_MAYBE_UNUSED static bool Q8Fast() { return HWY_TARGET == HWY_AVX3_DL; }

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_Q8_INL_H_
