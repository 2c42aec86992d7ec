#include "quantizer/imatrix.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "quantizer/kernels/kernels.h"
#include "formats/package.h"
#include "runtime-lite/model.h"

namespace tessera {

absl::StatusOr<ActivationStats> CollectActivationStats(const std::string& src_dir, const QuantizeOptions& o,
                                                       bool want_cov, nlohmann::ordered_json* info,
                                                       const std::string& quant_dir,
                                                       const std::set<std::string>* only_keys) {
  const bool sequential = !quant_dir.empty();
  if (sequential && !want_cov) return absl::InvalidArgumentError("sequential calibration needs the covariances (GPTQ)");
  TESSERA_ASSIGN_OR_RETURN(auto model, Model::Load(src_dir));
  std::unique_ptr<Model> qmodel;
  if (sequential) {
    TESSERA_ASSIGN_OR_RETURN(qmodel, Model::Load(quant_dir));
  }
  // The model whose matrix inputs the statistics describe.
  Model& observed = sequential ? *qmodel : *model;
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(o.calib_text));
  TESSERA_ASSIGN_OR_RETURN(std::string hash, HashFile(o.calib_text));
  const ModelConfig& c = model->config();
  int64_t ctx = o.calib_ctx > 0 ? o.calib_ctx : std::min<int64_t>(512, c.max_ctx);
  if (ctx > c.max_ctx)
    return absl::InvalidArgumentError(absl::StrCat("--calib-ctx ", ctx, " exceeds the model's context ", c.max_ctx));
  if (ctx < 2) return absl::InvalidArgumentError("--calib-ctx must be at least 2");
  std::vector<int32_t> tokens = model->tokenizer().Encode(text, true);
  if (o.calib_tokens > 0 && static_cast<int64_t>(tokens.size()) > o.calib_tokens)
    tokens.resize(static_cast<size_t>(o.calib_tokens));
  if (tokens.size() < 2)
    return FileError(o.calib_text, absl::StrCat("calibration text has only ", tokens.size(), " tokens"));

  struct Acc {
    std::vector<double> sum, cov, cross;
    int64_t n = 0;
  };
  // Sequential: the source model's input of each matrix for the current chunk (T x k, dense).
  std::map<std::string, std::vector<float>> src_x;
  const float* src_last = nullptr;
  std::string src_last_key;
  std::map<std::string, Acc> acc;
  // Matrices that read the same input (attn_q/k/v, ffn_gate/up) share one accumulator.
  std::map<std::string, std::string> alias;
  absl::Status cross_error;
  const float* last_x = nullptr;
  size_t last_T = 0, last_k = 0;
  std::string last_key;
  std::vector<float> xt, xs, prod;
  auto stem = [](const std::string& s) { return s.substr(0, s.find('/')); };
  if (sequential) {
    model->SetActivationObserver([&](const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
      if (x == src_last && stem(key) == stem(src_last_key)) return;  // the same input as the matrix before
      src_last = x;
      src_last_key = key;
      if (only_keys != nullptr && !only_keys->count(key)) return;
      std::vector<float>& v = src_x[key];
      v.resize(T * k);
      for (size_t t = 0; t < T; ++t) std::copy(x + t * ldx, x + t * ldx + k, v.data() + t * k);
    });
  }
  // prod (k x k) = A^T B over T tokens for A, B given transposed (k rows of T), with the SIMD matmul.
  auto gram = [&](const std::vector<float>& at, const std::vector<float>& bt, size_t k, size_t T) {
    prod.assign(k * k, 0.0f);
    kernels::WeightMatrix w;
    w.type = kernels::WType::kF32;
    w.data = bt.data();
    w.rows = k;
    w.cols = T;
    ThreadPool::Global().ParallelFor(k, 8, [&](size_t r0, size_t r1) {
      kernels::MatMul(w, at.data(), k, T, prod.data(), k, r0, r1);  // prod[a * k + r] = sum_t A[t][a] B[t][r]
    });
  };
  observed.SetActivationObserver([&](const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
    if (x == last_x && T == last_T && k == last_k && stem(key) == stem(last_key)) {
      alias[key] = last_key;
      return;
    }
    last_x = x;
    last_T = T;
    last_k = k;
    last_key = key;
    if (only_keys != nullptr && !only_keys->count(key)) return;
    Acc& a = acc[key];
    if (a.sum.size() < k) a.sum.resize(k, 0.0);
    for (size_t t = 0; t < T; ++t) {
      const float* row = x + t * ldx;
      for (size_t i = 0; i < k; ++i) a.sum[i] += static_cast<double>(row[i]) * row[i];
    }
    a.n += static_cast<int64_t>(T);
    if (!want_cov) return;
    // X^T X for this chunk with the SIMD matmul: W = X^T (k rows of T), activations = X^T.
    xt.assign(k * T, 0.0f);
    for (size_t t = 0; t < T; ++t)
      for (size_t i = 0; i < k; ++i) xt[i * T + t] = x[t * ldx + i];
    gram(xt, xt, k, T);
    if (a.cov.empty()) a.cov.assign(k * k, 0.0);
    for (size_t i = 0; i < k * k; ++i) a.cov[i] += prod[i];
    if (!sequential) return;
    // E[x x~^T]: the source model's input of this matrix (same key, same tokens) against x~.
    auto it = src_x.find(key);
    if (it == src_x.end() || it->second.size() != T * k) {
      cross_error = absl::InternalError(absl::StrCat("sequential calibration: ", key, " has no source-model input of ",
                                                     T, " x ", k, " values"));
      return;
    }
    xs.assign(k * T, 0.0f);
    for (size_t t = 0; t < T; ++t)
      for (size_t i = 0; i < k; ++i) xs[i * T + t] = it->second[t * k + i];
    gram(xs, xt, k, T);  // prod[i * k + j] = sum_t x[t][i] x~[t][j]
    if (a.cross.empty()) a.cross.assign(k * k, 0.0);
    for (size_t i = 0; i < k * k; ++i) a.cross[i] += prod[i];
  });
  const int32_t bos = model->tokenizer().bos_id() >= 0 ? model->tokenizer().bos_id() : c.bos_id;
  const size_t n_tok = tokens.size(), uctx = static_cast<size_t>(ctx);
  const size_t n_chunks = (n_tok + uctx - 1) / uctx;
  Progress progress("calibrate", n_chunks);
  KVCache cache(c, ctx);
  std::vector<float> logits(uctx * static_cast<size_t>(c.vocab));
  for (size_t ch = 0; ch < n_chunks; ++ch) {
    std::vector<int32_t> chunk(tokens.begin() + static_cast<std::ptrdiff_t>(ch * uctx),
                               tokens.begin() + static_cast<std::ptrdiff_t>(std::min(n_tok, (ch + 1) * uctx)));
    if (bos >= 0 && model->tokenizer().add_bos()) chunk[0] = bos;
    TESSERA_RETURN_IF_ERROR(model->Forward(cache, chunk.data(), chunk.size(), 0, logits.data(), true));
    if (sequential) {
      TESSERA_RETURN_IF_ERROR(qmodel->Forward(cache, chunk.data(), chunk.size(), 0, logits.data(), true));
      TESSERA_RETURN_IF_ERROR(cross_error);
      src_x.clear();
      src_last = nullptr;
    }
    last_x = nullptr;  // buffers of the next Forward may reuse addresses
    progress.Add();
  }
  progress.Finish();
  model->SetActivationObserver(nullptr);
  observed.SetActivationObserver(nullptr);

  ActivationStats st;
  st.tokens = static_cast<int64_t>(n_tok);
  for (auto& [key, a] : acc) {
    const double inv_n = a.n ? 1.0 / static_cast<double>(a.n) : 0.0;
    std::vector<float> v(a.sum.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(a.sum[i] * inv_n);
    st.mean_sq[key] = std::move(v);
    if (!a.cov.empty()) {
      // Symmetrise (the SIMD products of (i, j) and (j, i) may differ in the last bit).
      const size_t k = a.sum.size();
      std::vector<double> c(k * k);
      for (size_t i = 0; i < k; ++i)
        for (size_t j = 0; j < k; ++j) c[i * k + j] = 0.5 * (a.cov[i * k + j] + a.cov[j * k + i]) * inv_n;
      st.cov[key] = std::move(c);
    }
    if (!a.cross.empty()) {
      for (double& v : a.cross) v *= inv_n;
      st.cross[key] = std::move(a.cross);
    }
  }
  for (const auto& [key, target] : alias) {
    if (!st.mean_sq.count(target)) continue;
    st.mean_sq[key] = st.mean_sq[target];
    if (st.cov.count(target)) st.cov[key] = st.cov[target];
    if (st.cross.count(target)) st.cross[key] = st.cross[target];
  }
  *info = {{"file", std::filesystem::path(o.calib_text).filename().string()},
           {"path", std::filesystem::absolute(o.calib_text).string()},
           {"bytes", text.size()},
           {"xxh3_64", hash},
           {"tokens", st.tokens},
           {"ctx", ctx},
           {"chunks", n_chunks},
           {"statistic", sequential ? "mean(x~^2) per input channel + E[x~ x~^T] + E[x x~^T] (x~: inputs with the earlier "
                                         "stages quantized, sequential)"
                 : want_cov ? "mean(x^2) per input channel + E[x x^T] (GPTQ)"
                            : "mean(x^2) per input channel"}};
  return st;
}

}  // namespace tessera
