// Non-linear 4-bit grid quantization (llama.cpp's IQ4_NL levels), scalar reference: the source of
// truth for the int4nl schemes.
//
// A group of G values shares one f16 scale d; each value is stored as a 4-bit index c into a
// table of 16 levels, w = level[c] * d. The fixed table is IQ4_NL's: 16 int8 levels, denser near
// 0 than the uniform int4 grid (-127 .. 113, steps 11 .. 24). level * d is exact in f32 (7-bit
// level times an 11-bit f16 mantissa), so every reader computes the same dequantized value.
//
// Codes are the index of the nearest level to x / d (ties to the lower level). RTN maps the
// group's signed extreme m to level[0]: d = m / level[0]. The search (as quantizer/search.h's
// for the uniform grid) tries scales mapping m to -(127 + t) and to +(113 + t) (t in steps of
// 1/64 of the level, coarse then fine), re-fits the scale by weighted least squares with the
// codes fixed, rounds to f16, and keeps the smallest weighted squared error; RTN is evaluated first
// and only a strictly smaller error replaces it. Sequential float/double arithmetic in a fixed
// order: bit-exact deterministic.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/iq4nl.h"

namespace tessera::quant {


// A sorted table of 16 levels and the 15 midpoints between neighbours.
struct Grid16 {
  float v[16];
  float mid[15];
};
Grid16 MakeGrid16(const float* levels);  // levels sorted ascending
const Grid16& Nl4Grid();                 // kI4NlLevels (core/iq4nl.h)

// Index of the nearest level to v (ties to the lower one).
inline int NearestLevel(const Grid16& g, float v) {
  int c = 0;
  for (int j = 0; j < 15; ++j) c += v > g.mid[j] ? 1 : 0;
  return c;
}

// One group (G <= 128): chosen f16 scale and the codes (0..15, one per value). w: weights or null.
void SearchGroupGrid(const float* x, const float* w, size_t G, const Grid16& grid, int* codes, uint16_t* scale);
void RtnGroupGrid(const float* x, size_t G, const Grid16& grid, int* codes, uint16_t* scale);

// Rows of n values (n % group == 0), int4 code layout of kernels.h (byte j of a group: element j
// low nibble, element j + G/2 high nibble); scales f16 [n / group].
void QuantizeRowGridRtn_ref(const float* x, size_t n, size_t group, const Grid16& grid, uint8_t* codes,
                            uint16_t* scales);
void QuantizeRowGridSearch_ref(const float* x, const float* w, size_t n, size_t group, const Grid16& grid,
                               uint8_t* codes, uint16_t* scales);
void DequantizeRowGrid_ref(const uint8_t* codes, const uint16_t* scales, size_t n, size_t group, const Grid16& grid,
                           float* out);
// Weighted squared error of one stored group.
double GroupErrorGrid(const float* x, const float* w, size_t group, const uint8_t* codes, uint16_t scale,
                      const Grid16& grid);

}  // namespace tessera::quant
