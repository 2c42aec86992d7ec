// Dynamic-dispatch entry points of the int8-activation kernels, plus the (scalar, load-time)
// repacking of I6 sym weights into the runtime layout described in kernels.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quantizer/kernels/q8.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "quantizer/kernels/q8-inl.h"

#if HWY_ONCE
#include <algorithm>
#include <cstring>
#include <vector>

#include "quantizer/kernels/kernels.h"

namespace tessera::kernels {

HWY_EXPORT(QuantizeActsQ8);
HWY_EXPORT(MatMulQ8);
HWY_EXPORT(Q8Fast);

void QuantizeActsQ8(const float* x, size_t ldx, size_t K, const Q8Acts& a, size_t t_begin,
                    size_t t_end) {
  HWY_DYNAMIC_DISPATCH(QuantizeActsQ8)(x, ldx, K, a, t_begin, t_end);
}

void MatMulQ8(const Q8Weights& w, const Q8Acts& a, size_t T, float* y, size_t ldy,
              size_t rb_begin, size_t rb_end) {
  HWY_DYNAMIC_DISPATCH(MatMulQ8)(w, a, T, y, ldy, rb_begin, rb_end);
}

bool Q8Fast() { return HWY_DYNAMIC_DISPATCH(Q8Fast)(); }

bool Q8Supported(const WeightMatrix& w) {
  if (w.type != WType::kI4Sym && w.type != WType::kI4Nl && w.type != WType::kI6Sym && w.type != WType::kI8)
    return false;
  if (w.group == 0 || w.group % kQ8Block != 0 || w.cols % w.group != 0) return false;
  if ((w.type == WType::kI4Sym || w.type == WType::kI4Nl) && w.group % 2 != 0) return false;
  return w.rows > 0 && w.cols > 0 && w.data != nullptr && w.scales != nullptr;
}

namespace {
// I6 sym: 6 x 64 code bytes per (row, superblock), then the rows' 16 f16 block scales each.
constexpr size_t kI6Unit = kQ8RowBlock * 384 + kQ8RowBlock * 16 * 2;

// I6 sym: row blocks [rb_begin, rb_end) of w (layout in kernels.h). Each row is unpacked once
// to codes c (0..63; padding 32 = zero weight), then scattered into its units.
void RepackQ8I6(const WeightMatrix& w, size_t rb_begin, size_t rb_end, uint8_t* out) {
  const size_t K = w.cols, G = w.group, ng = K / G, Kp = Q8PaddedK(K);
  const size_t nsb = Kp / kQ8Super, unit = kI6Unit, half = G / 2, quarter = G / 4;
  const uint8_t* codes = static_cast<const uint8_t*>(w.data);
  std::vector<uint8_t> c(Kp);
  for (size_t rb = rb_begin; rb < rb_end; ++rb) {
    for (size_t ri = 0; ri < kQ8RowBlock; ++ri) {
      const size_t r = rb * kQ8RowBlock + ri;
      std::fill(c.begin(), c.end(), uint8_t{32});
      if (r < w.rows) {
        for (size_t g = 0; g < ng; ++g) {
          const uint8_t* lo = codes + r * (3 * K / 4) + g * (3 * G / 4);
          const uint8_t* hi = lo + half;
          uint8_t* cg = c.data() + g * G;
          for (size_t p = 0; p < 4; ++p) {
            for (size_t j = 0; j < quarter; ++j) {
              const size_t e = p * quarter + j;
              const int l = p < 2 ? (lo[e] & 0x0F) : (lo[e - half] >> 4);
              cg[e] = static_cast<uint8_t>(l | (((hi[j] >> (2 * p)) & 3) << 4));
            }
          }
        }
      }
      for (size_t sb = 0; sb < nsb; ++sb) {
        uint8_t* u = out + (rb * nsb + sb) * unit;
        uint8_t* v = u + ri * 384;
        for (size_t j = 0; j < 16; ++j) {
          const size_t kb = sb * kQ8Super + j * kQ8Block;
          const uint16_t sc = (r < w.rows && kb < K) ? w.scales[r * ng + kb / G] : uint16_t{0};
          std::memcpy(u + kQ8RowBlock * 384 + ri * 32 + j * 2, &sc, 2);
          const uint8_t* cb = c.data() + kb;  // element 4 s + i of the block is slice s, byte i
          for (size_t i = 0; i < 4; ++i) {
            const size_t o = 4 * j + i;
            for (size_t m = 0; m < 4; ++m)
              v[64 * m + o] = static_cast<uint8_t>((cb[4 * m + i] & 0x0F) | ((cb[4 * (m + 4) + i] & 0x0F) << 4));
            for (size_t h = 0; h < 2; ++h) {
              const int s0 = static_cast<int>(2 * h);
              v[64 * (4 + h) + o] = static_cast<uint8_t>((cb[4 * s0 + i] >> 4) | ((cb[4 * (s0 + 4) + i] >> 4) << 2) |
                                                         ((cb[4 * (s0 + 1) + i] >> 4) << 4) |
                                                         ((cb[4 * (s0 + 5) + i] >> 4) << 6));
            }
          }
        }
      }
    }
  }
}
}  // namespace

size_t Q8RepackedBytes(const WeightMatrix& w) {
  const size_t rbs = (w.rows + kQ8RowBlock - 1) / kQ8RowBlock;
  return rbs * (Q8PaddedK(w.cols) / kQ8Super) * kI6Unit;
}

void RepackQ8(const WeightMatrix& w, size_t rb_begin, size_t rb_end, uint8_t* out) {
  if (w.type == WType::kI6Sym) RepackQ8I6(w, rb_begin, rb_end, out);
}

}  // namespace tessera::kernels
#endif  // HWY_ONCE
