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

// ---- dequantize one row ---------------------------------------------------------------
void DequantizeRowI4Sym(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                        float* out);
void DequantizeRowI4Asym(const uint8_t* codes, const uint16_t* scales, const uint16_t* mins,
                         size_t n, size_t group, float* out);
void DequantizeRowI8(const int8_t* codes, const uint16_t* scales, size_t n, size_t group,
                     float* out);

// ---- matrix x activations ----------------------------------------------------------------
enum class WType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kI8 = 3, kI4Sym = 4, kI4Asym = 5 };

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

// Names of the Highway targets compiled in and the one chosen at run time (for `inspect`/bench).
const char* ActiveTargetName();

}  // namespace tessera::kernels
