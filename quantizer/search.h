// Error-minimising INT4 / INT6 group quantization (the analogue of llama.cpp's make_qx_quants /
// make_qkx2_quants), scalar reference implementations: the source of truth.
//
// Output layout and dequantization are exactly kernels.h's (sym: (q - 8) * d; asym:
// q * s + min, f16 scale/min), so any reader decodes these codes unchanged. Only the choice of
// scale (and min) differs from round-to-nearest: for each group, candidate scales around the
// RTN one (extreme value mapped to -8 .. -10 and to +6 .. +9 for sym; range / 14 .. / 16.5
// for asym) are rounded to f16, the group is quantized to the nearest codes, the scale (and
// min) are re-fitted by weighted least squares, rounded to f16 and the group re-quantized; the
// candidate with the smallest weighted squared error sum_i w_i (x_i - deq_i)^2 wins. The RTN
// candidate is evaluated first and only a strictly smaller error replaces it, so the search is
// never worse than RTN on the weighted error. Everything is sequential float/double arithmetic
// in a fixed order: bit-exact deterministic on every machine.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tessera::quant {

// w: per-element weights (n of them, >= 0) or null for unit weights.
void QuantizeRowI4SymSearch_ref(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                                uint16_t* scales);
void QuantizeRowI4AsymSearch_ref(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                                 uint16_t* scales, uint16_t* mins);
// int6 (kernels.h I6 sym layout): the same search with levels [-32, 31] (RTN candidate d = m / -32,
// the candidate grid scaled by 4 so it covers the same relative range).
void QuantizeRowI6SymSearch_ref(const float* x, const float* w, size_t n, size_t group, uint8_t* codes,
                                uint16_t* scales);
// One symmetric group with levels [-half_levels, half_levels - 1] (8: int4, 32: int6): the chosen
// f16 scale and the signed codes q (group values). group <= 128.
void SearchGroupSym(const float* x, const float* w, size_t group, int half_levels, int* q, uint16_t* scale);

// Weighted squared error sum_i w_i (x_i - deq_i)^2 of one stored group (w null: unit weights),
// dequantizing exactly as kernels::DequantizeRow*_ref.
double GroupErrorI4Sym(const float* x, const float* w, size_t group, const uint8_t* codes, uint16_t scale);
double GroupErrorI4Asym(const float* x, const float* w, size_t group, const uint8_t* codes, uint16_t scale,
                        uint16_t min);
double GroupErrorI6Sym(const float* x, const float* w, size_t group, const uint8_t* codes, uint16_t scale);

// Importance weights for the search of one row of n values (k_logical of them real, the rest
// padding, weight 0). act2: per-input-channel mean(a^2) of the activations from calibration,
// or null. With act2, w_i = act2_i: the expected squared output error of a row is
// sum_i E[a_i^2] (x_i - deq_i)^2 when the inputs are uncorrelated. Without, w_i = 1 (measured on
// kjv6L: unit weights beat x_i^2 and llama.cpp's sigma2 + x_i^2 / sqrt forms; imatrix * sqrt(sigma2 +
// x_i^2) was no better than act2_i alone).
void SearchWeights(const float* x, size_t n, size_t k_logical, const float* act2, float* w);

}  // namespace tessera::quant
