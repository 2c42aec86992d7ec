// Package -> package quantization: recipes (quantizer/recipes.h), per-tensor overrides,
// round-to-nearest or error-minimising scale search (quantizer/search.h), optionally weighted by
// activation statistics collected on calibration text (quantizer/imatrix.h).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "formats/tensor_pack.h"
#include "nlohmann/json.hpp"
#include "quantizer/recipes.h"

namespace tessera {

enum class QuantAlgorithm {
  kDefault,  // search (gptq with --calib) for int4 / int6 schemes, rtn for int8 / float
  kRtn,      // round to nearest (kernels::QuantizeRow*)
  kSearch,   // error-minimising scale (and min) search per group
  kGptq,     // GPTQ error feedback over the calibration covariance + per-group search (needs --calib)
};
const char* QuantAlgorithmName(QuantAlgorithm a);
bool QuantAlgorithmFromName(const std::string& name, QuantAlgorithm* out);

struct QuantizeOptions {
  // Without a recipe: every matrix gets `type` / `group` (the pre-recipe CLI: --type/--group/--asym).
  QType type = QType::kI4Sym;  // kF32, kF16, kBF16, kI8, kI4Sym, kI4Asym, kI6Sym
  uint32_t group = 32;         // for int8 / int4
  std::string recipe;          // a name from AllRecipes(), or empty
  std::vector<std::string> overrides;  // "PATTERN=SCHEME", applied after the recipe (last wins)
  QuantAlgorithm algorithm = QuantAlgorithm::kDefault;
  // Calibration (imatrix-style activation statistics of the unquantized source model).
  std::string calib_text;      // path of a UTF-8 text file; empty: no calibration
  int64_t calib_tokens = 0;    // 0: the whole file
  int64_t calib_ctx = 0;       // 0: min(512, the model's context)
  // AWQ-style input-channel scaling folded into the norms (quantizer/awq.h); needs calib_text.
  bool awq = false;
  // Offline rotation of the residual stream (quantizer/rotate.h), applied to the f32 weights before
  // calibration and quantization; the statistics are collected on the rotated model.
  bool rotate = false;
  uint64_t rotate_seed = 0;
  bool rotate_heads = false;  // also a per-head rotation of V / O (quant::RotatePackage's `heads`)
  std::string rotated_from;  // internal: set on the rotated intermediate package's quantization
  // Sequential GPTQ calibration: the matrices are quantized stage by stage in model order (per
  // block: attn_q/k/v, attn_output, ffn_gate/up, ffn_down; then the output), each stage's
  // statistics taken on the model whose earlier stages are already quantized (x~), and GPTQ aims
  // at the source model's outputs (target w E[x x~^T] E[x~ x~^T]^-1, see QuantizeTensor).
  // The statistics are those of a full forward pass per stage (the source and the partly quantized
  // model over the calibration text), computed layer by layer (SequentialCalibration, imatrix.h).
  bool sequential = false;
  // Internal (tests): the reference implementation of `sequential`, which writes the whole scratch
  // package and runs both models through every layer for every stage; the same bytes, slower.
  bool sequential_reference = false;
  // Budgets for a budgeted recipe (int4-mixed), replacing its own bits/weight budget when given:
  // the whole output package in bytes (every file, manifest included) and/or the matrices'
  // bits/weight. 0: not given.
  uint64_t max_bytes = 0;
  double max_bpw = 0;
  bool force = false;
  std::string cmdline;
};

// The recipe name written to the manifest, e.g. "int4-g32-sym", "int8-g32", "bf16", "int4-mixed".
std::string RecipeName(const QuantizeOptions& o);

// Per-input-channel activation statistics: key ("block_3/ffn_down", "lm/output") -> mean(x^2)
// over the calibration tokens, one value per input channel (logical K).
// With covariances (for GPTQ): key -> E[x x^T], K x K row-major.
struct ActivationStats {
  std::map<std::string, std::vector<float>> mean_sq;
  std::map<std::string, std::vector<double>> cov;
  // Sequential calibration: mean_sq / cov are of the inputs x~ in the partly quantized model,
  // and cross[key] = E[x x~^T] (K x K, row-major: [i][j] = E[x_i x~_j]) with
  // the source model's inputs x.
  std::map<std::string, std::vector<double>> cross;
  int64_t tokens = 0;
};

// Quantizes one tensor with `scheme` (matrices only; vectors stay F32). act2: mean(x^2) per
// input channel (logical K values) or null; cov: E[x x^T] (K x K), needed by kGptq (which falls
// back to kSearch without it). cross (kGptq only, or null): E[x x~^T] of the source model's
// inputs x and the inputs x~ the quantized model gives (cov = E[x~ x~^T]); GPTQ then quantizes
// the row w' = w C (H + damp)^-1, computed as w + w (C - H) (H + damp)^-1 (so C = H gives w
// exactly), the minimiser of E[(w x - w' x~)^2]: the quantized row's output error against the
// source model's output, (q - w') H (q - w')^T + const, is what GPTQ minimises.
absl::StatusOr<TensorData> QuantizeTensor(const PackTensor& src, const TensorScheme& scheme, QuantAlgorithm alg,
                                          const float* act2 = nullptr, const double* cov = nullptr,
                                          const double* cross = nullptr);
// Quantizes one tensor with `o.type` / `o.group` and `o.algorithm`.
absl::StatusOr<TensorData> QuantizeTensor(const PackTensor& src, const QuantizeOptions& o);

absl::Status QuantizePackage(const std::string& src_dir, const std::string& out_dir, const QuantizeOptions& o);

// Internal (quantizer/allocate.cc): what QuantizePackage repeats when it quantizes one source into
// many plans that differ only in their schemes (o.recipe / o.overrides / budgets). The first call
// fills it; later calls reuse the calibration statistics (computed once, as every call would
// compute the same) and every (tensor, scheme) already quantized, since a tensor's quantization
// depends only on its own weights, its scheme, the algorithm and those statistics. Not used with
// --sequential (statistics of the partly quantized model) or --awq (scales chosen per group of
// matrices); a cache filled for one source / calibration / algorithm refuses any other.
struct QuantizeCache {
  std::string signature;  // src_dir, calibration options and algorithm it was filled with
  bool have_stats = false;
  ActivationStats stats;
  nlohmann::ordered_json calib_info;
  std::map<std::string, TensorData> tensors;  // "KEY SCHEME" -> the quantized tensor
  size_t hits = 0, misses = 0;                // tensors reused / quantized
};
// The same package as QuantizePackage(src_dir, out_dir, o); cache may be null.
absl::Status QuantizePackage(const std::string& src_dir, const std::string& out_dir, const QuantizeOptions& o,
                             QuantizeCache* cache);

}  // namespace tessera
