// Calibration: imatrix-style activation statistics of the unquantized source model.
//
// The source package is run over the calibration text in chunks of `calib_ctx` tokens (each
// chunk's first token replaced by BOS, as `verify` does), with an activation observer on every
// matrix multiply; for every matrix input ("block_{i}/attn_q" ... "lm/output") the mean of x^2
// per input channel over all calibration tokens is kept. These are the importance weights of
// the scale search (quantizer/search.h). Never calibrate on the evaluation text.
#pragma once

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quantizer/quantize.h"

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
// attn_q, ffn_up; the others are copied from it when listed too).
absl::StatusOr<ActivationStats> CollectActivationStats(const std::string& src_dir, const QuantizeOptions& o,
                                                       bool want_cov, nlohmann::ordered_json* info,
                                                       const std::string& quant_dir = "",
                                                       const std::set<std::string>* only_keys = nullptr);

}  // namespace tessera
