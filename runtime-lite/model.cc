#include "runtime-lite/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/thread_pool.h"

namespace tessera {

namespace {
constexpr size_t kPad = 128;  // activation rows are padded so any group-padded K fits
size_t Padded(size_t n) { return (n + kPad - 1) / kPad * kPad; }

absl::StatusOr<kernels::WeightMatrix> MatrixView(const TensorPack& pack, const std::string& name,
                                                 int64_t rows, int64_t cols) {
  TESSERA_ASSIGN_OR_RETURN(const PackTensor* t, pack.Get(name));
  if (t->shape.size() != 2 || t->shape[0] != rows || t->shape[1] != cols)
    return FileError(pack.path(), absl::StrCat("tensor ", name, " has the wrong shape (expected [", rows, ", ", cols, "])"));
  if (t->cols > Padded(static_cast<size_t>(cols)))
    return FileError(pack.path(), absl::StrCat("tensor ", name, ": row padding too large"));
  kernels::WeightMatrix w;
  w.type = static_cast<kernels::WType>(t->qtype);
  w.data = t->data;
  w.scales = t->scales;
  w.mins = t->mins;
  w.rows = static_cast<size_t>(rows);
  w.cols = t->cols;
  w.group = t->group;
  return w;
}

absl::StatusOr<const float*> VectorView(const TensorPack& pack, const std::string& name, int64_t n) {
  TESSERA_ASSIGN_OR_RETURN(const PackTensor* t, pack.Get(name));
  if (t->qtype != QType::kF32 || t->shape.size() != 1 || t->shape[0] != n)
    return FileError(pack.path(), absl::StrCat("tensor ", name, " must be f32 [", n, "]"));
  return reinterpret_cast<const float*>(t->data);
}
}  // namespace

KVCache::KVCache(const ModelConfig& c, int64_t n_ctx)
    : n_ctx_(n_ctx), kv_heads_(c.kv_heads), head_dim_(c.head_dim) {
  const size_t n = static_cast<size_t>(c.layers * c.kv_heads * n_ctx * c.head_dim);
  k_.assign(n, 0.0f);
  v_.assign(n, 0.0f);
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir) {
  TESSERA_ASSIGN_OR_RETURN(auto pkg, Package::Open(dir));
  return Load(std::move(pkg));
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(std::unique_ptr<Package> pkg) {
  std::unique_ptr<Model> m(new Model());
  m->pkg_ = std::move(pkg);
  TESSERA_RETURN_IF_ERROR(m->Bind());
  return m;
}

absl::Status Model::Bind() {
  const ModelConfig& c = config();
  const int64_t H = c.hidden, Q = c.heads * c.head_dim, KV = c.kv_heads * c.head_dim, F = c.ffn;
  TESSERA_ASSIGN_OR_RETURN(embedding_, pkg_->embedding().Get("token_embd"));
  if (embedding_->shape.size() != 2 || embedding_->shape[0] != c.vocab || embedding_->shape[1] != H)
    return FileError(pkg_->embedding().path(), "token_embd has the wrong shape");
  for (int64_t i = 0; i < c.layers; ++i) {
    const TensorPack& b = pkg_->block(i);
    Layer L;
    TESSERA_ASSIGN_OR_RETURN(L.attn_norm, VectorView(b, "attn_norm", H));
    TESSERA_ASSIGN_OR_RETURN(L.ffn_norm, VectorView(b, "ffn_norm", H));
    TESSERA_ASSIGN_OR_RETURN(L.wq, MatrixView(b, "attn_q", Q, H));
    TESSERA_ASSIGN_OR_RETURN(L.wk, MatrixView(b, "attn_k", KV, H));
    TESSERA_ASSIGN_OR_RETURN(L.wv, MatrixView(b, "attn_v", KV, H));
    TESSERA_ASSIGN_OR_RETURN(L.wo, MatrixView(b, "attn_output", H, Q));
    TESSERA_ASSIGN_OR_RETURN(L.w_gate, MatrixView(b, "ffn_gate", F, H));
    TESSERA_ASSIGN_OR_RETURN(L.w_up, MatrixView(b, "ffn_up", F, H));
    TESSERA_ASSIGN_OR_RETURN(L.w_down, MatrixView(b, "ffn_down", H, F));
    if (c.qkv_bias) {
      TESSERA_ASSIGN_OR_RETURN(L.bq, VectorView(b, "attn_q.bias", Q));
      TESSERA_ASSIGN_OR_RETURN(L.bk, VectorView(b, "attn_k.bias", KV));
      TESSERA_ASSIGN_OR_RETURN(L.bv, VectorView(b, "attn_v.bias", KV));
    }
    layers_.push_back(L);
  }
  TESSERA_ASSIGN_OR_RETURN(output_norm_, VectorView(pkg_->lm(), "output_norm", H));
  if (c.tie_embeddings) {
    TESSERA_ASSIGN_OR_RETURN(output_, MatrixView(pkg_->embedding(), "token_embd", c.vocab, H));
  } else {
    TESSERA_ASSIGN_OR_RETURN(output_, MatrixView(pkg_->lm(), "output", c.vocab, H));
  }
  // RoPE inverse frequencies, computed in float32 like transformers / llama2.c.
  const int64_t half = c.head_dim / 2;
  rope_inv_freq_.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(c.head_dim);
    rope_inv_freq_[static_cast<size_t>(i)] =
        1.0f / std::pow(static_cast<float>(c.rope_theta), expo);
  }
  return absl::OkStatus();
}

void Model::Linear(const kernels::WeightMatrix& w, const float* x, size_t T, size_t ldx, float* y,
                   size_t ldy) const {
  const size_t min_rows = std::max<size_t>(8, 4096 / std::max<size_t>(1, w.cols * T));
  ThreadPool::Global().ParallelFor(w.rows, min_rows, [&](size_t r0, size_t r1) {
    kernels::MatMul(w, x, T, ldx, y, ldy, r0, r1);
  });
}

absl::Status Model::Forward(KVCache& cache, const int32_t* ids, size_t T, int64_t pos0, float* logits,
                            bool all_logits) const {
  const ModelConfig& c = config();
  if (T == 0) return absl::OkStatus();
  if (pos0 < 0 || pos0 + static_cast<int64_t>(T) > cache.n_ctx())
    return absl::OutOfRangeError(absl::StrCat("context overflow: positions ", pos0, "..", pos0 + static_cast<int64_t>(T) - 1,
                                              " exceed the context size ", cache.n_ctx()));
  for (size_t t = 0; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= c.vocab)
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[t], " out of range [0, ", c.vocab, ")"));

  const size_t H = static_cast<size_t>(c.hidden), D = static_cast<size_t>(c.head_dim);
  const size_t NH = static_cast<size_t>(c.heads), NKV = static_cast<size_t>(c.kv_heads);
  const size_t Q = NH * D, KV = NKV * D, F = static_cast<size_t>(c.ffn);
  const size_t ldh = Padded(H), ldq = Padded(Q), ldf = Padded(F);
  std::vector<float> x(T * H), xn(T * ldh, 0.0f), q(T * Q), k(T * KV), v(T * KV), att(T * ldq, 0.0f),
      proj(T * H), gate(T * F), up(T * F), hid(T * ldf, 0.0f);

  for (size_t t = 0; t < T; ++t) embedding_->RowToF32(static_cast<size_t>(ids[t]), x.data() + t * H);

  // RoPE tables for these positions.
  const size_t half = D / 2;
  std::vector<float> cosv(T * half), sinv(T * half);
  for (size_t t = 0; t < T; ++t) {
    const float pos = static_cast<float>(pos0 + static_cast<int64_t>(t));
    for (size_t i = 0; i < half; ++i) {
      const float ang = pos * rope_inv_freq_[i];
      cosv[t * half + i] = static_cast<float>(std::cos(static_cast<double>(ang)));
      sinv[t * half + i] = static_cast<float>(std::sin(static_cast<double>(ang)));
    }
  }
  const bool interleaved = c.rope_convention == "interleaved";
  auto rope = [&](float* vec, size_t t) {
    const float* cs = cosv.data() + t * half;
    const float* sn = sinv.data() + t * half;
    for (size_t i = 0; i < half; ++i) {
      const size_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
      const float x0 = vec[a], x1 = vec[b];
      vec[a] = x0 * cs[i] - x1 * sn[i];
      vec[b] = x0 * sn[i] + x1 * cs[i];
    }
  };
  const float eps = static_cast<float>(c.norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const size_t group = NH / NKV;

  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    for (size_t t = 0; t < T; ++t) kernels::RMSNorm(x.data() + t * H, L.attn_norm, H, eps, xn.data() + t * ldh);
    Linear(L.wq, xn.data(), T, ldh, q.data(), Q);
    Linear(L.wk, xn.data(), T, ldh, k.data(), KV);
    Linear(L.wv, xn.data(), T, ldh, v.data(), KV);
    for (size_t t = 0; t < T; ++t) {
      if (L.bq) {
        kernels::Axpy(1.0f, L.bq, Q, q.data() + t * Q);
        kernels::Axpy(1.0f, L.bk, KV, k.data() + t * KV);
        kernels::Axpy(1.0f, L.bv, KV, v.data() + t * KV);
      }
      for (size_t h = 0; h < NH; ++h) rope(q.data() + t * Q + h * D, t);
      for (size_t h = 0; h < NKV; ++h) {
        rope(k.data() + t * KV + h * D, t);
        const int64_t pos = pos0 + static_cast<int64_t>(t);
        std::memcpy(cache.k(static_cast<int64_t>(l), static_cast<int64_t>(h), pos), k.data() + t * KV + h * D, D * 4);
        std::memcpy(cache.v(static_cast<int64_t>(l), static_cast<int64_t>(h), pos), v.data() + t * KV + h * D, D * 4);
      }
    }
    // Causal attention, parallel over (token, head).
    ThreadPool::Global().ParallelFor(T * NH, 4, [&](size_t b, size_t e) {
      std::vector<float> scores(static_cast<size_t>(pos0) + T);
      for (size_t idx = b; idx < e; ++idx) {
        const size_t t = idx / NH, h = idx % NH, kvh = h / group;
        const int64_t n = pos0 + static_cast<int64_t>(t) + 1;
        const float* qv = q.data() + t * Q + h * D;
        for (int64_t j = 0; j < n; ++j)
          scores[static_cast<size_t>(j)] =
              kernels::Dot(qv, cache.k(static_cast<int64_t>(l), static_cast<int64_t>(kvh), j), D) * scale;
        kernels::Softmax(scores.data(), static_cast<size_t>(n));
        float* out = att.data() + t * ldq + h * D;
        std::fill(out, out + D, 0.0f);
        for (int64_t j = 0; j < n; ++j)
          kernels::Axpy(scores[static_cast<size_t>(j)], cache.v(static_cast<int64_t>(l), static_cast<int64_t>(kvh), j), D, out);
      }
    });
    Linear(L.wo, att.data(), T, ldq, proj.data(), H);
    for (size_t i = 0; i < T * H; ++i) x[i] += proj[i];
    for (size_t t = 0; t < T; ++t) kernels::RMSNorm(x.data() + t * H, L.ffn_norm, H, eps, xn.data() + t * ldh);
    Linear(L.w_gate, xn.data(), T, ldh, gate.data(), F);
    Linear(L.w_up, xn.data(), T, ldh, up.data(), F);
    for (size_t t = 0; t < T; ++t) kernels::SiluMul(gate.data() + t * F, up.data() + t * F, F, hid.data() + t * ldf);
    Linear(L.w_down, hid.data(), T, ldf, proj.data(), H);
    for (size_t i = 0; i < T * H; ++i) x[i] += proj[i];
  }
  const size_t first = all_logits ? 0 : T - 1;
  const size_t n_out = T - first;
  for (size_t t = 0; t < n_out; ++t)
    kernels::RMSNorm(x.data() + (first + t) * H, output_norm_, H, eps, xn.data() + t * ldh);
  Linear(output_, xn.data(), n_out, ldh, logits, static_cast<size_t>(c.vocab));
  return absl::OkStatus();
}

}  // namespace tessera
