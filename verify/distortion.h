// Per-tensor distortion of a (quantized) package against its base: every matrix is dequantized
// row by row and compared with the base package's tensor of the same file and name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "formats/package.h"

namespace tessera {

// Running sums for one comparison (reference a = base, b = quantized).
struct DistortionSums {
  double n = 0, ref2 = 0, q2 = 0, err2 = 0, dot = 0, max_abs = 0;
  void Add(const float* a, const float* b, size_t count);
  void Merge(const DistortionSums& o);
};

struct DistortionStats {
  double rmse = 0;      // sqrt(mean((b - a)^2))
  double rel_rmse = 0;  // rmse / rms(a)
  double max_abs = 0;   // max |b - a|
  double snr_db = 0;    // 10 log10(sum a^2 / sum (b - a)^2); +inf when identical
  double cosine = 0;    // <a, b> / (|a| |b|); 1 when both are zero
};
DistortionStats Finish(const DistortionSums& s);

struct TensorDistortion {
  std::string key;     // FILE_STEM/TENSOR_NAME, e.g. "block_3/ffn_down"
  std::string scheme;  // from the manifest's quant.tensors, else the stored type ("f16", "int4-g32-sym", ...)
  int64_t layer = -1;  // block index; -1 for the embedding, n_layers for lm
  uint64_t weights = 0;
  DistortionStats stats;
};

struct LayerDistortion {
  std::string name;  // "embedding", "block_0", ..., "lm"
  int64_t layer = -1;
  uint64_t weights = 0;
  DistortionStats stats;  // over all the layer's matrices together
};

struct DistortionReport {
  std::vector<TensorDistortion> tensors;  // package order: embedding, blocks, lm
  std::vector<LayerDistortion> layers;
  DistortionStats total;
};

// Both packages must have the same architecture (matrix names and shapes); errors name the
// tensor. Vectors (norms, biases) are skipped. When a norm vector differs between the packages
// (AWQ-style scales folded into it by `quantize --awq`), the matrices it feeds are compared as the
// model uses them: the quantized columns are multiplied by g_pkg / g_base.
absl::StatusOr<DistortionReport> ComparePackages(const Package& pkg, const Package& base);

}  // namespace tessera
