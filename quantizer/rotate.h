// Offline rotation of the residual stream (QuaRot / SliceGPT "computational invariance").
//
// For an RMSNorm model the residual stream h can be replaced by Q^T h for any orthogonal Q
// without changing the function: RMS(Q^T h) = RMS(h), so after folding each norm's gain g into
// the matrices that read the norm's output (W diag(g), the gain becoming 1) every reader absorbs
// Q (W' = W diag(g) Q), every writer emits the rotated stream (W' = Q^T W, biases b' = Q^T b) and
// the embedding rows are rotated (e' = e Q). Matrices are stored [out, in] (y = W x), so a reader
// has each row r replaced by r Q and a writer each column c by Q^T c = (c^T Q)^T: both are the one
// operation "row vector times Q" (Rotation::ApplyRow). Rotating spreads outlier channels over the
// whole width, which is what int4 group quantization needs; the package format and the runtime are
// unchanged. Tied embeddings are untied (the output becomes E diag(g_final) Q, the embedding E Q).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tessera::quant {

// Q (n x n, orthogonal):
//  - kHadamard when n is a power of 2: Q = diag(s) H_n / sqrt(n), s = seeded random signs, H_n the
//    Sylvester Walsh-Hadamard matrix (H[i][j] = (-1)^popcount(i & j)); x Q costs n log2 n.
//  - kRandomOrthogonal otherwise: Q from the QR decomposition of a seeded n x n Gaussian matrix
//    (Gram-Schmidt applied twice, R's diagonal positive, i.e. Haar-distributed); x Q costs n^2.
struct Rotation {
  enum class Kind { kHadamard, kRandomOrthogonal };
  Kind kind = Kind::kHadamard;
  size_t n = 0;
  uint64_t seed = 0;
  std::vector<double> signs;  // kHadamard: s (+1 / -1)
  std::vector<double> dense;  // kRandomOrthogonal: Q, row-major
  // x <- x Q (x: n floats, computed in double).
  void ApplyRow(float* x) const;
  void ApplyRow(double* x) const;
  // Q as a dense row-major n x n matrix (tests; the scalar reference of ApplyRow).
  std::vector<double> Dense() const;
  const char* KindName() const;  // "randomized-hadamard" | "random-orthogonal-qr"
};

Rotation MakeRotation(size_t n, uint64_t seed);

// In-place unnormalised fast Walsh-Hadamard transform: x <- H_n x (n a power of 2).
void Fwht(double* x, size_t n);

// Writes an f32 package at out_dir: src_dir's model with every norm gain folded and the residual
// stream rotated by MakeRotation(hidden, seed). Refuses models it cannot rotate exactly (LayerNorm
// as in GPT-2, learned position embeddings). `info` (may be null) receives the manifest's
// "rotation" record. heads: also rotate each KV head's value space by its own randomized Hadamard
// R (head_dim a power of 2, else random orthogonal): attn_v's rows of head h (and their bias) by
// R^T, attn_output's columns of every query head reading h by R (attention mixes tokens linearly,
// so R^T passes through it). This rotates attn_output's input, which the residual rotation does
// not touch.
absl::Status RotatePackage(const std::string& src_dir, const std::string& out_dir, uint64_t seed, bool heads,
                           bool force, nlohmann::ordered_json* info = nullptr);

}  // namespace tessera::quant
