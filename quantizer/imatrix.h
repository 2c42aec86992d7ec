// Calibration: imatrix-style activation statistics of the unquantized source model.
//
// The source package is run over the calibration text in chunks of `calib_ctx` tokens (each
// chunk's first token replaced by BOS, as `verify` does), with an activation observer on every
// matrix multiply; for every matrix input ("block_{i}/attn_q" ... "lm/output") the mean of x^2
// per input channel over all calibration tokens is kept. These are the importance weights of
// the scale search (quantizer/search.h). Never calibrate on the evaluation text.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quantizer/quantize.h"
#include "runtime-lite/model.h"

namespace tessera {

// Uses o.calib_text / o.calib_tokens / o.calib_ctx. With want_cov, also E[x x^T] per key (for
// GPTQ; K x K doubles per matrix input). *info receives the manifest record:
// {file, path, bytes, xxh3_64, tokens, ctx, chunks, statistic}.
//
// Sequential calibration (quant_dir non-empty, needs want_cov): the same chunks also go through
// the package in quant_dir (the source with some matrices already quantized), and every statistic
// is of that model's inputs x~ (mean(x~^2), E[x~ x~^T]) — the inputs the matrices will see once the
// matrices before them are quantized — plus the cross moment E[x x~^T] with the source model's
// input x of the same matrix and token (ActivationStats::cross), from which GPTQ's target
// compensates the upstream error (quantize.h). One chunk's source activations are held at a time.
// only_keys: accumulate only these matrix inputs (the first of matrices sharing an input, e.g.
// attn_q, ffn_up; the others are copied from it when listed too). cov_keys (with want_cov): E[x x^T]
// only for these (the others get mean(x^2) only).
absl::StatusOr<ActivationStats> CollectActivationStats(const std::string& src_dir, const QuantizeOptions& o,
                                                       bool want_cov, nlohmann::ordered_json* info,
                                                       const std::string& quant_dir = "",
                                                       const std::set<std::string>* only_keys = nullptr,
                                                       const std::set<std::string>* cov_keys = nullptr);

class StatsAccumulator;

// Sequential calibration layer by layer (quantize --sequential): the same statistics as
// CollectActivationStats(src_dir, o, true, info, quant_dir, &keys) on a package quant_dir in the
// same state, bit for bit, without running every layer for every stage. Per calibration chunk it
// keeps the residual stream entering the current layer for the source model and for the partly
// quantized one (2 x tokens x hidden floats); a stage runs that one layer of both models, up to
// the matrices asked for, and the streams move on one layer at a time.
class SequentialCalibration {
 public:
  // quant_dir: a package of the source's architecture whose embedding is in its final state;
  // its blocks are replaced with SetBlock as they are quantized (stage files are written there).
  static absl::StatusOr<std::unique_ptr<SequentialCalibration>> Create(const std::string& src_dir,
                                                                       const std::string& quant_dir,
                                                                       const QuantizeOptions& o);
  ~SequentialCalibration();
  // Block `layer` of the quantized model now holds `tensors` (a whole block, e.g. partly
  // quantized). Every block the streams are moved through must hold its final tensors by then.
  absl::Status SetBlock(int64_t layer, const std::vector<TensorData>& tensors);
  // The statistics of the matrix inputs `keys` (one block's "block_{i}/...", or "lm/output"),
  // from that block's (the head's) inputs; the streams first move on to it. Blocks are visited
  // in order: a block before the streams' layer is an error.
  absl::StatusOr<ActivationStats> CollectStage(const std::set<std::string>& keys);

 private:
  SequentialCalibration();
  absl::Status AdvanceTo(int64_t layer);
  std::unique_ptr<Model> src_, q_;
  std::vector<std::vector<int32_t>> chunks_;
  // Per chunk: the residual streams entering layer_ (the source's: src_layer_, layer_ or one more).
  std::vector<std::vector<float>> src_x_, q_x_;
  int64_t layer_ = 0, src_layer_ = 0, ctx_ = 0;
  size_t tokens_ = 0;
  std::string stage_file_;
  StatsAccumulator* acc_ = nullptr;  // while a stage is collected
};

}  // namespace tessera
