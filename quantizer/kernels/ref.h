// Scalar reference implementations of the Tessera kernels (the source of truth).
// SIMD kernels in kernels.h must match these: bit-exactly for integer codes, f16 scales
// and conversions; within a tight tolerance for float reductions.
//
// Quantizer rules (shared with the SIMD code so codes are bit-exact on every target):
//   * group statistics in float; scale rounded to f16 (RNE, tessera::F32ToF16), read back with
//     tessera::F16ToF32; codes use the ROUNDED scale via multiplication by inv = 1.0f / d;
//   * rounding is round-half-to-even; the product is clamped to the code range in float
//     before rounding (identical to clamping after rounding for finite inputs);
//   * a group whose rounded scale is 0 stores scale 0x0000 and the "zero" code
//     (8 for I4 sym, 32 for I6 sym, 0 for I4 asym and I8; I4 asym still stores its f16 min).
//   * dequantization: sym (q - 8) * d;  asym (q * s) + min  (two roundings, no FMA);
//     I8 q * d;  I6 sym (c - 32) * d.
// Inputs are expected to be finite.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quantizer/kernels/kernels.h"

namespace tessera::kernels {

// Conversions (element-wise, bit-exact, same as core/half.h).
void F32ToBF16_ref(const float* x, size_t n, uint16_t* out);
void BF16ToF32_ref(const uint16_t* x, size_t n, float* out);
void F32ToF16_ref(const float* x, size_t n, uint16_t* out);
void F16ToF32_ref(const uint16_t* x, size_t n, float* out);

// Round-half-to-even of a float to int (default FP environment).
int RoundHalfEven_ref(float v);

// Quantize / dequantize one row (n % group == 0).
void QuantizeRowI4Sym_ref(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales);
void QuantizeRowI4Asym_ref(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales,
                           uint16_t* mins);
void QuantizeRowI8_ref(const float* x, size_t n, size_t group, int8_t* codes, uint16_t* scales);
void QuantizeRowI6Sym_ref(const float* x, size_t n, size_t group, uint8_t* codes, uint16_t* scales);
// I6 sym code packing (kernels.h layout): q[i] in [-32, 31] (stored as c = q + 32), n % group == 0,
// group % 32 == 0. Unpack returns q (not c).
void PackI6_ref(const int* q, size_t n, size_t group, uint8_t* codes);
void UnpackI6_ref(const uint8_t* codes, size_t n, size_t group, int* q);

void DequantizeRowI4Sym_ref(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                            float* out);
void DequantizeRowI4Asym_ref(const uint8_t* codes, const uint16_t* scales, const uint16_t* mins,
                             size_t n, size_t group, float* out);
void DequantizeRowI8_ref(const int8_t* codes, const uint16_t* scales, size_t n, size_t group,
                         float* out);
void DequantizeRowI6Sym_ref(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                            float* out);
// I4 nl: kI4NlLevels[nibble] * d (I4 code layout).
void DequantizeRowI4Nl_ref(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group,
                           float* out);

// Dequantize row r of any WeightMatrix into out[0, w.cols).
void DequantizeRow_ref(const WeightMatrix& w, size_t r, float* out);

// Dot products, accumulated in double.
double Dot_ref(const float* a, const float* b, size_t n);
// Quantized row (row r of w) times x: dequantize (ref) then double dot. Also returns
// sum |w_k * x_k| in *abs_sum if non-null (useful as an error scale).
double DotRow_ref(const WeightMatrix& w, size_t r, const float* x, double* abs_sum = nullptr);
// MatMul in double precision (same indexing as kernels::MatMul), results in y (double).
void MatMul_ref(const WeightMatrix& w, const float* x, size_t T, size_t ldx, double* y, size_t ldy,
                size_t row_begin, size_t row_end);

// int8-activation path (kernels.h). QuantizeActsQ8_ref fills the same slice layout bit-exactly.
void QuantizeActsQ8_ref(const float* x, size_t ldx, size_t K, const Q8Acts& a, size_t t_begin,
                        size_t t_end);
// Activation k of token t read back from the slice layout.
int8_t Q8ActAt_ref(const Q8Acts& a, size_t t, size_t k);
// MatMulQ8 computed from the ORIGINAL (not repacked) I4 sym / I6 sym / I8 matrix and quantized
// activations: exact int block sums, per-lane f32 fma as documented in kernels.h, lanes then
// summed in double. Rows [row_begin, row_end).
void MatMulQ8_ref(const WeightMatrix& w, const Q8Acts& a, size_t T, double* y, size_t ldy,
                  size_t row_begin, size_t row_end);
// MatMulGemm (gemm.h) from the ORIGINAL I4 sym / I4 nl / I8 matrix, bit-exact: per row and token, exact
// int block sums, acc = fma(float(S), d_w * d_a, acc) over the blocks in order. Rows
// [row_begin, row_end).
void MatMulGemm_ref(const WeightMatrix& w, const Q8Acts& a, size_t T, float* y, size_t ldy,
                    size_t row_begin, size_t row_end);

// Element-wise ops / reductions in double precision.
void RMSNorm_ref(const float* x, const float* w, size_t n, float eps, double* out);
void Softmax_ref(const float* x, size_t n, double* out);
void SiluMul_ref(const float* gate, const float* up, size_t n, double* out);
void Axpy_ref(float a, const float* x, size_t n, double* y);

}  // namespace tessera::kernels
