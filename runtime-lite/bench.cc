#include "runtime-lite/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "core/status.h"

namespace tessera {
namespace {

BenchStat Summarize(std::vector<double> v) {
  BenchStat s;
  s.samples = v;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  double var = 0;
  for (double x : v) var += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(var / static_cast<double>(v.size() - 1)) : 0;
  return s;
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

uint64_t WeightBytesPerToken(const Model& m) {
  const ModelConfig& c = m.config();
  const Package& pkg = m.package();
  uint64_t total = 0;
  auto add_pack = [&](const std::string& file, bool skip_embedding) -> absl::Status {
    TESSERA_ASSIGN_OR_RETURN(auto p, pkg.LoadPack(file, LoadMode::kIndexOnly));
    for (const auto& t : p->tensors()) {
      if (skip_embedding && (t.name == "token_embd" || t.name == "pos_embd")) {
        total += t.total_bytes / std::max<size_t>(1, t.rows());  // one row gathered
        continue;
      }
      total += t.total_bytes;
    }
    return absl::OkStatus();
  };
  for (int64_t i = 0; i < c.layers; ++i) (void)add_pack(BlockFileName(i), false);
  (void)add_pack("lm.bin", false);
  (void)add_pack("embedding.bin", !c.tie_embeddings);
  return total;
}

absl::StatusOr<BenchResult> RunBench(const Model& m, const BenchOptions& o) {
  const ModelConfig& c = m.config();
  BenchResult r;
  r.weight_bytes_per_token = WeightBytesPerToken(m);
  std::mt19937 rng(static_cast<uint32_t>(o.seed));
  std::uniform_int_distribution<int32_t> tok(3, static_cast<int32_t>(c.vocab - 1));
  const int32_t bos = c.bos_id >= 0 ? c.bos_id : 1;
  const int64_t ctx = std::max<int64_t>(o.pp, o.tg) + 1;
  std::vector<float> logits;
  std::vector<double> pp, tg;
  // One untimed warm-up of each, then `reps` timed repetitions (fresh KV cache each).
  for (int rep = -1; rep < o.reps; ++rep) {
    if (o.pp > 0) {
      std::vector<int32_t> ids(static_cast<size_t>(o.pp));
      ids[0] = bos;
      for (size_t i = 1; i < ids.size(); ++i) ids[i] = tok(rng);
      KVCache cache(c, ctx);
      logits.resize(static_cast<size_t>(c.vocab));
      auto t0 = std::chrono::steady_clock::now();
      TESSERA_RETURN_IF_ERROR(m.Forward(cache, ids.data(), ids.size(), 0, logits.data(), false));
      auto t1 = std::chrono::steady_clock::now();
      if (rep >= 0) pp.push_back(static_cast<double>(o.pp) / Seconds(t0, t1));
    }
    if (o.tg > 0) {
      KVCache cache(c, ctx);
      logits.resize(static_cast<size_t>(c.vocab));
      int32_t id = bos;
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < o.tg; ++i) {
        TESSERA_RETURN_IF_ERROR(m.Forward(cache, &id, 1, i, logits.data(), false));
        id = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      }
      auto t1 = std::chrono::steady_clock::now();
      if (rep >= 0) tg.push_back(static_cast<double>(o.tg) / Seconds(t0, t1));
    }
  }
  r.pp = Summarize(pp);
  r.tg = Summarize(tg);
  return r;
}

}  // namespace tessera
