#include "verify/distortion.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/thread_pool.h"
#include "quantizer/recipes.h"

namespace tessera {

void DistortionSums::Add(const float* a, const float* b, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const double x = a[i], y = b[i], e = y - x;
    ref2 += x * x;
    q2 += y * y;
    err2 += e * e;
    dot += x * y;
    max_abs = std::max(max_abs, std::fabs(e));
  }
  n += static_cast<double>(count);
}

void DistortionSums::Merge(const DistortionSums& o) {
  n += o.n;
  ref2 += o.ref2;
  q2 += o.q2;
  err2 += o.err2;
  dot += o.dot;
  max_abs = std::max(max_abs, o.max_abs);
}

DistortionStats Finish(const DistortionSums& s) {
  DistortionStats d;
  if (s.n == 0) return d;
  d.rmse = std::sqrt(s.err2 / s.n);
  d.rel_rmse = s.ref2 > 0 ? std::sqrt(s.err2 / s.ref2) : (s.err2 > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  d.max_abs = s.max_abs;
  d.snr_db = s.err2 > 0 ? 10.0 * std::log10(s.ref2 / s.err2) : std::numeric_limits<double>::infinity();
  d.cosine = (s.ref2 > 0 && s.q2 > 0) ? s.dot / std::sqrt(s.ref2 * s.q2) : (s.ref2 == s.q2 ? 1.0 : 0.0);
  return d;
}

namespace {
std::string StoredSchemeName(const PackTensor& t) {
  TensorScheme s{t.qtype, IsQuantized(t.qtype) ? t.group : 0};
  return SchemeName(s);
}

// col_scale (k values or empty): multiplies the quantized tensor's columns (AWQ folding, below).
absl::StatusOr<DistortionSums> CompareTensor(const PackTensor& q, const PackTensor& b, const std::string& key,
                                             const std::vector<float>& col_scale) {
  if (q.shape != b.shape)
    return absl::InvalidArgumentError(absl::StrCat(key, ": shape differs from the base package's"));
  const size_t rows = q.rows(), k = q.logical_cols();
  std::vector<DistortionSums> part(rows);
  ThreadPool::Global().ParallelFor(rows, 16, [&](size_t r0, size_t r1) {
    std::vector<float> x(k), y(k);
    for (size_t r = r0; r < r1; ++r) {
      b.RowToF32(r, x.data());
      q.RowToF32(r, y.data());
      if (!col_scale.empty())
        for (size_t j = 0; j < k; ++j) y[j] *= col_scale[j];
      part[r].Add(x.data(), y.data(), k);
    }
  });
  DistortionSums s;  // merged in row order: the result does not depend on the thread count
  for (const auto& p : part) s.Merge(p);
  return s;
}
}  // namespace

absl::StatusOr<DistortionReport> ComparePackages(const Package& pkg, const Package& base) {
  const int64_t L = pkg.config().layers;
  if (base.config().layers != L)
    return absl::InvalidArgumentError(absl::StrCat("base package has ", base.config().layers, " layers, not ", L));
  const nlohmann::ordered_json* qt = nullptr;
  if (pkg.manifest().contains("quant") && pkg.manifest()["quant"].contains("tensors"))
    qt = &pkg.manifest()["quant"]["tensors"];
  DistortionReport rep;
  DistortionSums total;
  auto do_pack = [&](const TensorPack& p, const TensorPack& bp, const std::string& stem, int64_t layer) -> absl::Status {
    DistortionSums layer_sums;
    uint64_t layer_weights = 0;
    for (const PackTensor& t : p.tensors()) {
      if (t.shape.size() != 2) continue;
      const std::string key = stem + "/" + t.name;
      const PackTensor* bt = bp.Find(t.name);
      if (bt == nullptr) return absl::InvalidArgumentError(absl::StrCat(key, ": not in the base package"));
      // A quantizer may fold per-channel scales into the norm feeding the matrix (AWQ: W' = W diag(s),
      // g' = g / s); the matrix the model effectively uses is W' diag(g' / g).
      std::vector<float> col_scale;
      const char* norm_name = t.name == "attn_q" || t.name == "attn_k" || t.name == "attn_v" ? "attn_norm"
                              : t.name == "ffn_gate" || t.name == "ffn_up"                  ? "ffn_norm"
                              : t.name == "output"                                          ? "output_norm"
                                                                                            : nullptr;
      const PackTensor* qn = norm_name ? p.Find(norm_name) : nullptr;
      const PackTensor* bn = norm_name ? bp.Find(norm_name) : nullptr;
      if (qn && bn && qn->shape.size() == 1 && qn->shape == bn->shape && qn->logical_cols() == t.logical_cols()) {
        std::vector<float> gq(qn->logical_cols()), gb(gq.size());
        qn->RowToF32(0, gq.data());
        bn->RowToF32(0, gb.data());
        if (gq != gb) {
          col_scale.resize(gq.size());
          for (size_t j = 0; j < gq.size(); ++j) col_scale[j] = gb[j] != 0.0f ? gq[j] / gb[j] : 1.0f;
        }
      }
      auto s = CompareTensor(t, *bt, key, col_scale);
      if (!s.ok()) return s.status();
      TensorDistortion td;
      td.key = key;
      td.layer = layer;
      td.weights = t.numel();
      td.scheme = (qt && qt->contains(key) && (*qt)[key].contains("scheme")) ? (*qt)[key]["scheme"].get<std::string>()
                                                                             : StoredSchemeName(t);
      td.stats = Finish(*s);
      rep.tensors.push_back(td);
      layer_sums.Merge(*s);
      layer_weights += t.numel();
    }
    if (layer_weights > 0) {
      rep.layers.push_back({stem, layer, layer_weights, Finish(layer_sums)});
      total.Merge(layer_sums);
    }
    return absl::OkStatus();
  };
  auto st = do_pack(pkg.embedding(), base.embedding(), "embedding", -1);
  for (int64_t i = 0; st.ok() && i < L; ++i) st = do_pack(pkg.block(i), base.block(i), absl::StrCat("block_", i), i);
  if (st.ok()) st = do_pack(pkg.lm(), base.lm(), "lm", L);
  if (!st.ok()) return st;
  rep.total = Finish(total);
  return rep;
}

}  // namespace tessera
