// Int8-activation GEMM on row-interleaved weights (the runtime layout of I4 sym / I4 nl / I8 matrices on
// the int8-activation path, every T from decode to prefill). Activations are the Q8Acts of
// kernels.h (QuantizeActsQ8, slice layout); only the weight layout differs from MatMulQ8's.
//
// Row group = 16 consecutive rows (the 16 i32 lanes of a zmm). Per row group and block b of 32
// elements (blocks of the padded K, Kp / 32 of them) one unit, units stored group-major:
//   I4 sym: 4 x 64 bytes; vector m (0..3), byte 4 r + i: low nibble = element 32 b + 4 m + i of
//           row r (code q in 0..15, w = (q - 8) * d), high nibble = element 32 b + 16 + 4 m + i.
//   I4 nl:  as I4 sym; the tile maps each nibble q to kI4NlLevels[q] + 128 (one byte shuffle),
//           so w = kI4NlLevels[q] * d with I8's bias (-128 * sum).
//   I8:     8 x 64 bytes; vector s (0..7), byte 4 r + i = w + 128 of element 32 b + 4 s + i.
//   then the 16 rows' f16 block scales (32 bytes; the group scale repeated for larger groups).
// Padding rows / elements have code "zero" and scale 0. One vpdpbusd of an unpacked weight vector
// with the 4 activation bytes of a slice broadcast to all lanes gives 16 rows x 1 token; a tile of
// 16 rows x U tokens (U <= kGemmMaxU) keeps the block's weight vectors in registers for U tokens.
// Prefill (T >= 2 kGemmMaxU, AVX3_DL) takes the row groups in pairs and each full token tile as
// two tiles of 32 rows x 4 tokens: a broadcast activation register then feeds two vpdpbusd.
//
// Activations: the Q8Acts of T tokens (QuantizeActsQ8) re-laid once per input as a "panel" that
// every row group reads with one pointer. Tokens are cut into GemmTiles(T) tiles of at most
// kGemmMaxU consecutive tokens, balanced (9 -> 5 + 4); tile k starts at token t0 and holds
// U = GemmTileTokens(T, k, t0) tokens, at panel byte GemmPanelBytes(t0) * nb (nb = Kp / 32).
// Per block b the tile has GemmPanelBytes(U) bytes: int32 -8 * sum[U] (the block's sum of int8
// values), float d[U] (block scales), int8 q[8][U][4] (slice s of token u: elements 4 s .. 4 s + 3
// of the block).
//
// Arithmetic (identical for every T, tiling and target: a row's result never depends on the
// batch, bit for bit). For row r, token t, blocks b = 0 .. Kp/32 - 1 in order:
//   S   = sum_{k in b} w_int[k] * a[k]            (exact int32; bias trick: -8 / -128 * sum(a))
//   acc = fma(float(S), d_w[r, b] * d_a[t, b], acc)   (acc starts at +0.0f)
//   y[t][r] = acc.
// MatMulGemm_ref (ref.h) computes the same from the canonical codes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quantizer/kernels/kernels.h"

namespace tessera::kernels {

constexpr size_t kGemmRows = 16;
constexpr size_t kGemmMaxU = 8;

// I4 sym / I4 nl / I8 with group % 32 == 0.
bool GemmSupported(const WeightMatrix& w);
inline size_t GemmGroups(size_t rows) { return (rows + kGemmRows - 1) / kGemmRows; }
// Bytes of the codes of one (row group, block) unit (I8: 8 x 64, I4 sym / I4 nl: 4 x 64), and of
// the whole unit (the codes, then the 16 rows' f16 scales).
constexpr size_t GemmCodeBytes(bool i8) { return i8 ? 512 : 256; }
constexpr size_t GemmUnitBytes(bool i8) { return GemmCodeBytes(i8) + kGemmRows * 2; }
size_t GemmRepackedBytes(const WeightMatrix& w);
// Repacks row groups [g_begin, g_end) of w into out (GemmRepackedBytes(w) bytes in total).
void RepackGemm(const WeightMatrix& w, size_t g_begin, size_t g_end, uint8_t* out);

inline size_t GemmTiles(size_t T) { return (T + kGemmMaxU - 1) / kGemmMaxU; }
// Tokens of tile k (tiles before it cover [0, t0)).
inline size_t GemmTileTokens(size_t T, size_t k, size_t t0) {
  const size_t left = GemmTiles(T) - k;
  return (T - t0 + left - 1) / left;
}
inline constexpr size_t GemmPanelBytes(size_t U) { return 40 * U; }
inline size_t GemmPanelSize(size_t T, size_t Kp) { return GemmPanelBytes(T) * (Kp / kQ8Block); }
// Fills tiles [tile_begin, tile_end) of the panel of T tokens from a (those tokens quantized).
void BuildGemmPanel(const Q8Acts& a, size_t T, size_t tile_begin, size_t tile_end, uint8_t* panel);

// y[t * ldy + r] for t < T and the rows r < w.rows of row groups [g_begin, g_end); w.data in the
// layout above (w.type kI4Sym or kI8, w.Kp = Q8PaddedK(cols)), panel: T tokens at that Kp.
void MatMulGemm(const Q8Weights& w, const uint8_t* panel, size_t T, float* y, size_t ldy,
                size_t g_begin, size_t g_end);

// ---- AMX (Intel AMX-INT8, prefill) --------------------------------------------------------
// The same product with TDPBSSD tiles: per row group, the 16 rows' codes are unpacked once to
// signed bytes (I4 sym: q - 8; I4 nl: the level; I8: w), which are already the AMX B-tile layout
// (slice s = tile row s); tokens go 16 at a time (A tile: 16 tokens x the block's 32 int8
// activations). One TDPBSSD per (16 rows, 16 tokens, block) gives the exact int32 block sums S
// (with signed weights no bias term), then the GEMM's own f32 step, acc = fma(float(S), d_w * d_a,
// acc), blocks in order: results are bit-identical to MatMulGemm's.
// Whether the CPU has AMX-INT8 (+ AVX-512), Linux granted the tile state, and TESSERA_AMX != 0.
bool GemmAmxAvailable();
constexpr size_t kGemmAmxTokens = 16;
inline size_t GemmAmxTiles(size_t T) { return (T + kGemmAmxTokens - 1) / kGemmAmxTokens; }
// AMX panel: token tile j (tokens 16 j .. 16 j + 15; past T: zeros), block b at byte
// (j * nb + b) * 576: int8 q[16][32] (token u's elements 32 b .. 32 b + 31), float d[16].
inline constexpr size_t GemmAmxPanelBytesPerBlock() { return 16 * 32 + 16 * 4; }
inline size_t GemmAmxPanelSize(size_t T, size_t Kp) {
  return GemmAmxTiles(T) * (Kp / kQ8Block) * GemmAmxPanelBytesPerBlock();
}
void BuildGemmAmxPanel(const Q8Acts& a, size_t T, size_t tile_begin, size_t tile_end, uint8_t* panel);
// MatMulGemm's contract with the AMX panel; only when GemmAmxAvailable().
void MatMulGemmAmx(const Q8Weights& w, const uint8_t* panel, size_t T, float* y, size_t ldy, size_t g_begin,
                   size_t g_end);

// ---- AMX-BF16 (long prefill; not bit-identical) --------------------------------------------
// The integer tiles above must leave every 32-block's int32 sum to an f32 step (a convert, a
// multiply and an FMA per 16 outputs per block: the scales of weights and activations are per 32),
// and that step, not the tiles, bounds them. This variant trades exactness for speed: per row group
// the codes are dequantized once to bf16(code * d) (the f32 product rounded to nearest even), the
// activations are rounded to bf16 from f32 (no int8 quantization, so no activation scales), and
// TDPBF16PS accumulates the whole K in f32 inside the tile; the tile is stored straight into y.
// Rows do not match the integer path bit for bit (the error is of the order of bf16's 2^-9
// relative rounding of each input, less than int8 activation quantization's), so the runtime uses
// it only for batches larger than kGemmAmxExactMaxTokens, the batches a row's result may depend on.
// Whether the CPU also has AMX-BF16 and AVX512-BF16, and TESSERA_AMX is not 0 or "int8".
bool GemmAmxBf16Available();
// Batches up to this many tokens stay on the bit-identical kernels (the server's batch invariant).
constexpr size_t kGemmAmxExactMaxTokens = 16;
// bf16 panel: token tile j (16 tokens; past T: zeros), block b of 32 elements at byte
// (j * nb + b) * 1024: bf16 x[16][32] (token u's elements 32 b .. 32 b + 31; past K: zeros).
inline constexpr size_t GemmAmxBf16PanelBytesPerBlock() { return 16 * 32 * 2; }
inline size_t GemmAmxBf16PanelSize(size_t T, size_t Kp) {
  return GemmAmxTiles(T) * (Kp / kQ8Block) * GemmAmxBf16PanelBytesPerBlock();
}
// Fills token tiles [tile_begin, tile_end) of the bf16 panel of x (T rows of K floats, stride ldx).
void BuildGemmAmxBf16Panel(const float* x, size_t ldx, size_t K, size_t Kp, size_t T, size_t tile_begin,
                           size_t tile_end, uint8_t* panel);
// y[t * ldy + r] for t < T and the rows of row groups [g_begin, g_end) (taken in pairs): the
// GEMM-layout weights w times the bf16 panel. Only when GemmAmxBf16Available().
void MatMulGemmAmxBf16(const Q8Weights& w, const uint8_t* panel, size_t T, float* y, size_t ldy, size_t g_begin,
                       size_t g_end);

}  // namespace tessera::kernels
