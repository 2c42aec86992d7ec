// Per-target int8-activation GEMM on row-interleaved weights (layout and arithmetic in gemm.h):
// AVX512-VNNI tiles of 16 rows x U tokens on AVX3_DL, a portable scalar loop with the same
// arithmetic (bit-identical results) on the other targets.
#if defined(TESSERA_KERNELS_GEMM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_GEMM_INL_H_
#undef TESSERA_KERNELS_GEMM_INL_H_
#else
#define TESSERA_KERNELS_GEMM_INL_H_
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/half.h"
#include "core/iq4nl.h"
#include "hwy/highway.h"
#include "quantizer/kernels/gemm.h"
#include "quantizer/kernels/kernels.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {

// Decode prefetch distance in bytes (kernels_bench Int8Act 32000x2048 T1, weights from memory:
// 1-2 KiB no faster than the hardware prefetcher alone, 8-16 KiB about 1.3x), into L2 (T1), not
// L1: 1.1B int4 decode on 2 threads (Xeon) 46.3 -> 50.9 tok/s; T2 the same as T1, 16 KiB the same
// as 8 KiB.
constexpr size_t kGemmPrefetch = 8192;
constexpr auto kGemmPrefetchHint = _MM_HINT_T1;

#if HWY_TARGET == HWY_AVX3_DL
// I4 nl's byte table: nibble -> level + 128 (unsigned, as I8's codes), the same 16 bytes in each
// 128-bit lane (a vpshufb operand).
__attribute__((target(HWY_TARGET_STR ",avx512vnni"))) HWY_INLINE __m512i GemmNlLut() {
  alignas(64) uint8_t t[64];
  for (size_t i = 0; i < 64; ++i) t[i] = static_cast<uint8_t>(tessera::kI4NlLevels[i % 16] + 128);
  return _mm512_load_si512(t);
}

// One row group x kU tokens over all nb blocks (p: the tile's panel). Per block: the 8 weight
// vectors (I4: 4 loads, low / high nibbles) and the 16 row scales are loaded once and used for
// the kU tokens; each token's 4 activation bytes of a slice are a broadcast memory operand of
// vpdpbusd. Per token one int32 chain started at the bias (two chains, added exactly, when
// kU == 1), then one convert, one multiply and one FMA into the token's f32 accumulator (16
// rows). Registers: 8 weights + mask + scales + 2 kU accumulators (kU = 8: about 28 zmm).
// The target attribute: see Q8TileVnni in q8-inl.h (GCC merges it with the namespace pragma).
template <size_t kU, bool kI8, bool kNl>
__attribute__((target(HWY_TARGET_STR ",avx512vnni"))) static void GemmTileVnni(
    const uint8_t* HWY_RESTRICT w, size_t nb, const uint8_t* HWY_RESTRICT p, float* y,
    size_t ldy, size_t nr) {
  constexpr size_t kUnit = GemmUnitBytes(kI8);
  constexpr size_t kCB = GemmCodeBytes(kI8);
  constexpr size_t kC = kU == 1 ? 2 : 1;
  constexpr size_t kPB = GemmPanelBytes(kU);
  const __mmask16 mask = static_cast<__mmask16>((uint32_t{1} << nr) - 1);
  __m512 acc[kU];
#pragma GCC unroll 8
  for (size_t u = 0; u < kU; ++u) acc[u] = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i lut = kNl ? GemmNlLut() : _mm512_setzero_si512();
  for (size_t b = 0; b < nb; ++b, w += kUnit, p += kPB) {
    if (kU == 1) {
      // Decode streams the weights from memory: request them kGemmPrefetch bytes ahead (row
      // groups are contiguous, so this runs on into the next group).
      for (size_t o = 0; o < kUnit; o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w + kGemmPrefetch + o), kGemmPrefetchHint);
    }
    __m512i wv[8];
    if (kI8) {
#pragma GCC unroll 8
      for (size_t s = 0; s < 8; ++s) wv[s] = _mm512_loadu_si512(w + 64 * s);
    } else {
#pragma GCC unroll 4
      for (size_t m = 0; m < 4; ++m) {
        const __m512i raw = _mm512_loadu_si512(w + 64 * m);
        wv[m] = _mm512_and_si512(raw, m4);
        wv[m + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
        if (kNl) {
          wv[m] = _mm512_shuffle_epi8(lut, wv[m]);
          wv[m + 4] = _mm512_shuffle_epi8(lut, wv[m + 4]);
        }
      }
    }
    const __m512 dw =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kCB)));
    // kU independent int32 chains (two per token when kU == 1), slice by slice.
    __m512i ia[kU * kC];
#pragma GCC unroll 8
    for (size_t u = 0; u < kU; ++u) {
      const __m512i bias = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(p + 4 * u));
      ia[u * kC] = (kI8 || kNl) ? _mm512_slli_epi32(bias, 4) : bias;  // -128 sum = 16 (-8 sum)
      if (kC == 2) ia[u * kC + 1] = _mm512_setzero_si512();
    }
#pragma GCC unroll 8
    for (size_t s = 0; s < 8; ++s) {
#pragma GCC unroll 8
      for (size_t u = 0; u < kU; ++u) {
        __m512i& c = ia[u * kC + s % kC];
        asm("vpdpbusd %2%{1to16%}, %1, %0"
            : "+v"(c)
            : "v"(wv[s]), "m"(*reinterpret_cast<const int32_t*>(p + 8 * kU + 4 * (s * kU + u))));
      }
    }
#pragma GCC unroll 8
    for (size_t u = 0; u < kU; ++u) {
      const __m512i S =
          kC == 2 ? _mm512_add_epi32(ia[u * kC], ia[u * kC + kC - 1]) : ia[u * kC];
      const __m512 da = _mm512_set1_ps(*reinterpret_cast<const float*>(p + 4 * kU + 4 * u));
      acc[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S), _mm512_mul_ps(dw, da), acc[u]);
    }
  }
#pragma GCC unroll 8
  for (size_t u = 0; u < kU; ++u) _mm512_mask_storeu_ps(y + u * ldy, mask, acc[u]);
}

// Two row groups x 4 tokens (p: a full panel tile of kGemmMaxU tokens, advanced by 4 u0 bytes for
// tokens u0 .. u0 + 3; the tile's offsets are then the same for both halves): each
// activation broadcast is loaded into a register once and feeds 32 rows (GemmTileVnni's memory
// operand feeds 16), halving the loads per vpdpbusd. Per (row, token, block) the same int32
// chain (bias first, slices 0..7) and the same convert / multiply / FMA as GemmTileVnni: the
// results are bit-identical. Registers: 2 x 4 int32 chains + 2 x 4 f32 accumulators + 4
// broadcasts + 2 weight vectors (+ 2 raw vectors for I4).
template <bool kI8, bool kNl>
__attribute__((target(HWY_TARGET_STR ",avx512vnni"))) static void GemmTileVnni2x4(
    const uint8_t* HWY_RESTRICT w0, size_t nb, const uint8_t* HWY_RESTRICT p, float* y, size_t ldy,
    size_t nr1) {
  constexpr size_t kUnit = GemmUnitBytes(kI8);
  constexpr size_t kCB = GemmCodeBytes(kI8);
  constexpr size_t kU = kGemmMaxU;
  constexpr size_t kPB = GemmPanelBytes(kU);
  const uint8_t* HWY_RESTRICT w1 = w0 + nb * kUnit;
  const __mmask16 mask1 = static_cast<__mmask16>((uint32_t{1} << nr1) - 1);
  __m512 acc0[4], acc1[4];
#pragma GCC unroll 4
  for (size_t u = 0; u < 4; ++u) acc0[u] = acc1[u] = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i lut = kNl ? GemmNlLut() : _mm512_setzero_si512();
  for (size_t b = 0; b < nb; ++b, w0 += kUnit, w1 += kUnit, p += kPB) {
    __m512i ia0[4], ia1[4];
#pragma GCC unroll 4
    for (size_t u = 0; u < 4; ++u) {
      const __m512i bias = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(p + 4 * u));
      ia0[u] = ia1[u] = (kI8 || kNl) ? _mm512_slli_epi32(bias, 4) : bias;
    }
#pragma GCC unroll 8
    for (size_t s = 0; s < 8; ++s) {
      __m512i wa, wb;
      if (kI8) {
        wa = _mm512_loadu_si512(w0 + 64 * s);
        wb = _mm512_loadu_si512(w1 + 64 * s);
      } else {
        const __m512i ra = _mm512_loadu_si512(w0 + 64 * (s % 4));
        const __m512i rb = _mm512_loadu_si512(w1 + 64 * (s % 4));
        wa = _mm512_and_si512(s < 4 ? ra : _mm512_srli_epi16(ra, 4), m4);
        wb = _mm512_and_si512(s < 4 ? rb : _mm512_srli_epi16(rb, 4), m4);
        if (kNl) {
          wa = _mm512_shuffle_epi8(lut, wa);
          wb = _mm512_shuffle_epi8(lut, wb);
        }
      }
#pragma GCC unroll 4
      for (size_t u = 0; u < 4; ++u) {
        const __m512i a =
            _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(p + 8 * kU + 4 * (s * kU + u)));
        asm("vpdpbusd %1, %2, %0" : "+v"(ia0[u]) : "v"(a), "v"(wa));
        asm("vpdpbusd %1, %2, %0" : "+v"(ia1[u]) : "v"(a), "v"(wb));
      }
    }
    const __m512 dw0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + kCB)));
    const __m512 dw1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + kCB)));
#pragma GCC unroll 4
    for (size_t u = 0; u < 4; ++u) {
      const __m512 da = _mm512_set1_ps(*reinterpret_cast<const float*>(p + 4 * kU + 4 * u));
      acc0[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia0[u]), _mm512_mul_ps(dw0, da), acc0[u]);
      acc1[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia1[u]), _mm512_mul_ps(dw1, da), acc1[u]);
    }
  }
#pragma GCC unroll 4
  for (size_t u = 0; u < 4; ++u) {
    _mm512_storeu_ps(y + u * ldy, acc0[u]);
    _mm512_mask_storeu_ps(y + u * ldy + kGemmRows, mask1, acc1[u]);
  }
}

template <bool kI8, bool kNl>
static void GemmTileVnniU(size_t U, const uint8_t* w, size_t nb, const uint8_t* p, float* y,
                          size_t ldy, size_t nr) {
  switch (U) {
    case 8: GemmTileVnni<8, kI8, kNl>(w, nb, p, y, ldy, nr); break;
    case 7: GemmTileVnni<7, kI8, kNl>(w, nb, p, y, ldy, nr); break;
    case 6: GemmTileVnni<6, kI8, kNl>(w, nb, p, y, ldy, nr); break;
    case 5: GemmTileVnni<5, kI8, kNl>(w, nb, p, y, ldy, nr); break;
    case 4: GemmTileVnni<4, kI8, kNl>(w, nb, p, y, ldy, nr); break;
    case 3: GemmTileVnni<3, kI8, kNl>(w, nb, p, y, ldy, nr); break;
    case 2: GemmTileVnni<2, kI8, kNl>(w, nb, p, y, ldy, nr); break;
    default: GemmTileVnni<1, kI8, kNl>(w, nb, p, y, ldy, nr); break;
  }
}
static_assert(kGemmMaxU == 8, "GemmTileVnniU instantiates U = 1..8");
#endif  // HWY_TARGET == HWY_AVX3_DL

// Portable version of the tile: the same arithmetic, element by element.
template <bool kI8, bool kNl>
static void GemmTilePortable(const uint8_t* HWY_RESTRICT w, size_t nb, size_t U,
                             const uint8_t* HWY_RESTRICT p, float* y, size_t ldy, size_t nr) {
  constexpr size_t kUnit = GemmUnitBytes(kI8);
  constexpr size_t kCB = GemmCodeBytes(kI8);
  for (size_t u = 0; u < U; ++u) {
    for (size_t r = 0; r < nr; ++r) {
      float acc = 0.0f;
      for (size_t b = 0; b < nb; ++b) {
        const uint8_t* wb = w + b * kUnit;
        const uint8_t* pb = p + b * GemmPanelBytes(U);
        int32_t S;
        float da;
        std::memcpy(&S, pb + 4 * u, 4);
        if (kI8 || kNl) S *= 16;
        std::memcpy(&da, pb + 4 * U + 4 * u, 4);
        for (size_t s = 0; s < 8; ++s) {
          for (size_t i = 0; i < 4; ++i) {
            int32_t wu;
            if (kI8) {
              wu = wb[64 * s + 4 * r + i];
            } else {
              const uint8_t byte = wb[64 * (s % 4) + 4 * r + i];
              wu = s < 4 ? (byte & 0x0F) : (byte >> 4);
              if (kNl) wu = tessera::kI4NlLevels[wu] + 128;
            }
            S += wu * static_cast<int8_t>(pb[8 * U + 4 * (s * U + u) + i]);
          }
        }
        uint16_t h;
        std::memcpy(&h, wb + kCB + 2 * r, 2);
        const float scale = tessera::F16ToF32(h) * da;
        acc = std::fma(static_cast<float>(S), scale, acc);
      }
      y[u * ldy + r] = acc;
    }
  }
}

template <bool kI8, bool kNl>
static void MatMulGemmT(const Q8Weights& w, const uint8_t* panel, size_t T, float* y, size_t ldy,
                        size_t g_begin, size_t g_end) {
  const size_t nb = w.Kp / kQ8Block;
  const size_t gbytes = nb * GemmUnitBytes(kI8);
  const size_t tiles = GemmTiles(T);
  for (size_t g = g_begin; g < g_end; ++g) {
    const uint8_t* wg = w.data + g * gbytes;
    const size_t r0 = g * kGemmRows;
    const size_t nr = w.rows - r0 < kGemmRows ? w.rows - r0 : kGemmRows;
#if HWY_TARGET == HWY_AVX3_DL
    if (T >= 2 * kGemmMaxU && g + 1 < g_end) {
      // Prefill: row groups in pairs, full token tiles as two 2 x 4 tiles.
      const size_t nr1 = w.rows - (r0 + kGemmRows) < kGemmRows ? w.rows - (r0 + kGemmRows) : kGemmRows;
      for (size_t k = 0, t0 = 0; k < tiles; ++k) {
        const size_t U = GemmTileTokens(T, k, t0);
        const uint8_t* p = panel + GemmPanelBytes(t0) * nb;
        if (U == kGemmMaxU) {
          GemmTileVnni2x4<kI8, kNl>(wg, nb, p, y + t0 * ldy + r0, ldy, nr1);
          GemmTileVnni2x4<kI8, kNl>(wg, nb, p + 16, y + (t0 + 4) * ldy + r0, ldy, nr1);
        } else {
          GemmTileVnniU<kI8, kNl>(U, wg, nb, p, y + t0 * ldy + r0, ldy, kGemmRows);
          GemmTileVnniU<kI8, kNl>(U, wg + gbytes, nb, p, y + t0 * ldy + r0 + kGemmRows, ldy, nr1);
        }
        t0 += U;
      }
      ++g;
      continue;
    }
#endif
    // The row group's weights come from memory for the first token tile, from cache for the
    // others (measured: splitting K into chunks so that they stay in L1 was slower).
    for (size_t k = 0, t0 = 0; k < tiles; ++k) {
      const size_t U = GemmTileTokens(T, k, t0);
      const uint8_t* p = panel + GemmPanelBytes(t0) * nb;
#if HWY_TARGET == HWY_AVX3_DL
      GemmTileVnniU<kI8, kNl>(U, wg, nb, p, y + t0 * ldy + r0, ldy, nr);
#else
      GemmTilePortable<kI8, kNl>(wg, nb, U, p, y + t0 * ldy + r0, ldy, nr);
#endif
      t0 += U;
    }
  }
}

HWY_MAYBE_UNUSED static void MatMulGemm(const Q8Weights& w, const uint8_t* panel, size_t T,
                                        float* y, size_t ldy, size_t g_begin, size_t g_end) {
  if (T == 0 || g_begin >= g_end) return;
  if (w.type == WType::kI8) {
    MatMulGemmT<true, false>(w, panel, T, y, ldy, g_begin, g_end);
  } else if (w.type == WType::kI4Nl) {
    MatMulGemmT<false, true>(w, panel, T, y, ldy, g_begin, g_end);
  } else {
    MatMulGemmT<false, false>(w, panel, T, y, ldy, g_begin, g_end);
  }
}

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_GEMM_INL_H_
