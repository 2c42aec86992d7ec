// Dynamic-dispatch entry point of the row-interleaved int8-activation GEMM, plus the (scalar,
// load-time) repacking of I4 sym / I8 weights into its layout (gemm.h).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quantizer/kernels/gemm.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "quantizer/kernels/gemm-inl.h"

#if HWY_ONCE
#include <cstring>

#include "quantizer/kernels/gemm.h"

namespace tessera::kernels {

HWY_EXPORT(MatMulGemm);

void MatMulGemm(const Q8Weights& w, const uint8_t* panel, size_t T, float* y, size_t ldy,
                size_t g_begin, size_t g_end) {
  HWY_DYNAMIC_DISPATCH(MatMulGemm)(w, panel, T, y, ldy, g_begin, g_end);
}

void BuildGemmPanel(const Q8Acts& a, size_t T, size_t tile_begin, size_t tile_end,
                    uint8_t* panel) {
  const size_t nb = a.Kp / kQ8Block, per_sb = kQ8Super / kQ8Block;
  size_t t0 = 0;
  for (size_t k = 0; k < tile_begin; ++k) t0 += GemmTileTokens(T, k, t0);
  for (size_t k = tile_begin; k < tile_end; ++k) {
    const size_t U = GemmTileTokens(T, k, t0);
    uint8_t* p = panel + GemmPanelBytes(t0) * nb;
    for (size_t u = 0; u < U; ++u) {
      const size_t t = t0 + u;
      const int8_t* qt = a.q + t * a.Kp;
      for (size_t b = 0; b < nb; ++b) {
        uint8_t* pb = p + b * GemmPanelBytes(U);
        const int32_t bias = -8 * a.sum[t * nb + b];
        std::memcpy(pb + 4 * u, &bias, 4);
        std::memcpy(pb + 4 * U + 4 * u, a.d + t * nb + b, 4);
        // Q8Acts slice layout: slice s of block b at superblock offset 64 s + 4 (b % 16).
        const int8_t* q = qt + (b / per_sb) * kQ8Super + (b % per_sb) * 4;
        for (size_t s = 0; s < 8; ++s) std::memcpy(pb + 8 * U + 4 * (s * U + u), q + 64 * s, 4);
      }
    }
    t0 += U;
  }
}

void BuildGemmAmxPanel(const Q8Acts& a, size_t T, size_t tile_begin, size_t tile_end, uint8_t* panel) {
  const size_t nb = a.Kp / kQ8Block, per_sb = kQ8Super / kQ8Block, bytes = GemmAmxPanelBytesPerBlock();
  for (size_t j = tile_begin; j < tile_end; ++j) {
    for (size_t b = 0; b < nb; ++b) {
      uint8_t* pb = panel + (j * nb + b) * bytes;
      float* d = reinterpret_cast<float*>(pb + 16 * 32);
      for (size_t u = 0; u < kGemmAmxTokens; ++u) {
        const size_t t = j * kGemmAmxTokens + u;
        if (t >= T) {
          std::memset(pb + 32 * u, 0, 32);
          d[u] = 0.0f;
          continue;
        }
        // Q8Acts slice layout: slice s of block b at superblock offset 64 s + 4 (b % 16).
        const int8_t* q = a.q + t * a.Kp + (b / per_sb) * kQ8Super + (b % per_sb) * 4;
        for (size_t s = 0; s < 8; ++s) std::memcpy(pb + 32 * u + 4 * s, q + 64 * s, 4);
        d[u] = a.d[t * nb + b];
      }
    }
  }
}

bool GemmSupported(const WeightMatrix& w) {
  return (w.type == WType::kI4Sym || w.type == WType::kI4Nl || w.type == WType::kI8) && Q8Supported(w);
}

size_t GemmRepackedBytes(const WeightMatrix& w) {
  return GemmGroups(w.rows) * (Q8PaddedK(w.cols) / kQ8Block) * GemmUnitBytes(w.type == WType::kI8);
}

void RepackGemm(const WeightMatrix& w, size_t g_begin, size_t g_end, uint8_t* out) {
  const bool i8 = w.type == WType::kI8;
  const size_t K = w.cols, G = w.group, ng = K / G, nb = Q8PaddedK(K) / kQ8Block;
  const size_t cb = GemmCodeBytes(i8), unit = GemmUnitBytes(i8);
  const uint8_t* codes = static_cast<const uint8_t*>(w.data);
  auto code = [&](size_t r, size_t k) { return Q8UnsignedCode(w, r, k); };
  for (size_t gi = g_begin; gi < g_end; ++gi) {
    for (size_t b = 0; b < nb; ++b) {
      uint8_t* u = out + (gi * nb + b) * unit;
      const size_t kb = b * kQ8Block;
      for (size_t ri = 0; ri < kGemmRows; ++ri) {
        const size_t r = gi * kGemmRows + ri;
        const uint16_t sc = (r < w.rows && kb < K) ? w.scales[r * ng + kb / G] : uint16_t{0};
        std::memcpy(u + cb + 2 * ri, &sc, 2);
        const bool full = r < w.rows && kb + kQ8Block <= K;
        if (full && !i8 && G == kQ8Block) {
          // Byte e of a 32-group holds elements e and e + 16: vector m takes bytes 4m .. 4m + 3.
          const uint8_t* src = codes + r * (K / 2) + kb / 2;
          for (size_t m = 0; m < 4; ++m) std::memcpy(u + 64 * m + 4 * ri, src + 4 * m, 4);
          continue;
        }
        for (size_t s = 0; s < (i8 ? 8u : 4u); ++s) {
          for (size_t i = 0; i < 4; ++i) {
            u[64 * s + 4 * ri + i] =
                i8 ? code(r, kb + 4 * s + i)
                   : static_cast<uint8_t>(code(r, kb + 4 * s + i) |
                                          (code(r, kb + 16 + 4 * s + i) << 4));
          }
        }
      }
    }
  }
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
