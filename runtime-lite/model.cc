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
  if (c.positions == "learned") {
    TESSERA_ASSIGN_OR_RETURN(pos_embd_, pkg_->embedding().Get("pos_embd"));
    if (pos_embd_->shape.size() != 2 || pos_embd_->shape[0] != c.max_ctx || pos_embd_->shape[1] != H)
      return FileError(pkg_->embedding().path(), "pos_embd has the wrong shape");
  }
  const bool ln = c.norm == "layer";
  for (int64_t i = 0; i < c.layers; ++i) {
    const TensorPack& b = pkg_->block(i);
    Layer L;
    L.key = absl::StrCat("block_", i);
    TESSERA_ASSIGN_OR_RETURN(L.attn_norm, VectorView(b, "attn_norm", H));
    TESSERA_ASSIGN_OR_RETURN(L.ffn_norm, VectorView(b, "ffn_norm", H));
    if (ln) {
      TESSERA_ASSIGN_OR_RETURN(L.attn_norm_b, VectorView(b, "attn_norm.bias", H));
      TESSERA_ASSIGN_OR_RETURN(L.ffn_norm_b, VectorView(b, "ffn_norm.bias", H));
    }
    TESSERA_ASSIGN_OR_RETURN(L.wq, MatrixView(b, "attn_q", Q, H));
    TESSERA_ASSIGN_OR_RETURN(L.wk, MatrixView(b, "attn_k", KV, H));
    TESSERA_ASSIGN_OR_RETURN(L.wv, MatrixView(b, "attn_v", KV, H));
    TESSERA_ASSIGN_OR_RETURN(L.wo, MatrixView(b, "attn_output", H, Q));
    if (c.mlp == "gated") {
      TESSERA_ASSIGN_OR_RETURN(L.w_gate, MatrixView(b, "ffn_gate", F, H));
    }
    TESSERA_ASSIGN_OR_RETURN(L.w_up, MatrixView(b, "ffn_up", F, H));
    TESSERA_ASSIGN_OR_RETURN(L.w_down, MatrixView(b, "ffn_down", H, F));
    if (c.qkv_bias) {
      TESSERA_ASSIGN_OR_RETURN(L.bq, VectorView(b, "attn_q.bias", Q));
      TESSERA_ASSIGN_OR_RETURN(L.bk, VectorView(b, "attn_k.bias", KV));
      TESSERA_ASSIGN_OR_RETURN(L.bv, VectorView(b, "attn_v.bias", KV));
    }
    if (c.attn_out_bias) {
      TESSERA_ASSIGN_OR_RETURN(L.bo, VectorView(b, "attn_output.bias", H));
    }
    if (c.mlp_bias) {
      if (c.mlp == "gated") {
        TESSERA_ASSIGN_OR_RETURN(L.b_gate, VectorView(b, "ffn_gate.bias", F));
      }
      TESSERA_ASSIGN_OR_RETURN(L.b_up, VectorView(b, "ffn_up.bias", F));
      TESSERA_ASSIGN_OR_RETURN(L.b_down, VectorView(b, "ffn_down.bias", H));
    }
    if (c.qk_norm) {
      TESSERA_ASSIGN_OR_RETURN(L.q_norm, VectorView(b, "attn_q_norm", c.head_dim));
      TESSERA_ASSIGN_OR_RETURN(L.k_norm, VectorView(b, "attn_k_norm", c.head_dim));
    }
    layers_.push_back(L);
  }
  TESSERA_ASSIGN_OR_RETURN(output_norm_, VectorView(pkg_->lm(), "output_norm", H));
  if (ln) {
    TESSERA_ASSIGN_OR_RETURN(output_norm_b_, VectorView(pkg_->lm(), "output_norm.bias", H));
  }
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
    rope_inv_freq_[static_cast<size_t>(i)] = 1.0f / std::pow(static_cast<float>(c.rope_theta), expo);
  }
  return absl::OkStatus();
}

void Model::Linear(const std::string& key, const kernels::WeightMatrix& w, const float* bias, const float* x,
                   size_t T, size_t ldx, size_t k, float* y, size_t ldy) const {
  if (observer_) observer_(key, x, T, ldx, k);
  const size_t min_rows = std::max<size_t>(8, 4096 / std::max<size_t>(1, w.cols * T));
  ThreadPool::Global().ParallelFor(w.rows, min_rows, [&](size_t r0, size_t r1) {
    kernels::MatMul(w, x, T, ldx, y, ldy, r0, r1);
  });
  if (bias)
    for (size_t t = 0; t < T; ++t) kernels::Axpy(1.0f, bias, w.rows, y + t * ldy);
}

void Model::Norm(const float* x, const float* w, const float* b, size_t n, float* out) const {
  const float eps = static_cast<float>(config().norm_eps);
  if (config().norm == "rms") {
    kernels::RMSNorm(x, w, n, eps, out);
    return;
  }
  double mean = 0, var = 0;
  for (size_t i = 0; i < n; ++i) mean += x[i];
  mean /= static_cast<double>(n);
  for (size_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= static_cast<double>(n);
  const float inv = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
  const float m = static_cast<float>(mean);
  for (size_t i = 0; i < n; ++i) out[i] = (x[i] - m) * inv * w[i] + b[i];
}

namespace {
inline float GeluTanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
}  // namespace

absl::Status Model::Forward(KVCache& cache, const int32_t* ids, size_t T, int64_t pos0, float* logits,
                            bool all_logits) const {
  SeqInput in;
  in.cache = &cache;
  in.ids = ids;
  in.n = T;
  in.pos0 = pos0;
  in.logits = logits;
  in.all_logits = all_logits;
  return ForwardBatch({in});
}

absl::Status Model::ForwardBatch(const std::vector<SeqInput>& seqs) const {
  const ModelConfig& c = config();
  size_t T = 0;
  for (const auto& sq : seqs) {
    if (sq.n == 0) continue;
    if (sq.pos0 < 0 || sq.pos0 + static_cast<int64_t>(sq.n) > sq.cache->n_ctx())
      return absl::OutOfRangeError(absl::StrCat("context overflow: positions ", sq.pos0, "..",
                                                sq.pos0 + static_cast<int64_t>(sq.n) - 1, " exceed the context size ",
                                                sq.cache->n_ctx()));
    if (c.positions == "learned" && sq.pos0 + static_cast<int64_t>(sq.n) > c.max_ctx)
      return absl::OutOfRangeError(absl::StrCat("position ", sq.pos0 + static_cast<int64_t>(sq.n) - 1,
                                                " exceeds the model's learned positions (", c.max_ctx, ")"));
    for (size_t t = 0; t < sq.n; ++t)
      if (sq.ids[t] < 0 || sq.ids[t] >= c.vocab)
        return absl::InvalidArgumentError(absl::StrCat("token id ", sq.ids[t], " out of range [0, ", c.vocab, ")"));
    T += sq.n;
  }
  if (T == 0) return absl::OkStatus();
  // Row r of the batch: which sequence, which position.
  std::vector<const SeqInput*> row_seq(T);
  std::vector<int64_t> row_pos(T);
  std::vector<int32_t> row_id(T);
  {
    size_t r = 0;
    for (const auto& sq : seqs)
      for (size_t t = 0; t < sq.n; ++t, ++r) {
        row_seq[r] = &sq;
        row_pos[r] = sq.pos0 + static_cast<int64_t>(t);
        row_id[r] = sq.ids[t];
      }
  }
  const size_t H = static_cast<size_t>(c.hidden), D = static_cast<size_t>(c.head_dim);
  const size_t NH = static_cast<size_t>(c.heads), NKV = static_cast<size_t>(c.kv_heads);
  const size_t Q = NH * D, KV = NKV * D, F = static_cast<size_t>(c.ffn);
  const size_t ldh = Padded(H), ldq = Padded(Q), ldf = Padded(F);
  std::vector<float> x(T * H), xn(T * ldh, 0.0f), q(T * Q), k(T * KV), v(T * KV), att(T * ldq, 0.0f),
      proj(T * H), gate(c.mlp == "gated" ? T * F : 0), up(T * F), hid(T * ldf, 0.0f);

  std::vector<float> row(H);
  for (size_t t = 0; t < T; ++t) {
    float* xt = x.data() + t * H;
    embedding_->RowToF32(static_cast<size_t>(row_id[t]), xt);
    if (c.embed_scale != 1.0) {
      const float s = static_cast<float>(c.embed_scale);
      for (size_t i = 0; i < H; ++i) xt[i] *= s;
    }
    if (pos_embd_ != nullptr) {
      pos_embd_->RowToF32(static_cast<size_t>(row_pos[t]), row.data());
      for (size_t i = 0; i < H; ++i) xt[i] += row[i];
    }
  }

  // RoPE tables for these positions.
  const bool use_rope = c.positions == "rope";
  const size_t half = D / 2;
  std::vector<float> cosv(T * half), sinv(T * half);
  for (size_t t = 0; t < T && use_rope; ++t) {
    const float pos = static_cast<float>(row_pos[t]);
    for (size_t i = 0; i < half; ++i) {
      const float ang = pos * rope_inv_freq_[i];
      cosv[t * half + i] = static_cast<float>(std::cos(static_cast<double>(ang)));
      sinv[t * half + i] = static_cast<float>(std::sin(static_cast<double>(ang)));
    }
  }
  const bool interleaved = c.rope_convention == "interleaved";
  auto rope = [&](float* vec, size_t t) {
    if (!use_rope) return;
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
    const std::string& lk = L.key;
    for (size_t t = 0; t < T; ++t) Norm(x.data() + t * H, L.attn_norm, L.attn_norm_b, H, xn.data() + t * ldh);
    Linear(lk + "/attn_q", L.wq, L.bq, xn.data(), T, ldh, H, q.data(), Q);
    Linear(lk + "/attn_k", L.wk, L.bk, xn.data(), T, ldh, H, k.data(), KV);
    Linear(lk + "/attn_v", L.wv, L.bv, xn.data(), T, ldh, H, v.data(), KV);
    for (size_t t = 0; t < T; ++t) {
      for (size_t h = 0; h < NH; ++h) {
        float* qh = q.data() + t * Q + h * D;
        if (L.q_norm) kernels::RMSNorm(qh, L.q_norm, D, eps, qh);
        rope(qh, t);
      }
      for (size_t h = 0; h < NKV; ++h) {
        float* kh = k.data() + t * KV + h * D;
        if (L.k_norm) kernels::RMSNorm(kh, L.k_norm, D, eps, kh);
        rope(kh, t);
        KVCache& cache = *row_seq[t]->cache;
        const int64_t pos = row_pos[t];
        std::memcpy(cache.k(static_cast<int64_t>(l), static_cast<int64_t>(h), pos), kh, D * 4);
        std::memcpy(cache.v(static_cast<int64_t>(l), static_cast<int64_t>(h), pos), v.data() + t * KV + h * D, D * 4);
      }
    }
    // Causal attention, parallel over (token, head).
    ThreadPool::Global().ParallelFor(T * NH, 4, [&](size_t b, size_t e) {
      std::vector<float> scores;
      for (size_t idx = b; idx < e; ++idx) {
        const size_t t = idx / NH, h = idx % NH, kvh = h / group;
        KVCache& cache = *row_seq[t]->cache;
        const int64_t n = row_pos[t] + 1;
        scores.resize(static_cast<size_t>(n));
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
    Linear(lk + "/attn_output", L.wo, L.bo, att.data(), T, ldq, Q, proj.data(), H);
    for (size_t i = 0; i < T * H; ++i) x[i] += proj[i];
    for (size_t t = 0; t < T; ++t) Norm(x.data() + t * H, L.ffn_norm, L.ffn_norm_b, H, xn.data() + t * ldh);
    Linear(lk + "/ffn_up", L.w_up, L.b_up, xn.data(), T, ldh, H, up.data(), F);
    if (c.mlp == "gated") {
      Linear(lk + "/ffn_gate", L.w_gate, L.b_gate, xn.data(), T, ldh, H, gate.data(), F);
      for (size_t t = 0; t < T; ++t) {
        const float* g = gate.data() + t * F;
        const float* u = up.data() + t * F;
        float* o = hid.data() + t * ldf;
        if (c.activation == "silu") {
          kernels::SiluMul(g, u, F, o);
        } else {
          for (size_t i = 0; i < F; ++i) o[i] = GeluTanh(g[i]) * u[i];
        }
      }
    } else {
      for (size_t t = 0; t < T; ++t) {
        const float* u = up.data() + t * F;
        float* o = hid.data() + t * ldf;
        for (size_t i = 0; i < F; ++i)
          o[i] = c.activation == "silu" ? u[i] / (1.0f + std::exp(-u[i])) : GeluTanh(u[i]);
      }
    }
    Linear(lk + "/ffn_down", L.w_down, L.b_down, hid.data(), T, ldf, F, proj.data(), H);
    for (size_t i = 0; i < T * H; ++i) x[i] += proj[i];
  }
  // Only the rows whose logits are wanted go through the head.
  std::vector<size_t> out_rows;
  {
    size_t r = 0;
    for (const auto& sq : seqs) {
      for (size_t t = 0; t < sq.n; ++t, ++r)
        if (sq.all_logits || t + 1 == sq.n) out_rows.push_back(r);
    }
  }
  const size_t n_out = out_rows.size();
  for (size_t i = 0; i < n_out; ++i)
    Norm(x.data() + out_rows[i] * H, output_norm_, output_norm_b_, H, xn.data() + i * ldh);
  const size_t V = static_cast<size_t>(c.vocab);
  if (seqs.size() == 1 && seqs[0].n > 0) {
    Linear("lm/output", output_, nullptr, xn.data(), n_out, ldh, H, seqs[0].logits, V);
    return absl::OkStatus();
  }
  std::vector<float> lg(n_out * V);
  Linear("lm/output", output_, nullptr, xn.data(), n_out, ldh, H, lg.data(), V);
  size_t i = 0;
  for (const auto& sq : seqs) {
    const size_t k = sq.n == 0 ? 0 : (sq.all_logits ? sq.n : 1);
    if (k) std::memcpy(sq.logits, lg.data() + i * V, k * V * 4);
    i += k;
  }
  return absl::OkStatus();
}

}  // namespace tessera
