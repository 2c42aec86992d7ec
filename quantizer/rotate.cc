#include "quantizer/rotate.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "formats/package.h"

namespace tessera::quant {
namespace fs = std::filesystem;

void Fwht(double* x, size_t n) {
  for (size_t h = 1; h < n; h *= 2)
    for (size_t i = 0; i < n; i += 2 * h)
      for (size_t j = i; j < i + h; ++j) {
        const double a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

void Rotation::ApplyRow(double* x) const {
  if (kind == Kind::kHadamard) {
    for (size_t i = 0; i < n; ++i) x[i] *= signs[i];  // (x diag(s)) H / sqrt(n); H is symmetric
    Fwht(x, n);
    const double inv = 1.0 / std::sqrt(static_cast<double>(n));
    for (size_t i = 0; i < n; ++i) x[i] *= inv;
    return;
  }
  std::vector<double> y(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    const double xi = x[i];
    const double* q = dense.data() + i * n;
    for (size_t j = 0; j < n; ++j) y[j] += xi * q[j];
  }
  std::copy(y.begin(), y.end(), x);
}

void Rotation::ApplyRow(float* x) const {
  std::vector<double> d(x, x + n);
  ApplyRow(d.data());
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(d[i]);
}

std::vector<double> Rotation::Dense() const {
  if (kind == Kind::kRandomOrthogonal) return dense;
  std::vector<double> q(n * n);
  const double inv = 1.0 / std::sqrt(static_cast<double>(n));
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j)
      q[i * n + j] = signs[i] * ((std::popcount(i & j) & 1) ? -inv : inv);
  return q;
}

const char* Rotation::KindName() const {
  return kind == Kind::kHadamard ? "randomized-hadamard" : "random-orthogonal-qr";
}

Rotation MakeRotation(size_t n, uint64_t seed) {
  Rotation r;
  r.n = n;
  r.seed = seed;
  std::mt19937_64 rng(seed);
  if (n > 0 && std::has_single_bit(n)) {
    r.kind = Rotation::Kind::kHadamard;
    r.signs.resize(n);
    for (size_t i = 0; i < n; ++i) r.signs[i] = (rng() >> 63) ? -1.0 : 1.0;
    return r;
  }
  r.kind = Rotation::Kind::kRandomOrthogonal;
  // Gaussian entries by Box-Muller on 53-bit uniforms (the same numbers on every platform,
  // unlike std::normal_distribution).
  auto uniform = [&] { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; };
  std::vector<double> a(n * n);  // column-major: column j at a[j * n]
  for (size_t i = 0; i < n * n; i += 2) {
    const double u1 = uniform(), u2 = uniform();
    const double rad = std::sqrt(-2.0 * std::log(u1));
    a[i] = rad * std::cos(2.0 * M_PI * u2);
    if (i + 1 < n * n) a[i + 1] = rad * std::sin(2.0 * M_PI * u2);
  }
  // Q of A = QR with R's diagonal positive: classical Gram-Schmidt, each column re-orthogonalised
  // once more ("twice is enough"), then normalised.
  for (size_t j = 0; j < n; ++j) {
    double* v = a.data() + j * n;
    for (int pass = 0; pass < 2; ++pass)
      for (size_t i = 0; i < j; ++i) {
        const double* q = a.data() + i * n;
        double dot = 0;
        for (size_t t = 0; t < n; ++t) dot += q[t] * v[t];
        for (size_t t = 0; t < n; ++t) v[t] -= dot * q[t];
      }
    double norm = 0;
    for (size_t t = 0; t < n; ++t) norm += v[t] * v[t];
    norm = std::sqrt(norm);
    for (size_t t = 0; t < n; ++t) v[t] /= norm;
  }
  r.dense.resize(n * n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) r.dense[i * n + j] = a[j * n + i];
  return r;
}

namespace {
TensorData F32Tensor(const std::string& name, const std::vector<int64_t>& shape, const std::vector<float>& v) {
  TensorData d;
  d.name = name;
  d.qtype = QType::kF32;
  d.shape = shape;
  d.cols = static_cast<uint64_t>(shape.back());
  d.data.resize(v.size() * 4);
  std::memcpy(d.data.data(), v.data(), d.data.size());
  return d;
}

std::vector<float> Vector(const PackTensor& t) {
  std::vector<float> v(t.numel());
  t.RowToF32(0, v.data());
  return v;
}

// Every row r of w ([rows][n]) -> (r o g) Q (g may be empty: no gain).
void RotateRows(std::vector<float>* w, size_t rows, const std::vector<float>& g, const Rotation& q) {
  const size_t n = q.n;
  ThreadPool::Global().ParallelFor(rows, 16, [&](size_t r0, size_t r1) {
    std::vector<double> x(n);
    for (size_t r = r0; r < r1; ++r) {
      float* row = w->data() + r * n;
      for (size_t j = 0; j < n; ++j) x[j] = static_cast<double>(row[j]) * (g.empty() ? 1.0 : static_cast<double>(g[j]));
      q.ApplyRow(x.data());
      for (size_t j = 0; j < n; ++j) row[j] = static_cast<float>(x[j]);
    }
  });
}

// Every column c of w ([n][cols]) -> Q^T c.
void RotateColumns(std::vector<float>* w, size_t cols, const Rotation& q) {
  const size_t n = q.n;
  ThreadPool::Global().ParallelFor(cols, 16, [&](size_t c0, size_t c1) {
    std::vector<double> x(n);
    for (size_t c = c0; c < c1; ++c) {
      for (size_t i = 0; i < n; ++i) x[i] = (*w)[i * cols + c];
      q.ApplyRow(x.data());
      for (size_t i = 0; i < n; ++i) (*w)[i * cols + c] = static_cast<float>(x[i]);
    }
  });
}
}  // namespace

absl::Status RotatePackage(const std::string& src_dir, const std::string& out_dir, uint64_t seed, bool heads,
                           bool force, nlohmann::ordered_json* info) {
  TESSERA_ASSIGN_OR_RETURN(auto pkg, Package::Open(src_dir));
  const ModelConfig& c = pkg->config();
  if (c.norm != "rms")
    return absl::InvalidArgumentError(absl::StrCat(
        src_dir, ": --rotate needs an RMSNorm model (Llama, Mistral, Qwen2, Qwen3); this one uses norm '", c.norm,
        "' (", c.source_arch.empty() ? c.family : c.source_arch,
        "): LayerNorm subtracts the mean, which does not commute with a rotation of the residual stream"));
  if (c.positions != "rope")
    return absl::InvalidArgumentError(
        absl::StrCat(src_dir, ": --rotate needs RoPE positions (this model has '", c.positions, "' position embeddings)"));
  const size_t H = static_cast<size_t>(c.hidden);
  const Rotation q = MakeRotation(H, seed);
  const size_t hd = static_cast<size_t>(c.head_dim), kvh = static_cast<size_t>(c.kv_heads),
               nh = static_cast<size_t>(c.heads);
  // Per-(layer, KV head) value rotations, seeded apart from the residual one.
  auto head_rotation = [&](int64_t layer, size_t h) {
    return MakeRotation(hd, seed * 0x9E3779B97F4A7C15ull + 1 + static_cast<uint64_t>(layer) * kvh + h);
  };

  TESSERA_ASSIGN_OR_RETURN(auto writer, PackageWriter::Create(out_dir, force));
  auto need = [&](const TensorPack& p, const std::string& file, const char* name) -> absl::StatusOr<const PackTensor*> {
    const PackTensor* t = p.Find(name);
    if (t == nullptr) return absl::InvalidArgumentError(absl::StrCat(src_dir, "/", file, ": no tensor ", name));
    return t;
  };
  auto check = [&](const PackTensor& t, const std::string& file, size_t dim, bool cols) -> absl::Status {
    const size_t got = cols ? t.logical_cols() : t.rows();
    if (got != H || (dim == 2 && t.shape.size() != 2))
      return absl::InvalidArgumentError(absl::StrCat(src_dir, "/", file, ": tensor ", t.name, " has ",
                                                     cols ? "K = " : "rows = ", got, ", expected the hidden width ", H));
    return absl::OkStatus();
  };

  // embedding.bin: e' = e Q.
  {
    const TensorPack& p = pkg->embedding();
    std::vector<TensorData> out;
    for (const PackTensor& t : p.tensors()) {
      std::vector<float> v = t.ToF32();
      if (t.name == "token_embd") {
        TESSERA_RETURN_IF_ERROR(check(t, "embedding.bin", 2, true));
        RotateRows(&v, t.rows(), {}, q);
      } else if (t.shape.size() == 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(src_dir, "/embedding.bin: tensor ", t.name, ": --rotate does not know how to rotate it"));
      }
      out.push_back(F32Tensor(t.name, t.shape, v));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack("embedding.bin", "embedding", -1, out));
  }
  // Blocks: readers (r o g) Q, writers Q^T W, their biases Q^T b, norms 1.
  for (int64_t l = 0; l < c.layers; ++l) {
    const TensorPack& p = pkg->block(l);
    const std::string file = BlockFileName(l);
    TESSERA_ASSIGN_OR_RETURN(const PackTensor* an, need(p, file, "attn_norm"));
    TESSERA_ASSIGN_OR_RETURN(const PackTensor* fn, need(p, file, "ffn_norm"));
    TESSERA_RETURN_IF_ERROR(check(*an, file, 1, true));
    TESSERA_RETURN_IF_ERROR(check(*fn, file, 1, true));
    const std::vector<float> ga = Vector(*an), gf = Vector(*fn);
    std::vector<Rotation> hr;
    if (heads)
      for (size_t h = 0; h < kvh; ++h) hr.push_back(head_rotation(l, h));
    std::vector<TensorData> out;
    for (const PackTensor& t : p.tensors()) {
      std::vector<float> v = t.ToF32();
      const std::string& n = t.name;
      if (heads && (n == "attn_v" || n == "attn_v.bias")) {
        // Rows of KV head h: v_h -> R_h^T v_h, i.e. every column slice c -> (c^T R_h)^T.
        const size_t cols = t.shape.size() == 2 ? t.logical_cols() : 1;
        if (t.numel() != kvh * hd * cols)
          return absl::InvalidArgumentError(absl::StrCat(src_dir, "/", file, ": tensor ", n, " is not ", kvh, " x ", hd, " rows"));
        ThreadPool::Global().ParallelFor(cols, 16, [&](size_t c0, size_t c1) {
          std::vector<double> x(hd);
          for (size_t cc = c0; cc < c1; ++cc)
            for (size_t h = 0; h < kvh; ++h) {
              for (size_t i = 0; i < hd; ++i) x[i] = v[(h * hd + i) * cols + cc];
              hr[h].ApplyRow(x.data());
              for (size_t i = 0; i < hd; ++i) v[(h * hd + i) * cols + cc] = static_cast<float>(x[i]);
            }
        });
      }
      if (heads && n == "attn_output") {
        // Columns of query head i (reading KV head i / (heads / kv_heads)): W_i -> W_i R.
        if (t.logical_cols() != nh * hd)
          return absl::InvalidArgumentError(absl::StrCat(src_dir, "/", file, ": tensor ", n, " has K = ", t.logical_cols(), ", not ", nh * hd));
        const size_t cols = t.logical_cols(), group = nh / kvh;
        ThreadPool::Global().ParallelFor(t.rows(), 16, [&](size_t r0, size_t r1) {
          std::vector<double> x(hd);
          for (size_t r = r0; r < r1; ++r)
            for (size_t i = 0; i < nh; ++i) {
              float* seg = v.data() + r * cols + i * hd;
              for (size_t j = 0; j < hd; ++j) x[j] = seg[j];
              hr[i / group].ApplyRow(x.data());
              for (size_t j = 0; j < hd; ++j) seg[j] = static_cast<float>(x[j]);
            }
        });
      }
      if (n == "attn_q" || n == "attn_k" || n == "attn_v" || n == "ffn_gate" || n == "ffn_up") {
        TESSERA_RETURN_IF_ERROR(check(t, file, 2, true));
        RotateRows(&v, t.rows(), n.rfind("attn", 0) == 0 ? ga : gf, q);
      } else if (n == "attn_output" || n == "ffn_down") {
        TESSERA_RETURN_IF_ERROR(check(t, file, 2, false));
        RotateColumns(&v, t.logical_cols(), q);
      } else if (n == "attn_output.bias" || n == "ffn_down.bias") {
        TESSERA_RETURN_IF_ERROR(check(t, file, 1, true));
        q.ApplyRow(v.data());
      } else if (n == "attn_norm" || n == "ffn_norm") {
        std::fill(v.begin(), v.end(), 1.0f);
      } else if (t.shape.size() == 2 || n == "attn_norm.bias" || n == "ffn_norm.bias") {
        return absl::InvalidArgumentError(
            absl::StrCat(src_dir, "/", file, ": tensor ", n, ": --rotate does not know how to rotate it"));
      }
      // Anything else (q/k/v and gate/up biases, Qwen3's per-head q/k norms) lives outside the
      // residual stream and is unchanged.
      out.push_back(F32Tensor(n, t.shape, v));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack(file, "block", l, out));
    p.ReleasePages();
  }
  // lm.bin: output' = E_or_W diag(g) Q, output_norm 1; a tied output is stored separately.
  {
    const TensorPack& p = pkg->lm();
    TESSERA_ASSIGN_OR_RETURN(const PackTensor* on, need(p, "lm.bin", "output_norm"));
    TESSERA_RETURN_IF_ERROR(check(*on, "lm.bin", 1, true));
    const std::vector<float> go = Vector(*on);
    std::vector<TensorData> out;
    for (const PackTensor& t : p.tensors()) {
      std::vector<float> v = t.ToF32();
      if (t.name == "output") {
        TESSERA_RETURN_IF_ERROR(check(t, "lm.bin", 2, true));
        RotateRows(&v, t.rows(), go, q);
      } else if (t.name == "output_norm") {
        std::fill(v.begin(), v.end(), 1.0f);
      } else if (t.shape.size() == 2 || t.name == "output_norm.bias") {
        return absl::InvalidArgumentError(
            absl::StrCat(src_dir, "/lm.bin: tensor ", t.name, ": --rotate does not know how to rotate it"));
      }
      out.push_back(F32Tensor(t.name, t.shape, v));
    }
    if (c.tie_embeddings) {
      const PackTensor& e = *pkg->embedding().Find("token_embd");
      std::vector<float> v = e.ToF32();
      RotateRows(&v, e.rows(), go, q);
      out.push_back(F32Tensor("output", e.shape, v));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack("lm.bin", "lm", -1, out));
  }
  TESSERA_RETURN_IF_ERROR(writer->WriteTokenizer(pkg->tokenizer()));

  nlohmann::ordered_json rot{{"method", q.KindName()},
                             {"seed", seed},
                             {"width", H},
                             {"norms_folded", true},
                             {"untied_output", c.tie_embeddings},
                             {"value_heads", heads ? nlohmann::ordered_json(MakeRotation(hd, 0).KindName()) : nlohmann::ordered_json(false)}};
  nlohmann::ordered_json m;
  for (auto& [k, v] : pkg->manifest().items()) {
    if (k == "format" || k == "format_version" || k == "files" || k == "quant" || k == "rotation") continue;
    m[k] = v;
  }
  if (c.tie_embeddings) m["arch"]["tie_embeddings"] = false;
  m["producer"] = {{"tool", "tessera"}, {"version", kTesseraVersion}, {"cmdline", "rotate"}};
  m["quant"] = {{"recipe", "f32"},
                {"type", "f32"},
                {"algorithm", "none"},
                {"base", {{"path", fs::absolute(src_dir).string()},
                          {"recipe", pkg->manifest().contains("quant") ? pkg->manifest()["quant"].value("recipe", "") : ""}}}};
  m["rotation"] = rot;
  if (info != nullptr) *info = rot;
  return writer->Commit(std::move(m));
}

}  // namespace tessera::quant
