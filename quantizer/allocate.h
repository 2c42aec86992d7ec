// Measured bit allocation for the budgeted recipes (`tessera quantize --allocate measured`).
//
// Instead of the recipe's fixed upgrade order: start from the recipe's base plan (its default
// scheme and rules, no upgrades), quantize once per (matrix, scheme) candidate with only that
// matrix changed, measure the KLD against the source model on the CALIBRATION text, then pick the
// allocation within --max-bytes assuming the single-matrix deltas add up: greedily by KLD drop per
// package byte (any step up each matrix's ladder) and exactly (knapsack); each plan is quantized
// and measured, and the one with the lower calibration KLD is kept in OUT. If a plan overshoots
// the budget (the deltas are measured on whole packages, manifest included) the budget is shrunk
// by the overshoot and the plan solved again. Cost: the calibration statistics, each (matrix,
// scheme)'s quantization and the source model's logits once (QuantizeCache, BaseLogits), then one
// package write + calibration-text pass per candidate (quantizer/README.md "Measured allocation").
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quantizer/quantize.h"

namespace tessera {

struct AllocationCandidate {
  std::string key, scheme;  // matrix, scheme it was moved to
  double dkld = 0;          // calibration KLD minus the base plan's
  int64_t dbytes = 0;       // package bytes minus the base plan's
};

struct AllocationResult {
  std::vector<std::string> overrides;  // the chosen plan, as PATTERN=SCHEME rules on the base
  std::vector<AllocationCandidate> candidates;
  double base_kld = 0, kld = 0;  // calibration KLD of the base plan and of the chosen one
  std::string solver;            // whose plan was kept: "greedy" or "exact"
  uint64_t base_bytes = 0, bytes = 0;
};

// The schemes a matrix may move to (from its base scheme, only those with more bits/weight).
std::vector<std::string> AllocationLadder();

// Greedy knapsack: options[i] = (scheme, dkld, dbytes) of matrix i, the base (dkld 0, dbytes 0)
// included; returns the chosen option index per matrix, spending at most `budget` bytes.
std::vector<size_t> SolveAllocation(const std::vector<std::vector<AllocationCandidate>>& options, int64_t budget);
// The same problem solved exactly (dynamic programming over the budget in at most 32768 steps,
// each option's bytes rounded up to a step): the lowest sum of dKLD within `budget`.
std::vector<size_t> SolveAllocationExact(const std::vector<std::vector<AllocationCandidate>>& options,
                                         int64_t budget);

// o: a budgeted recipe (int4-mixed, int4nl-mixed) with max_bytes and calib_text set. Writes the
// package to out_dir; `log` (may be empty) gets one line per candidate.
absl::StatusOr<AllocationResult> QuantizeMeasuredAllocation(const std::string& src_dir, const std::string& out_dir,
                                                            const QuantizeOptions& o,
                                                            const std::function<void(const std::string&)>& log);

}  // namespace tessera
