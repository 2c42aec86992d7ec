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

namespace tessera {

namespace {
std::string Stem(const std::string& key) { return key.substr(0, key.find('/')); }
}  // namespace

// ---- the statistics of one calibration run ----
class StatsAccumulator {
 public:
  StatsAccumulator(bool want_cov, bool sequential, const std::set<std::string>* only_keys,
                   const std::set<std::string>* cov_keys = nullptr)
      : want_cov_(want_cov), sequential_(sequential), only_keys_(only_keys), cov_keys_(cov_keys) {}

  // Sequential: the source model's input of each matrix for the current chunk (T x k, dense).
  void Source(const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
    if (x == src_last_ && Stem(key) == Stem(src_last_key_)) return;  // the same input as the matrix before
    src_last_ = x;
    src_last_key_ = key;
    if (only_keys_ != nullptr && !only_keys_->count(key)) return;
    std::vector<float>& v = src_x_[key];
    v.resize(T * k);
    for (size_t t = 0; t < T; ++t) std::copy(x + t * ldx, x + t * ldx + k, v.data() + t * k);
  }

  // The observed model's input x of matrix `key` (T rows of k, stride ldx).
  void Observed(const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
    // Matrices that read the same input (attn_q/k/v, ffn_gate/up) share one accumulator.
    if (x == last_x_ && T == last_T_ && k == last_k_ && Stem(key) == Stem(last_key_)) {
      alias_[key] = last_key_;
      return;
    }
    last_x_ = x;
    last_T_ = T;
    last_k_ = k;
    last_key_ = key;
    if (only_keys_ != nullptr && !only_keys_->count(key)) return;
    Acc& a = acc_[key];
    if (a.sum.size() < k) a.sum.resize(k, 0.0);
    for (size_t t = 0; t < T; ++t) {
      const float* row = x + t * ldx;
      for (size_t i = 0; i < k; ++i) a.sum[i] += static_cast<double>(row[i]) * row[i];
    }
    a.n += static_cast<int64_t>(T);
    if (!want_cov_ || (cov_keys_ != nullptr && !cov_keys_->count(key))) return;
    // X^T X for this chunk with the SIMD matmul: W = X^T (k rows of T), activations = X^T.
    xt_.assign(k * T, 0.0f);
    for (size_t t = 0; t < T; ++t)
      for (size_t i = 0; i < k; ++i) xt_[i * T + t] = x[t * ldx + i];
    Gram(xt_, xt_, k, T);
    if (a.cov.empty()) a.cov.assign(k * k, 0.0);
    for (size_t i = 0; i < k * k; ++i) a.cov[i] += prod_[i];
    if (!sequential_) return;
    // E[x x~^T]: the source model's input of this matrix (same key, same tokens) against x~.
    auto it = src_x_.find(key);
    if (it == src_x_.end() || it->second.size() != T * k) {
      cross_error_ = absl::InternalError(absl::StrCat("sequential calibration: ", key, " has no source-model input of ",
                                                      T, " x ", k, " values"));
      return;
    }
    xs_.assign(k * T, 0.0f);
    for (size_t t = 0; t < T; ++t)
      for (size_t i = 0; i < k; ++i) xs_[i * T + t] = it->second[t * k + i];
    Gram(xs_, xt_, k, T);  // prod[i * k + j] = sum_t x[t][i] x~[t][j]
    if (a.cross.empty()) a.cross.assign(k * k, 0.0);
    for (size_t i = 0; i < k * k; ++i) a.cross[i] += prod_[i];
  }

  // Before each forward run: its buffers may reuse the addresses of the last run's.
  void NewRun() {
    last_x_ = nullptr;
    src_last_ = nullptr;
  }

  // After each chunk (sequential: after both models ran it).
  absl::Status EndChunk() {
    TESSERA_RETURN_IF_ERROR(cross_error_);
    src_x_.clear();
    NewRun();
    return absl::OkStatus();
  }

  ActivationStats Finish(int64_t tokens) {
    ActivationStats st;
    st.tokens = tokens;
    for (auto& [key, a] : acc_) {
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
    for (const auto& [key, target] : alias_) {
      if (!st.mean_sq.count(target)) continue;
      st.mean_sq[key] = st.mean_sq[target];
      if (st.cov.count(target)) st.cov[key] = st.cov[target];
      if (st.cross.count(target)) st.cross[key] = st.cross[target];
    }
    return st;
  }

 private:
  struct Acc {
    std::vector<double> sum, cov, cross;
    int64_t n = 0;
  };
  // prod (k x k) = A^T B over T tokens for A, B given transposed (k rows of T), with the SIMD matmul.
  void Gram(const std::vector<float>& at, const std::vector<float>& bt, size_t k, size_t T) {
    prod_.assign(k * k, 0.0f);
    kernels::WeightMatrix w;
    w.type = kernels::WType::kF32;
    w.data = bt.data();
    w.rows = k;
    w.cols = T;
    ThreadPool::Global().ParallelFor(k, 8, [&](size_t r0, size_t r1) {
      kernels::MatMul(w, at.data(), k, T, prod_.data(), k, r0, r1);  // prod[a * k + r] = sum_t A[t][a] B[t][r]
    });
  }

  const bool want_cov_, sequential_;
  const std::set<std::string>* only_keys_;
  const std::set<std::string>* cov_keys_;
  std::map<std::string, std::vector<float>> src_x_;
  const float* src_last_ = nullptr;
  std::string src_last_key_;
  std::map<std::string, Acc> acc_;
  std::map<std::string, std::string> alias_;
  absl::Status cross_error_;
  const float* last_x_ = nullptr;
  size_t last_T_ = 0, last_k_ = 0;
  std::string last_key_;
  std::vector<float> xt_, xs_, prod_;
};

namespace {
// The calibration text's tokens cut into chunks of ctx tokens, each chunk's first token BOS.
struct Chunks {
  int64_t ctx = 0;
  size_t tokens = 0;
  std::vector<std::vector<int32_t>> chunks;
};
absl::StatusOr<Chunks> CalibrationChunks(const Model& model, const QuantizeOptions& o, const std::string& text) {
  const ModelConfig& c = model.config();
  Chunks out;
  out.ctx = o.calib_ctx > 0 ? o.calib_ctx : std::min<int64_t>(512, c.max_ctx);
  if (out.ctx > c.max_ctx)
    return absl::InvalidArgumentError(absl::StrCat("--calib-ctx ", out.ctx, " exceeds the model's context ", c.max_ctx));
  if (out.ctx < 2) return absl::InvalidArgumentError("--calib-ctx must be at least 2");
  std::vector<int32_t> tokens = model.tokenizer().Encode(text, true);
  if (o.calib_tokens > 0 && static_cast<int64_t>(tokens.size()) > o.calib_tokens)
    tokens.resize(static_cast<size_t>(o.calib_tokens));
  if (tokens.size() < 2)
    return FileError(o.calib_text, absl::StrCat("calibration text has only ", tokens.size(), " tokens"));
  const int32_t bos = model.tokenizer().bos_id() >= 0 ? model.tokenizer().bos_id() : c.bos_id;
  const size_t n_tok = tokens.size(), uctx = static_cast<size_t>(out.ctx);
  for (size_t ch = 0; ch * uctx < n_tok; ++ch) {
    std::vector<int32_t> chunk(tokens.begin() + static_cast<std::ptrdiff_t>(ch * uctx),
                               tokens.begin() + static_cast<std::ptrdiff_t>(std::min(n_tok, (ch + 1) * uctx)));
    if (bos >= 0 && model.tokenizer().add_bos()) chunk[0] = bos;
    out.chunks.push_back(std::move(chunk));
  }
  out.tokens = n_tok;
  return out;
}
}  // namespace

absl::StatusOr<ActivationStats> CollectActivationStats(const std::string& src_dir, const QuantizeOptions& o,
                                                       bool want_cov, nlohmann::ordered_json* info,
                                                       const std::string& quant_dir,
                                                       const std::set<std::string>* only_keys,
                                                       const std::set<std::string>* cov_keys) {
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
  TESSERA_ASSIGN_OR_RETURN(const Chunks chunks, CalibrationChunks(*model, o, text));
  StatsAccumulator acc(want_cov, sequential, only_keys, cov_keys);
  if (sequential) {
    model->SetActivationObserver([&](const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
      acc.Source(key, x, T, ldx, k);
    });
  }
  observed.SetActivationObserver([&](const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
    acc.Observed(key, x, T, ldx, k);
  });
  const ModelConfig& c = model->config();
  Progress progress("calibrate", chunks.chunks.size());
  KVCache cache(c, chunks.ctx);
  std::vector<float> logits(static_cast<size_t>(chunks.ctx) * static_cast<size_t>(c.vocab));
  for (const std::vector<int32_t>& chunk : chunks.chunks) {
    TESSERA_RETURN_IF_ERROR(model->Forward(cache, chunk.data(), chunk.size(), 0, logits.data(), true));
    if (sequential) {
      TESSERA_RETURN_IF_ERROR(qmodel->Forward(cache, chunk.data(), chunk.size(), 0, logits.data(), true));
    }
    TESSERA_RETURN_IF_ERROR(acc.EndChunk());
    progress.Add();
  }
  progress.Finish();
  model->SetActivationObserver(nullptr);
  observed.SetActivationObserver(nullptr);

  ActivationStats st = acc.Finish(static_cast<int64_t>(chunks.tokens));
  *info = {{"file", std::filesystem::path(o.calib_text).filename().string()},
           {"path", std::filesystem::absolute(o.calib_text).string()},
           {"bytes", text.size()},
           {"xxh3_64", hash},
           {"tokens", st.tokens},
           {"ctx", chunks.ctx},
           {"chunks", chunks.chunks.size()},
           {"statistic", sequential ? "mean(x~^2) per input channel + E[x~ x~^T] + E[x x~^T] (x~: inputs with the earlier "
                                         "stages quantized, sequential)"
                 : want_cov ? "mean(x^2) per input channel + E[x x^T] (GPTQ)"
                            : "mean(x^2) per input channel"}};
  return st;
}

// ---- sequential calibration layer by layer ----
SequentialCalibration::SequentialCalibration() = default;
SequentialCalibration::~SequentialCalibration() = default;

absl::StatusOr<std::unique_ptr<SequentialCalibration>> SequentialCalibration::Create(const std::string& src_dir,
                                                                                     const std::string& quant_dir,
                                                                                     const QuantizeOptions& o) {
  std::unique_ptr<SequentialCalibration> s(new SequentialCalibration());
  TESSERA_ASSIGN_OR_RETURN(s->src_, Model::Load(src_dir));
  TESSERA_ASSIGN_OR_RETURN(s->q_, Model::Load(quant_dir));
  const ModelConfig& c = s->src_->config();
  const ModelConfig& qc = s->q_->config();
  if (qc.layers != c.layers || qc.hidden != c.hidden || qc.vocab != c.vocab)
    return absl::InvalidArgumentError(absl::StrCat(quant_dir, ": not the architecture of ", src_dir));
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(o.calib_text));
  TESSERA_ASSIGN_OR_RETURN(Chunks chunks, CalibrationChunks(*s->src_, o, text));
  s->ctx_ = chunks.ctx;
  s->tokens_ = chunks.tokens;
  s->chunks_ = std::move(chunks.chunks);
  s->stage_file_ = (std::filesystem::path(quant_dir) / "sequential-stage.bin").string();
  // The residual streams entering layer 0.
  const size_t H = static_cast<size_t>(c.hidden);
  for (const std::vector<int32_t>& chunk : s->chunks_) {
    s->src_x_.emplace_back(chunk.size() * H);
    s->q_x_.emplace_back(chunk.size() * H);
    TESSERA_RETURN_IF_ERROR(s->src_->Embed(chunk.data(), chunk.size(), s->src_x_.back().data()));
    TESSERA_RETURN_IF_ERROR(s->q_->Embed(chunk.data(), chunk.size(), s->q_x_.back().data()));
  }
  // Both models keep an observer (per matrix) in every run, as CollectActivationStats' Forward
  // does: the layers take the same code path whether statistics are collected or not.
  SequentialCalibration* self = s.get();
  s->src_->SetActivationObserver([self](const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
    if (self->acc_ != nullptr) self->acc_->Source(key, x, T, ldx, k);
  });
  s->q_->SetActivationObserver([self](const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
    if (self->acc_ != nullptr) self->acc_->Observed(key, x, T, ldx, k);
  });
  return s;
}

absl::Status SequentialCalibration::SetBlock(int64_t layer, const std::vector<TensorData>& tensors) {
  if (layer < layer_)
    return absl::FailedPreconditionError(absl::StrCat("sequential calibration: block ", layer,
                                                      " is behind the residual stream (layer ", layer_, ")"));
  TESSERA_RETURN_IF_ERROR(WriteTensorPack(stage_file_, tensors));
  TESSERA_ASSIGN_OR_RETURN(auto pack, TensorPack::Open(stage_file_, /*verify_checksums=*/false, LoadMode::kRead));
  return q_->ReplaceBlock(layer, std::move(pack));
}

absl::Status SequentialCalibration::AdvanceTo(int64_t layer) {
  KVCache cache(src_->config(), ctx_);
  for (; layer_ < layer; ++layer_) {
    for (size_t ch = 0; ch < chunks_.size(); ++ch) {
      const size_t T = chunks_[ch].size();
      if (src_layer_ == layer_)
        TESSERA_RETURN_IF_ERROR(src_->ForwardLayers(cache, T, layer_, layer_ + 1, src_x_[ch].data()));
      TESSERA_RETURN_IF_ERROR(q_->ForwardLayers(cache, T, layer_, layer_ + 1, q_x_[ch].data()));
    }
    src_layer_ = layer_ + 1;
  }
  return absl::OkStatus();
}

absl::StatusOr<ActivationStats> SequentialCalibration::CollectStage(const std::set<std::string>& keys) {
  if (keys.empty()) return absl::InvalidArgumentError("sequential calibration: no keys");
  const ModelConfig& c = src_->config();
  const std::string stem = Stem(*keys.begin());
  int64_t layer = -1;
  if (stem == "lm") {
    layer = c.layers;
  } else if (stem.rfind("block_", 0) == 0) {
    layer = std::atoll(stem.c_str() + 6);
  }
  if (layer < 0 || layer > c.layers || (stem != "lm" && layer == c.layers))
    return absl::InvalidArgumentError(absl::StrCat("sequential calibration: ", *keys.begin(), " is no matrix input"));
  if (layer < layer_)
    return absl::FailedPreconditionError(
        absl::StrCat("sequential calibration: ", stem, " is behind the residual stream (layer ", layer_, ")"));
  // The layer stops after the last group of matrices asked for (runs whole for any other key).
  int stop = static_cast<int>(Model::LayerStop::kQkv);
  bool whole = false;
  for (const std::string& key : keys) {
    if (Stem(key) != stem) return absl::InvalidArgumentError(absl::StrCat("sequential calibration: ", key, " is not in ", stem));
    const std::string m = key.substr(stem.size() + 1);
    Model::LayerStop s = Model::LayerStop::kNone;
    if (m == "attn_q" || m == "attn_k" || m == "attn_v") s = Model::LayerStop::kQkv;
    if (m == "attn_output") s = Model::LayerStop::kAttnOutput;
    if (m == "ffn_up" || m == "ffn_gate") s = Model::LayerStop::kFfnUp;
    if (m == "ffn_down") s = Model::LayerStop::kFfnDown;
    whole = whole || s == Model::LayerStop::kNone;
    stop = std::max(stop, static_cast<int>(s));
  }
  const Model::LayerStop layer_stop = whole ? Model::LayerStop::kNone : static_cast<Model::LayerStop>(stop);
  TESSERA_RETURN_IF_ERROR(AdvanceTo(layer));
  if (src_layer_ != layer)
    return absl::FailedPreconditionError(
        absl::StrCat("sequential calibration: ", stem, " after the source stream moved past it"));
  // The source layer never changes: when its whole layer runs anyway (up to ffn_down), it runs in
  // place and its stream moves on (the observer calls are the same: ffn_down's input is the last).
  const bool src_moves = layer < c.layers && (layer_stop == Model::LayerStop::kFfnDown || layer_stop == Model::LayerStop::kNone);
  StatsAccumulator acc(/*want_cov=*/true, /*sequential=*/true, &keys);
  acc_ = &acc;
  struct Reset {
    StatsAccumulator** p;
    ~Reset() { *p = nullptr; }
  } reset{&acc_};
  KVCache cache(c, ctx_);
  const size_t H = static_cast<size_t>(c.hidden);
  std::vector<float> x;
  for (size_t ch = 0; ch < chunks_.size(); ++ch) {
    const size_t T = chunks_[ch].size();
    for (int m = 0; m < 2; ++m) {  // the source model, then the partly quantized one
      const Model& model = m == 0 ? *src_ : *q_;
      std::vector<float>& in = m == 0 ? src_x_[ch] : q_x_[ch];
      acc.NewRun();
      if (layer == c.layers) {
        TESSERA_RETURN_IF_ERROR(model.ForwardHead(in.data(), T, nullptr));
      } else if (m == 0 && src_moves) {
        TESSERA_RETURN_IF_ERROR(model.ForwardLayers(cache, T, layer, layer + 1, in.data()));
      } else {
        x.assign(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(T * H));
        TESSERA_RETURN_IF_ERROR(model.ForwardLayers(cache, T, layer, layer + 1, x.data(), layer_stop));
      }
    }
    TESSERA_RETURN_IF_ERROR(acc.EndChunk());
  }
  if (src_moves) src_layer_ = layer + 1;
  return acc.Finish(static_cast<int64_t>(tokens_));
}

}  // namespace tessera
