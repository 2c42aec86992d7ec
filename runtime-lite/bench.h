// `tessera bench`: llama-bench style prompt-processing (pp) and generation (tg) throughput.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime-lite/model.h"

namespace tessera {

struct BenchOptions {
  int pp = 128;   // prompt tokens per pp repetition (0: skip)
  int tg = 64;    // generated tokens per tg repetition (0: skip)
  int reps = 5;
  uint64_t seed = 1234;
};

struct BenchStat {
  std::vector<double> samples;  // tokens/s per repetition
  double median = 0, min = 0, max = 0, mean = 0, sd = 0;
};

struct BenchResult {
  BenchStat pp, tg;
  uint64_t weight_bytes_per_token = 0;  // every weight read once per generated token (not the embedding gather)
};

// Weight bytes a decode step reads: every tensor of every block and of the head (the embedding
// table only when it is also the output matrix), plus one embedding row.
uint64_t WeightBytesPerToken(const Model& m);

absl::StatusOr<BenchResult> RunBench(const Model& m, const BenchOptions& o);

}  // namespace tessera
