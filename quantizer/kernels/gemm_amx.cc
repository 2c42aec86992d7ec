// Intel AMX-INT8 version of the int8-activation GEMM for prefill (gemm.h: "AMX"). Not a Highway
// translation unit: Highway 1.0.3 has no AMX target, so the kernel is compiled for AMX + AVX-512
// by the pragma below and only called after GemmAmxAvailable() checked the CPU and the kernel.
// Everything that is not the kernel (includes, helpers) stays above the pragma, so no inline
// function of a shared header is compiled for AMX.
// GCC 12 flags its own _mm512_undefined_ps() (`__m512 __Y = __Y;`) as (maybe) uninitialized when
// the intrinsics are inlined under a target pragma at -O2: a false positive in the header.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/iq4nl.h"
#include "quantizer/kernels/gemm.h"

namespace tessera::kernels {
namespace {

constexpr size_t kBlockBytes = 16 * 32 + 16 * 4;  // one (token tile, block) of the AMX panel
static_assert(GemmAmxPanelBytesPerBlock() == kBlockBytes, "panel layout");

// Per thread: the row group's weights unpacked to signed bytes (B tiles) and its block scales.
struct Scratch {
  uint8_t* p = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(p); }
  uint8_t* Get(size_t n) {
    if (n > cap) {
      std::free(p);
      cap = (n + 4095) / 4096 * 4096;
      p = static_cast<uint8_t*>(std::aligned_alloc(64, cap));
      if (p == nullptr) cap = 0;
    }
    return p;
  }
};
thread_local Scratch tls_scratch;

// The 64-byte LDTILECFG operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool CpuHasAmxInt8() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_tile = (d >> 24) & 1, amx_int8 = (d >> 25) & 1;
  const bool avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1, avx512f = (b >> 16) & 1;
  return amx_tile && amx_int8 && avx512bw && avx512vl && avx512f;
}

bool CpuHasAmxBf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = (d >> 22) & 1;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  const bool avx512_bf16 = (a >> 5) & 1;
  return amx_bf16 && avx512_bf16;
}

}  // namespace

bool GemmAmxBf16Available() {
  static const bool ok = [] {
    const char* env = std::getenv("TESSERA_AMX");
    if (env != nullptr && std::strcmp(env, "int8") == 0) return false;
    return GemmAmxAvailable() && CpuHasAmxBf16();
  }();
  return ok;
}

bool GemmAmxAvailable() {
  static const bool ok = [] {
    const char* env = std::getenv("TESSERA_AMX");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    if (!CpuHasAmxInt8()) return false;
    // Linux hands out the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

#define TESSERA_AMX_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c,fma,amx-tile,amx-int8,amx-bf16"
// Lambdas do not inherit the pragma's target in every compiler: say it again.
#define TESSERA_AMX_ATTR __attribute__((target(TESSERA_AMX_TARGET)))
#define TESSERA_AMX_PRAGMA_(x) _Pragma(#x)
#define TESSERA_AMX_PRAGMA(x) TESSERA_AMX_PRAGMA_(x)  // expands TESSERA_AMX_TARGET first
#if defined(__clang__)
TESSERA_AMX_PRAGMA(clang attribute push(TESSERA_AMX_ATTR, apply_to = function))
#else
#pragma GCC push_options
TESSERA_AMX_PRAGMA(GCC target(TESSERA_AMX_TARGET))
#endif

namespace {

// The nibble -> signed byte table of an int4 type (in each 16-byte lane, for vpshufb).
__m512i NibbleLut(WType type) {
  alignas(64) int8_t lut_bytes[64];
  for (size_t i = 0; i < 64; ++i)
    lut_bytes[i] = static_cast<int8_t>(type == WType::kI4Nl ? int{tessera::kI4NlLevels[i % 16]} : int(i % 16) - 8);
  return _mm512_load_si512(lut_bytes);
}

// Row group g's units -> nb B tiles of signed bytes (8 rows x 64: slice s, byte 4 r + i =
// element 4 s + i of row r, the unit's own interleaving) followed by nb x 16 float block scales.
void UnpackGroup(const uint8_t* wg, size_t nb, WType type, __m512i lut, uint8_t* tiles, float* scales) {
  const bool i8 = type == WType::kI8;
  const size_t cb = GemmCodeBytes(i8), unit = GemmUnitBytes(i8);
  const __m512i m4 = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* u = wg + b * unit;
    uint8_t* t = tiles + b * 512;
    if (i8) {
      for (size_t s = 0; s < 8; ++s)
        _mm512_store_si512(t + 64 * s, _mm512_xor_si512(_mm512_loadu_si512(u + 64 * s), flip));
    } else {
      for (size_t m = 0; m < 4; ++m) {
        const __m512i raw = _mm512_loadu_si512(u + 64 * m);
        const __m512i lo = _mm512_and_si512(raw, m4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
        _mm512_store_si512(t + 64 * m, _mm512_shuffle_epi8(lut, lo));
        _mm512_store_si512(t + 64 * (4 + m), _mm512_shuffle_epi8(lut, hi));
      }
    }
    _mm512_store_ps(scales + 16 * b, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + cb))));
  }
}

}  // namespace

void MatMulGemmAmx(const Q8Weights& w, const uint8_t* panel, size_t T, float* y, size_t ldy, size_t g_begin,
                   size_t g_end) {
  if (T == 0 || g_begin >= g_end) return;
  const size_t nb = w.Kp / kQ8Block;
  const bool i8 = w.type == WType::kI8;
  const size_t unit = GemmUnitBytes(i8), gbytes = nb * unit;
  uint8_t* scratch = tls_scratch.Get(nb * (512 + 64));
  if (scratch == nullptr) std::abort();
  uint8_t* btiles = scratch;
  float* scales = reinterpret_cast<float*>(scratch + nb * 512);
  TileConfig cfg;
  for (int i = 0; i < 4; ++i) {  // C: 16 tokens x 16 rows, int32 (4 blocks)
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  for (int i = 4; i < 6; ++i) {  // A: 16 tokens x 32 int8 activations (one block)
    cfg.rows[i] = 16;
    cfg.colsb[i] = 32;
  }
  for (int i = 6; i < 8; ++i) {  // B: the block's 32 elements of 16 rows, 4 consecutive per int32
    cfg.rows[i] = 8;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
  const __m512i lut = NibbleLut(w.type);
  // C tiles of 4 consecutive blocks (tmm0..3) go to one half of cbuf while the f32 step reads the
  // other half (the previous 4 blocks): the tile stores' latency overlaps the vector work.
  alignas(64) int32_t cbuf[2][4][16 * 16];
  const size_t tiles = GemmAmxTiles(T);
  for (size_t g = g_begin; g < g_end; ++g) {
    const size_t r0 = g * kGemmRows;
    const size_t nr = w.rows - r0 < kGemmRows ? w.rows - r0 : kGemmRows;
    const __mmask16 mask = static_cast<__mmask16>((uint32_t{1} << nr) - 1);
    UnpackGroup(w.data + g * gbytes, nb, w.type, lut, btiles, scales);
    for (size_t j = 0; j < tiles; ++j) {
      const uint8_t* pj = panel + j * nb * kBlockBytes;
      __m512 acc[16];
#pragma GCC unroll 16
      for (size_t t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
      // The VNNI tile's arithmetic: acc = fma(float(S), d_w * d_a, acc), blocks in order.
      auto f32_step = [&](size_t b0, const int32_t (*c)[16 * 16]) TESSERA_AMX_ATTR {
        for (size_t q = 0; q < 4; ++q) {
          const __m512 dw = _mm512_load_ps(scales + 16 * (b0 + q));
          const float* da = reinterpret_cast<const float*>(pj + (b0 + q) * kBlockBytes + 16 * 32);
#pragma GCC unroll 16
          for (size_t t = 0; t < 16; ++t)
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[q] + 16 * t)),
                                     _mm512_mul_ps(dw, _mm512_set1_ps(da[t])), acc[t]);
        }
      };
      for (size_t b0 = 0; b0 < nb; b0 += 4) {  // nb is a multiple of 16 (Kp of whole superblocks)
        const uint8_t* pb = pj + b0 * kBlockBytes;
        const uint8_t* bt = btiles + b0 * 512;
        int32_t(*c)[16 * 16] = cbuf[(b0 / 4) % 2];
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        _tile_loadd(4, pb, 32);
        _tile_loadd(6, bt, 64);
        _tile_dpbssd(0, 4, 6);
        _tile_loadd(5, pb + kBlockBytes, 32);
        _tile_loadd(7, bt + 512, 64);
        _tile_dpbssd(1, 5, 7);
        _tile_loadd(4, pb + 2 * kBlockBytes, 32);
        _tile_loadd(6, bt + 1024, 64);
        _tile_dpbssd(2, 4, 6);
        _tile_loadd(5, pb + 3 * kBlockBytes, 32);
        _tile_loadd(7, bt + 1536, 64);
        _tile_dpbssd(3, 5, 7);
        if (j == 0 && g + 1 < g_end) {
          // The next row group's weights (from memory) arrive in cache while this one computes.
          const uint8_t* nx = w.data + (g + 1) * gbytes + b0 * unit;
          for (size_t o = 0; o < 4 * unit; o += 64) _mm_prefetch(reinterpret_cast<const char*>(nx + o), _MM_HINT_T1);
        }
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
        if (b0 > 0) f32_step(b0 - 4, cbuf[(b0 / 4 + 1) % 2]);
      }
      f32_step(nb - 4, cbuf[(nb / 4 + 1) % 2]);
      const size_t nt = T - 16 * j < 16 ? T - 16 * j : 16;
      for (size_t t = 0; t < nt; ++t) _mm512_mask_storeu_ps(y + (16 * j + t) * ldy + r0, mask, acc[t]);
    }
  }
  _tile_release();
}

namespace {

// Row group g's units -> nb B tiles of bf16 (block b at byte 1024 b: tile row p = elements 2 p,
// 2 p + 1 of block b, 4 bytes per row n: bf16(code * d) of row n). `i8tile`: 512 bytes of scratch.
void UnpackGroupBf16(const uint8_t* wg, size_t nb, WType type, __m512i lut, uint8_t* i8tile, uint8_t* tiles) {
  const size_t unit = GemmUnitBytes(type == WType::kI8);
  alignas(64) float sc[16];
  const __m512i rep0 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m512i four = _mm512_set1_epi32(4);
  const __m512i rep1 = _mm512_add_epi32(rep0, four), rep2 = _mm512_add_epi32(rep1, four),
                rep3 = _mm512_add_epi32(rep2, four);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (size_t b = 0; b < nb; ++b) {
    // The int8 tile of the block (slice s: 16 rows x elements 4 s .. 4 s + 3), then per slice the
    // two pair rows 2 s, 2 s + 1 of the bf16 tile.
    UnpackGroup(wg + b * unit, 1, type, lut, i8tile, sc);
    const __m512 d = _mm512_load_ps(sc);
    const __m512 d0 = _mm512_permutexvar_ps(rep0, d), d1 = _mm512_permutexvar_ps(rep1, d);
    const __m512 d2 = _mm512_permutexvar_ps(rep2, d), d3 = _mm512_permutexvar_ps(rep3, d);
    uint8_t* t = tiles + b * 1024;
#pragma GCC unroll 8
    for (size_t s = 0; s < 8; ++s) {
      const __m128i* src = reinterpret_cast<const __m128i*>(i8tile + 64 * s);
      const __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(src))), d0);
      const __m512 f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(src + 1))), d1);
      const __m512 f2 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(src + 2))), d2);
      const __m512 f3 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(src + 3))), d3);
      // Dword 2 r + h of lo (rows 0..7) / hi (rows 8..15): elements 4 s + 2 h, + 1 of row r.
      const __m512i lo = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f1, f0));
      const __m512i hi = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f3, f2));
      _mm512_store_si512(t + 64 * (2 * s), _mm512_permutex2var_epi32(lo, even, hi));
      _mm512_store_si512(t + 64 * (2 * s + 1), _mm512_permutex2var_epi32(lo, odd, hi));
    }
  }
}

// Software prefetch of up to two byte ranges (the next chunk's weights), a few lines per step,
// so the misses spread over the tile work instead of stalling on full fill buffers in one burst.
struct Prefetcher {
  int per_step = 0;  // lines per Step(): the ranges spread evenly over the chunk's block steps
  const char* p[2] = {nullptr, nullptr};
  const char* end[2] = {nullptr, nullptr};
  void Add(const uint8_t* b, size_t n, int i) {
    p[i] = reinterpret_cast<const char*>(b);
    end[i] = p[i] + n;
  }
  void Step() { Step(per_step); }
  void Step(int lines) {
    for (int i = 0; i < 2; ++i) {
      for (; lines > 0 && p[i] < end[i]; --lines, p[i] += 64) _mm_prefetch(p[i], _MM_HINT_T0);
    }
  }
  void Drain() { Step(1 << 30); }
};

// Blocks [kc, kc + kb) of token tiles j (and j + 1 with TWO_J) x the row-group pair's B tiles bt0
// (and bt1 with TWO_G): tiles C 0..3 = (j, g), (j, g+1), (j+1, g), (j+1, g+1), A 4, 5, B 6, 7.
// The f32 sums live in acc (tile (j, h) at acc + 256 (2 j + h), 64-byte rows) between chunks.
template <bool TWO_J, bool TWO_G>
void Bf16Chunk(const uint8_t* panel, size_t nb, size_t j, size_t kc, size_t kb, const uint8_t* bt0,
               const uint8_t* bt1, float* acc, bool first, Prefetcher& pf) {
  float* c = acc + 512 * j;
  if (first) {
    _tile_zero(0);
    if (TWO_G) _tile_zero(1);
    if (TWO_J) _tile_zero(2);
    if (TWO_J && TWO_G) _tile_zero(3);
  } else {
    _tile_loadd(0, c, 64);
    if (TWO_G) _tile_loadd(1, c + 256, 64);
    if (TWO_J) _tile_loadd(2, c + 512, 64);
    if (TWO_J && TWO_G) _tile_loadd(3, c + 768, 64);
  }
  const uint8_t* a0 = panel + (j * nb + kc) * 1024;
  const uint8_t* a1 = a0 + nb * 1024;
  for (size_t b = 0; b < kb; ++b) {
    pf.Step();
    _tile_loadd(4, a0 + b * 1024, 64);
    _tile_loadd(6, bt0 + b * 1024, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (TWO_G) {
      _tile_loadd(7, bt1 + b * 1024, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if (TWO_J) {
      _tile_loadd(5, a1 + b * 1024, 64);
      _tile_dpbf16ps(2, 5, 6);
      if (TWO_G) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, 64);
  if (TWO_G) _tile_stored(1, c + 256, 64);
  if (TWO_J) _tile_stored(2, c + 512, 64);
  if (TWO_J && TWO_G) _tile_stored(3, c + 768, 64);
}

template <bool TWO_G>
void Bf16ChunkAllTiles(const uint8_t* panel, size_t nb, size_t tiles, size_t kc, size_t kb, const uint8_t* bt0,
                       const uint8_t* bt1, float* acc, bool first, Prefetcher& pf) {
  size_t j = 0;
  for (; j + 2 <= tiles; j += 2) Bf16Chunk<true, TWO_G>(panel, nb, j, kc, kb, bt0, bt1, acc, first, pf);
  if (j < tiles) Bf16Chunk<false, TWO_G>(panel, nb, j, kc, kb, bt0, bt1, acc, first, pf);
  pf.Drain();
}

// Blocks per chunk: a chunk's B tiles of two row groups (2 x 8 KiB) stay in L1 while every token
// tile pair streams its 2 x 8 KiB of the panel past them.
constexpr size_t kBf16ChunkBlocks = 8;

}  // namespace

void BuildGemmAmxBf16Panel(const float* x, size_t ldx, size_t K, size_t Kp, size_t T, size_t tile_begin,
                           size_t tile_end, uint8_t* panel) {
  const size_t nb = Kp / kQ8Block;
  for (size_t j = tile_begin; j < tile_end; ++j) {
    for (size_t u = 0; u < kGemmAmxTokens; ++u) {
      const size_t t = j * kGemmAmxTokens + u;
      const float* xt = x + t * ldx;
      for (size_t b = 0; b < nb; ++b) {
        uint8_t* dst = panel + ((j * nb + b) * 16 + u) * 64;
        const size_t k0 = b * kQ8Block;
        if (t >= T || k0 >= K) {
          _mm512_storeu_si512(dst, _mm512_setzero_si512());
          continue;
        }
        const size_t n = K - k0 < 32 ? K - k0 : 32;
        const __mmask16 m0 = static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1);
        const __mmask16 m1 = static_cast<__mmask16>(n >= 32 ? 0xFFFF : n <= 16 ? 0 : (1u << (n - 16)) - 1);
        const __m512 lo = _mm512_maskz_loadu_ps(m0, xt + k0), hi = _mm512_maskz_loadu_ps(m1, xt + k0 + 16);
        _mm512_storeu_si512(dst, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
      }
    }
  }
}

void MatMulGemmAmxBf16(const Q8Weights& w, const uint8_t* panel, size_t T, float* y, size_t ldy, size_t g_begin,
                       size_t g_end) {
  if (T == 0 || g_begin >= g_end) return;
  const size_t nb = w.Kp / kQ8Block, tiles = GemmAmxTiles(T), kc_max = kBf16ChunkBlocks;
  const size_t unit = GemmUnitBytes(w.type == WType::kI8), gbytes = nb * unit;
  uint8_t* scratch = tls_scratch.Get(512 + 2 * kc_max * 1024 + (tiles + 1) / 2 * 4096);
  if (scratch == nullptr) std::abort();
  uint8_t* i8tile = scratch;
  uint8_t* bt0 = scratch + 512;
  uint8_t* bt1 = bt0 + kc_max * 1024;
  float* acc = reinterpret_cast<float*>(bt1 + kc_max * 1024);
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {  // every tile: 16 rows x 64 bytes
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
  const __m512i lut = NibbleLut(w.type);
  for (size_t g = g_begin; g < g_end; g += 2) {
    const bool two_g = g + 1 < g_end;
    for (size_t kc = 0; kc < nb; kc += kc_max) {
      const size_t kb = nb - kc < kc_max ? nb - kc : kc_max;
      // The next chunk's weights (this pair's, or the next pair's first) are fetched from memory
      // while this chunk computes, a few lines per block step (1.1B int8 pp128: +15 % over no
      // prefetch with the whole chunk at once, +15 % more spread out).
      Prefetcher pf;
      const size_t kn = kc + kc_max;
      for (size_t h = 0; h < (two_g ? 2u : 1u); ++h) {
        const uint8_t* nx = kn < nb ? w.data + (g + h) * gbytes + kn * unit
                            : g + 2 + h < g_end ? w.data + (g + 2 + h) * gbytes : nullptr;
        if (nx != nullptr) pf.Add(nx, kb * unit, static_cast<int>(h));
      }
      const size_t steps = (tiles + 1) / 2 * kb, lines = 2 * kb * unit / 64 + 2;
      pf.per_step = static_cast<int>((lines + steps - 1) / steps);
      UnpackGroupBf16(w.data + g * gbytes + kc * unit, kb, w.type, lut, i8tile, bt0);
      if (two_g) UnpackGroupBf16(w.data + (g + 1) * gbytes + kc * unit, kb, w.type, lut, i8tile, bt1);
      if (two_g)
        Bf16ChunkAllTiles<true>(panel, nb, tiles, kc, kb, bt0, bt1, acc, kc == 0, pf);
      else
        Bf16ChunkAllTiles<false>(panel, nb, tiles, kc, kb, bt0, bt1, acc, kc == 0, pf);
    }
    for (size_t h = 0; h < (two_g ? 2u : 1u); ++h) {
      const size_t r0 = 16 * (g + h);
      const size_t nr = w.rows - r0 < 16 ? w.rows - r0 : 16;
      const __mmask16 mask = static_cast<__mmask16>((uint32_t{1} << nr) - 1);
      for (size_t t = 0; t < T; ++t)
        _mm512_mask_storeu_ps(y + t * ldy + r0, mask, _mm512_load_ps(acc + 256 * (2 * (t / 16) + h) + 16 * (t % 16)));
    }
  }
  _tile_release();
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

}  // namespace tessera::kernels
