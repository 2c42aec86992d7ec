// Tessera SIMD kernels (Google Highway 1.0.3, dynamic dispatch). Plain declarations only:
// callers never see Highway. Pointers + sizes in; no files, no Status.
//
// Quantized layouts (row-major, one row = one output channel, K = padded row length,
// K % group == 0, group in {32, 64, 128} for int4, any multiple of 32 for int8):
//   I4 codes: K/2 bytes per row; within each group of G elements, byte j holds element j in
//             its low nibble and element j + G/2 in its high nibble (ggml-compatible order).
//   I4 sym:   w = (nibble - 8) * scale          scales: f16 [rows][K/G]
//   I4 asym:  w = nibble * scale + min          scales, mins: f16 [rows][K/G]
//   I8:       w = int8 * scale                  scales: f16 [rows][K/G]
//   I6 sym:   w = (c - 32) * scale, c in 0..63  scales: f16 [rows][K/G]; group a multiple of 32.
//             3K/4 bytes per row; each group of G is 3G/4 contiguous bytes: G/2 bytes of low
//             nibbles (byte j: element j's low 4 bits | element j + G/2's << 4, as I4), then G/4
//             bytes of high 2-bit pairs (byte j: the high 2 bits of elements j, j + G/4,
//             j + G/2, j + 3G/4 at bits 0, 2, 4, 6 - Q6_K's ql/qh split). MatMul unpacks a row
//             to bytes with 64-bit SWAR and runs the int8 dot product on c - 32 (f32
//             activations; MatMulQ8 below has an int8-activation path for I6 too).
//   I4 nl:    w = kI4NlLevels[nibble] * scale  scales: f16 [rows][K/G]; the I4 code layout, the
//             16 levels of llama.cpp's IQ4_NL (core/iq4nl.h). MatMul looks each row's nibbles up
//             into int8 levels (a byte table) and runs the int8 dot product (f32 activations);
//             the int8-activation path runs I4 nl in the GEMM layout (gemm.h).
// Quantizers compute the group scale, round it to f16 (RNE), and quantize with the rounded
// scale, so a dequantized value is exactly what a consumer of the file computes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tessera::kernels {

// ---- conversions ----------------------------------------------------------------------
// Bit-exact round-to-nearest-even (matches core/half.h F32ToBF16).
void F32ToBF16(const float* x, size_t n, uint16_t* out);
void BF16ToF32(const uint16_t* x, size_t n, float* out);
void F16ToF32(const uint16_t* x, size_t n, float* out);

// ---- quantize one row of n floats (n % group == 0) ----------------------------------------
void QuantizeRowI4Sym(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales);
void QuantizeRowI4Asym(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales,
                       uint16_t* mins);
void QuantizeRowI8(const float* x, size_t n, size_t group, int8_t* codes, uint16_t* scales);
// Round to nearest: d = m / -32 (m: the group's signed extreme), q = clamp(round(x / d), -32, 31).
void QuantizeRowI6Sym(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales);

// ---- error-minimising scale search (group_search-inl.h), byte-identical to the scalar
// reference in quantizer/search.cc (quant::QuantizeRowI4SymSearch_ref etc.) on every target.
// w: per-element weights (>= 0) or null for unit weights; group <= 128.
void QuantizeRowI4SymSearch(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                            uint16_t* scales);
void QuantizeRowI6SymSearch(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                            uint16_t* scales);
// One group, levels [-half_levels, half_levels - 1]: the f16 scale and the signed levels q.
void SearchGroupSym(const float* x, const float* w, size_t group, int half_levels, int* q, uint16_t* scale);

// ---- dequantize one row ---------------------------------------------------------------
void DequantizeRowI4Sym(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                        float* out);
void DequantizeRowI4Asym(const uint8_t* codes, const uint16_t* scales, const uint16_t* mins,
                         size_t n, size_t group, float* out);
void DequantizeRowI8(const int8_t* codes, const uint16_t* scales, size_t n, size_t group,
                     float* out);
void DequantizeRowI6Sym(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                        float* out);

// ---- matrix x activations ----------------------------------------------------------------
enum class WType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kI8 = 3, kI4Sym = 4, kI4Asym = 5, kI6Sym = 6, kI4Nl = 7 };

// A weight matrix [rows][cols] in one of the layouts above. For F32/F16/BF16, `data` points at
// rows * cols elements and scales/mins are null. `cols` is the padded K (multiple of group).
struct WeightMatrix {
  WType type = WType::kF32;
  const void* data = nullptr;
  const uint16_t* scales = nullptr;
  const uint16_t* mins = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t group = 0;
};

// For t in [0, T) and r in [row_begin, row_end):
//   y[t * ldy + r] = sum_k W[r, k] * x[t * ldx + k],  k in [0, W.cols).
// x rows must hold W.cols floats (zero padded past the logical K). One dynamic dispatch per call.
void MatMul(const WeightMatrix& w, const float* x, size_t T, size_t ldx, float* y, size_t ldy,
            size_t row_begin, size_t row_end);

// ---- int8-activation matmul (VNNI vpdpbusd on AVX3_DL) ------------------------------------
// Activations are quantized per token in blocks of 32 (like llama.cpp's Q8_0): d = amax / 127,
// a = round-half-even(x * (127 / amax)) clamped to [-127, 127] (d = 0 and a = 0 when amax = 0).
// Weights (any group that is a multiple of 32) are repacked once at load time into a runtime-only
// layout; the canonical package files are never changed. I4 sym, I4 nl and I8 use the
// row-interleaved GEMM layout (gemm.h); I6 sym uses the superblock layout below (MatMulQ8).
//
// Superblock = 512 consecutive elements of a row = 16 blocks of 32. In a superblock, "slice" s
// (0..7) is 64 bytes: byte 4 j + i holds element 32 j + 4 s + i (block j, i in 0..3), so one
// vpdpbusd i32 lane j accumulates block j. Activations use the same slice layout.
//   I6 sym repacked: per superblock and row 6 x 64 bytes (6.5 bits/weight with the scales):
//                    vectors 0..3 hold the low 4 bits of c (0..63, w = (c - 32) * d)
//                    (vector m: slice m low nibble, slice m + 4 high nibble); vector 4 + h
//                    (h = 0, 1) holds the high 2 bits of slices 2h, 2h + 4, 2h + 1, 2h + 5 at
//                    bits 0-1, 2-3, 4-5, 6-7 of the byte at the same position. The kernel
//                    rebuilds c in registers (shift, and, ternary logic) and uses bias 32.
//                    Prefill unpacks a row block once to 8 x 64 bytes per superblock and row
//                    (byte = c; the I8 unit layout) and runs the I8 tile on it.
//   Scales:          f16 per block of 32 (the group scale repeated for larger groups).
// Stream order: for each block of kQ8RowBlock rows, for each superblock: the rows' codes, then
// the rows' 16 scales each. K is padded to a multiple of 512, rows to a multiple of 4 (padding
// has scale 0). Row r's result for token t (identical for any T and any tiling):
//   per superblock, lane j:  S = sum_k (w_int * a) over block j   (exact, int32)
//                            acc_j = fma(float(S), d_w * d_a, acc_j)          (f32)
//   y = sum over the 16 lanes of acc (fixed order per target).
constexpr size_t kQ8Block = 32;
constexpr size_t kQ8Super = 512;
constexpr size_t kQ8RowBlock = 4;

// Quantized activations of T tokens (caller-owned storage; Kp = K padded to kQ8Super).
struct Q8Acts {
  size_t Kp = 0;
  int8_t* q = nullptr;      // [T][Kp]      slice layout
  float* d = nullptr;       // [T][Kp / 32] block scales
  int32_t* sum = nullptr;   // [T][Kp / 32] sum of the block's int8 values
};
inline size_t Q8PaddedK(size_t K) { return (K + kQ8Super - 1) / kQ8Super * kQ8Super; }

// Quantizes tokens [t_begin, t_end): x[t * ldx + k] for k < K (zeros past K up to a.Kp).
void QuantizeActsQ8(const float* x, size_t ldx, size_t K, const Q8Acts& a, size_t t_begin,
                    size_t t_end);

struct Q8Weights {
  WType type = WType::kI4Sym;  // MatMulQ8: kI6Sym; MatMulGemm (gemm.h): kI4Sym, kI4Nl or kI8
  const uint8_t* data = nullptr;
  size_t rows = 0;  // logical rows (row blocks = ceil(rows / 4))
  size_t Kp = 0;    // padded K (multiple of kQ8Super)
};
// Whether `w` can go on the int8-activation path (I4 sym / I4 nl / I6 sym / I8 with group % 32
// == 0). I4 sym / I4 nl / I8 take the GEMM layout (gemm.h: GemmSupported); RepackQ8 / MatMulQ8
// take I6 sym.
bool Q8Supported(const WeightMatrix& w);
// True when the dispatched target has a native int8 dot product (AVX3_DL: AVX512-VNNI).
bool Q8Fast();
// I6 sym only (the layout above).
size_t Q8RepackedBytes(const WeightMatrix& w);
// Repacks row blocks [rb_begin, rb_end) of I6 sym w into out (Q8RepackedBytes(w) bytes in total).
void RepackQ8(const WeightMatrix& w, size_t rb_begin, size_t rb_end, uint8_t* out);
// The unsigned code the int8-activation layouts store for element k of row r of an I4 sym / I8
// matrix (I4: the nibble 0..15; I8: the value + 128); rows and columns past the matrix (padding)
// get the code of a zero weight.
inline uint8_t Q8UnsignedCode(const WeightMatrix& w, size_t r, size_t k) {
  const bool i8 = w.type == WType::kI8;
  if (r >= w.rows || k >= w.cols) return i8 ? 128 : 8;
  const uint8_t* codes = static_cast<const uint8_t*>(w.data);
  if (i8) return static_cast<uint8_t>(codes[r * w.cols + k] ^ 0x80);
  const size_t g = k / w.group, e = k % w.group, half = w.group / 2;
  const uint8_t byte = codes[r * (w.cols / 2) + g * half + e % half];
  return e < half ? (byte & 0x0F) : (byte >> 4);
}

// y[t * ldy + r] for t < T and rows r of row blocks [rb_begin, rb_end) (r < w.rows); w: I6 sym.
void MatMulQ8(const Q8Weights& w, const Q8Acts& a, size_t T, float* y, size_t ldy,
              size_t rb_begin, size_t rb_end);

// ---- elementwise / reductions -------------------------------------------------------------
float Dot(const float* a, const float* b, size_t n);
// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]   (out may alias x)
void RMSNorm(const float* x, const float* w, size_t n, float eps, float* out);
// In-place softmax over n values (masked entries may be -inf).
void Softmax(float* x, size_t n);
// out[i] = silu(gate[i]) * up[i]
void SiluMul(const float* gate, const float* up, size_t n, float* out);
// y[i] += a * x[i]
void Axpy(float a, const float* x, size_t n, float* y);
// One attention head, one query, n positions of K / V rows (k + j * D, v + j * D):
// scores[j] = Dot(q, k_j) * scale; Softmax(scores); out = sum_j scores[j] * v_j (Axpy in j order
// from zeros): bit-identical to those calls, in one dispatch. scores: n floats of scratch.
void AttendHead(const float* q, const float* k, const float* v, size_t n, size_t D, float scale,
                float* scores, float* out);

// Names of the Highway targets compiled in and the one chosen at run time (for `inspect`/bench).
const char* ActiveTargetName();

}  // namespace tessera::kernels
