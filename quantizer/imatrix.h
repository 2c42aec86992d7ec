// Calibration: imatrix-style activation statistics of the unquantized source model.
//
// The source package is run over the calibration text in chunks of `calib_ctx` tokens (each
// chunk's first token replaced by BOS, as `verify` does), with an activation observer on every
// matrix multiply; for every matrix input ("block_{i}/attn_q" ... "lm/output") the mean of x^2
// per input channel over all calibration tokens is kept. These are the importance weights of
// the scale search (quantizer/search.h). Never calibrate on the evaluation text.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quantizer/quantize.h"

namespace tessera {

// Uses o.calib_text / o.calib_tokens / o.calib_ctx. With want_cov, also E[x x^T] per key (for
// GPTQ; K x K doubles per matrix input). *info receives the manifest record:
// {file, path, bytes, xxh3_64, tokens, ctx, chunks, statistic}.
absl::StatusOr<ActivationStats> CollectActivationStats(const std::string& src_dir, const QuantizeOptions& o,
                                                       bool want_cov, nlohmann::ordered_json* info);

}  // namespace tessera
