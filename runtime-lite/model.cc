#include "runtime-lite/model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "quantizer/kernels/gemm.h"

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
  return Load(dir, Package::Options());
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir, const Package::Options& opts) {
  TESSERA_ASSIGN_OR_RETURN(auto pkg, Package::Open(dir, opts));
  return Load(std::move(pkg));
}

Model::~Model() {
  streamer_.reset();
  if (embed_fd_ >= 0) ::close(embed_fd_);
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(std::unique_ptr<Package> pkg) {
  std::unique_ptr<Model> m(new Model());
  m->pkg_ = std::move(pkg);
  TESSERA_RETURN_IF_ERROR(m->Bind());
  return m;
}

absl::StatusOr<Model::Layer> Model::BindLayer(const TensorPack& b, int64_t i) const {
  const ModelConfig& c = config();
  const int64_t H = c.hidden, Q = c.heads * c.head_dim, KV = c.kv_heads * c.head_dim, F = c.ffn;
  const bool ln = c.norm == "layer";
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
  return L;
}

absl::StatusOr<Model::Head> Model::BindHead(const TensorPack& lm, const TensorPack* embedding) const {
  const ModelConfig& c = config();
  Head h;
  TESSERA_ASSIGN_OR_RETURN(h.norm, VectorView(lm, "output_norm", c.hidden));
  if (c.norm == "layer") {
    TESSERA_ASSIGN_OR_RETURN(h.norm_b, VectorView(lm, "output_norm.bias", c.hidden));
  }
  if (c.tie_embeddings) {
    if (embedding == nullptr) return absl::InternalError("tied head needs the embedding pack");
    TESSERA_ASSIGN_OR_RETURN(h.output, MatrixView(*embedding, "token_embd", c.vocab, c.hidden));
  } else {
    TESSERA_ASSIGN_OR_RETURN(h.output, MatrixView(lm, "output", c.vocab, c.hidden));
  }
  return h;
}

absl::Status Model::Bind() {
  const ModelConfig& c = config();
  const int64_t H = c.hidden;
  // RoPE inverse frequencies, computed in float32 like transformers / llama2.c.
  const int64_t half = c.head_dim / 2;
  rope_inv_freq_.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(c.head_dim);
    rope_inv_freq_[static_cast<size_t>(i)] = 1.0f / std::pow(static_cast<float>(c.rope_theta), expo);
  }
  if (pkg_->streaming()) {
    TESSERA_ASSIGN_OR_RETURN(embed_index_, pkg_->LoadPack("embedding.bin", LoadMode::kIndexOnly));
    TESSERA_ASSIGN_OR_RETURN(embedding_, embed_index_->Get("token_embd"));
  } else {
    TESSERA_ASSIGN_OR_RETURN(embedding_, pkg_->embedding().Get("token_embd"));
  }
  const std::string epath = pkg_->FilePath("embedding.bin");
  if (embedding_->shape.size() != 2 || embedding_->shape[0] != c.vocab || embedding_->shape[1] != H)
    return FileError(epath, "token_embd has the wrong shape");
  if (c.positions == "learned") {
    const TensorPack& ep = pkg_->streaming() ? *embed_index_ : pkg_->embedding();
    TESSERA_ASSIGN_OR_RETURN(pos_embd_, ep.Get("pos_embd"));
    if (pos_embd_->shape.size() != 2 || pos_embd_->shape[0] != c.max_ctx || pos_embd_->shape[1] != H)
      return FileError(epath, "pos_embd has the wrong shape");
  }
  if (pkg_->streaming()) {
    TESSERA_RETURN_IF_ERROR(OpenDiskEmbedding());
    streamer_ = std::make_unique<BlockStreamer>(this);
    return absl::OkStatus();
  }
  for (int64_t i = 0; i < c.layers; ++i) {
    TESSERA_ASSIGN_OR_RETURN(Layer L, BindLayer(pkg_->block(i), i));
    layers_.push_back(L);
  }
  TESSERA_ASSIGN_OR_RETURN(head_, BindHead(pkg_->lm(), &pkg_->embedding()));
  // Only a file mapping may drop its pages (MADV_DONTNEED would zero the --memory full copy).
  const bool drop = pkg_->memory() == Package::Memory::kMmap;
  TESSERA_RETURN_IF_ERROR(RepackInto(Matrices(layers_.data(), layers_.size(), &head_), &repacked_, true, drop));
  if (drop) TESSERA_RETURN_IF_ERROR(CopyPlainToHugePages(Matrices(layers_.data(), layers_.size(), &head_), &plain_));
  rows_independent_ = ComputeRowsIndependent();
  return absl::OkStatus();
}

// ---- int8-activation path: runtime-only repacked weights ----
namespace {
bool Int8ActivationsEnabled() {
  const char* env = std::getenv("TESSERA_INT8_ACT");
  if (env != nullptr && std::string(env) == "0") return false;
  return kernels::Q8Fast();
}
}  // namespace

namespace {
// From this many tokens on, GEMM-layout matrices go through the AMX tiles where the CPU has them
// (16 tokens per tile; fewer would leave most of each tile empty).
constexpr size_t kAmxMinTokens = 16;

// Whether an int8-activation matrix of this type was repacked into the GEMM layout (gemm.h).
bool GemmLayout(kernels::WType t) {
  return t == kernels::WType::kI4Sym || t == kernels::WType::kI4Nl || t == kernels::WType::kI8;
}

}  // namespace

bool Model::ComputeRowsIndependent() {
  // Every linear on the int8-activation path, and none through the AMX-BF16 tiles, which serve
  // batches of more than 16 rows with other arithmetic than smaller batches (gemm.h).
  bool all_q8 = true, any_gemm = false;
  for (const auto& [w, q] : Matrices(layers_.data(), layers_.size(), &head_)) {
    all_q8 = all_q8 && q->data != nullptr;
    any_gemm = any_gemm || (q->data != nullptr && GemmLayout(q->type));
  }
  return all_q8 && !(any_gemm && kernels::GemmAmxBf16Available());
}

namespace {

// Lets the kernel drop the pages of [p, p + n) of a read-only file mapping (a later access
// simply faults them in again). Never call it on anonymous memory: its contents would be lost.
void DropPages(const void* p, size_t n) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}
}  // namespace

Model::RepackList Model::Matrices(Layer* layers, size_t n, Head* head) {
  RepackList todo;
  for (size_t i = 0; i < n; ++i) {
    Layer& L = layers[i];
    for (auto [w, q] : {std::pair{&L.wq, &L.q8q}, {&L.wk, &L.q8k}, {&L.wv, &L.q8v}, {&L.wo, &L.q8o},
                        {&L.w_gate, &L.q8gate}, {&L.w_up, &L.q8up}, {&L.w_down, &L.q8down}})
      todo.emplace_back(w, q);
  }
  if (head != nullptr) todo.emplace_back(&head->output, &head->q8out);
  return todo;
}

// One arena of at least `bytes`, 2 MiB aligned and advised so that the kernel backs it with huge
// pages (decode streams it once per token).
absl::Status Model::AllocHugePageArena(size_t bytes, const char* what, Arena* arena) {
  constexpr size_t kAlign = size_t{2} << 20;
  const size_t size = (bytes + kAlign - 1) / kAlign * kAlign;
  arena->reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, size)));
  if (!*arena) return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", size, " bytes for ", what));
  ::madvise(arena->get(), size, MADV_HUGEPAGE);
  return absl::OkStatus();
}

absl::Status Model::RepackInto(const RepackList& todo, Arena* arena, bool parallel, bool drop) {
  if (!Int8ActivationsEnabled()) return absl::OkStatus();
  // I4 sym / I8: the row-interleaved GEMM layout (every T); other int8-activation types: MatMulQ8's.
  auto rounded = [](const kernels::WeightMatrix& w) {
    return ((kernels::GemmSupported(w) ? kernels::GemmRepackedBytes(w) : kernels::Q8RepackedBytes(w)) + 63) / 64 * 64;
  };
  size_t total = 0;
  for (auto& [w, q] : todo)
    if (kernels::Q8Supported(*w)) total += rounded(*w);
  if (total == 0) return absl::OkStatus();
  TESSERA_RETURN_IF_ERROR(AllocHugePageArena(total, "repacked weights", arena));
  size_t used = 0;
  for (auto& [wp, q8] : todo) {
    const kernels::WeightMatrix& w = *wp;
    if (!kernels::Q8Supported(w)) continue;
    uint8_t* p = arena->get() + used;
    used += rounded(w);
    const bool gemm = kernels::GemmSupported(w);
    const size_t rbs = gemm ? kernels::GemmGroups(w.rows) : (w.rows + kernels::kQ8RowBlock - 1) / kernels::kQ8RowBlock;
    auto repack = [&](size_t b, size_t e) { gemm ? kernels::RepackGemm(w, b, e, p) : kernels::RepackQ8(w, b, e, p); };
    if (parallel) {
      ThreadPool::Global().ParallelFor(rbs, gemm ? 4 : 16, repack);
    } else {
      repack(0, rbs);
    }
    q8->type = w.type;
    q8->data = p;
    q8->rows = w.rows;
    q8->Kp = kernels::Q8PaddedK(w.cols);
    if (drop) {
      // The canonical codes and scales are not read again by this model.
      const size_t row_bytes = w.type == kernels::WType::kI8     ? w.cols
                               : w.type == kernels::WType::kI6Sym ? 3 * w.cols / 4
                                                                  : w.cols / 2;
      DropPages(w.data, w.rows * row_bytes);
      DropPages(w.scales, w.rows * (w.cols / w.group) * 2);
    }
  }
  return absl::OkStatus();
}

namespace {
size_t PlainBytes(const kernels::WeightMatrix& w) {
  switch (w.type) {
    case kernels::WType::kF16:
    case kernels::WType::kBF16:
      return w.rows * w.cols * 2;
    case kernels::WType::kF32:
      return w.rows * w.cols * 4;
    default:
      return 0;
  }
}
}  // namespace

// Decode reads every weight once per token. Read through the 4 KiB pages of the file mapping, the
// f16 matrices of the 1.1B benchmark model decoded 11.3 tok/s on the Xeon (2 threads), from 2 MiB
// pages 14.6 (one TLB entry per 2 MiB instead of per 4 KiB), so they get the same huge-page arena
// as the repacked int4 / int8 weights. The bytes are copied unchanged (TESSERA_HUGEPAGE_COPY=0:
// read them from the mapping).
absl::Status Model::CopyPlainToHugePages(const RepackList& todo, Arena* arena) {
  const char* env = std::getenv("TESSERA_HUGEPAGE_COPY");
  if (env != nullptr && std::string(env) == "0") return absl::OkStatus();
  size_t total = 0;
  for (auto& [w, q8] : todo)
    if (q8->data == nullptr) total += (PlainBytes(*w) + 63) / 64 * 64;
  if (total == 0) return absl::OkStatus();
  TESSERA_RETURN_IF_ERROR(AllocHugePageArena(total, "the weights", arena));
  size_t used = 0;
  for (auto& [wp, q8] : todo) {
    kernels::WeightMatrix& w = *wp;
    const size_t n = PlainBytes(w);
    if (q8->data != nullptr || n == 0) continue;
    uint8_t* dst = arena->get() + used;
    used += (n + 63) / 64 * 64;
    const uint8_t* src = static_cast<const uint8_t*>(w.data);
    constexpr size_t kChunk = size_t{1} << 20;
    ThreadPool::Global().ParallelFor((n + kChunk - 1) / kChunk, 1, [&](size_t b, size_t e) {
      std::memcpy(dst + b * kChunk, src + b * kChunk, std::min(n, e * kChunk) - b * kChunk);
    });
    DropPages(w.data, n);
    w.data = dst;
  }
  return absl::OkStatus();
}

// ---- stream mode: disk embedding rows ----
absl::Status Model::OpenDiskEmbedding() {
  const std::string path = pkg_->FilePath("embedding.bin");
  // Verify the whole file once (chunked reads; never held in memory).
  if (pkg_->manifest().contains("files")) {
    for (const auto& f : pkg_->manifest()["files"]) {
      if (f.value("path", "") != "embedding.bin" || !f.contains("xxh3_64")) continue;
      TESSERA_ASSIGN_OR_RETURN(std::string h, HashFile(path));
      if (h != f["xxh3_64"].get<std::string>())
        return FileError(path, absl::StrCat("checksum ", h, " does not match manifest"));
    }
  }
  embed_fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (embed_fd_ < 0) return FileError(path, "cannot open");
  return absl::OkStatus();
}

absl::Status Model::ReadEmbeddingRow(const PackTensor& t, size_t row, float* out) const {
  const std::string key = absl::StrCat(t.name, ":", row);
  {
    std::lock_guard<std::mutex> lock(embed_mu_);
    auto it = embed_cache_.find(key);
    if (it != embed_cache_.end()) {
      std::memcpy(out, it->second.data(), it->second.size() * 4);
      return absl::OkStatus();
    }
  }
  const size_t rows = t.rows();
  PackTensor one = t;
  one.shape = {1, static_cast<int64_t>(t.logical_cols())};
  std::vector<uint8_t> planes[3];
  const std::string path = pkg_->FilePath("embedding.bin");
  for (int p = 0; p < 3; ++p) {
    if (t.plane_bytes[p] == 0) continue;
    const size_t per_row = t.plane_bytes[p] / rows;
    planes[p].resize(per_row + 8);
    TESSERA_RETURN_IF_ERROR(PreadFull(embed_fd_, planes[p].data(), per_row, t.plane_offset[p] + row * per_row, path));
    stream_stats_.bytes_read += per_row;
  }
  one.data = planes[0].data();
  one.scales = t.plane_bytes[1] ? reinterpret_cast<const uint16_t*>(planes[1].data()) : nullptr;
  one.mins = t.plane_bytes[2] ? reinterpret_cast<const uint16_t*>(planes[2].data()) : nullptr;
  one.RowToF32(0, out);
  std::lock_guard<std::mutex> lock(embed_mu_);
  if (embed_cache_.size() >= 512) embed_cache_.clear();
  embed_cache_[key].assign(out, out + t.logical_cols());
  return absl::OkStatus();
}

// ---- stream mode: the block loader ----
Model::BlockStreamer::BlockStreamer(const Model* m) : model_(m), worker_([this] { Loop(); }) {}

Model::BlockStreamer::~BlockStreamer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

int Model::BlockStreamer::num_stages() const { return static_cast<int>(model_->config().layers) + 1; }

absl::StatusOr<std::unique_ptr<Model::Stage>> Model::BlockStreamer::LoadStage(int stage) {
  auto st = std::make_unique<Stage>();
  const Package& pkg = *model_->pkg_;
  const int L = static_cast<int>(model_->config().layers);
  if (stage < L) {
    TESSERA_ASSIGN_OR_RETURN(st->a, pkg.LoadPack(BlockFileName(stage), LoadMode::kRead));
    TESSERA_ASSIGN_OR_RETURN(st->layer, model_->BindLayer(*st->a, stage));
    TESSERA_RETURN_IF_ERROR(RepackInto(Matrices(&st->layer, 1, nullptr), &st->arena, false, false));
  } else {
    TESSERA_ASSIGN_OR_RETURN(st->a, pkg.LoadPack("lm.bin", LoadMode::kRead));
    if (model_->config().tie_embeddings) {
      TESSERA_ASSIGN_OR_RETURN(st->b, pkg.LoadPack("embedding.bin", LoadMode::kRead));
    }
    TESSERA_ASSIGN_OR_RETURN(st->head, model_->BindHead(*st->a, st->b.get()));
    TESSERA_RETURN_IF_ERROR(RepackInto(Matrices(nullptr, 0, &st->head), &st->arena, false, false));
  }
  st->bytes = st->a->file_bytes() + (st->b ? st->b->file_bytes() : 0);
  return st;
}

void Model::BlockStreamer::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || (want_ >= 0 && !ready_ && !error_.has_value()); });
    if (stop_) return;
    const int stage = want_;
    lock.unlock();
    auto res = LoadStage(stage);
    lock.lock();
    if (res.ok()) {
      ready_ = std::move(*res);
      ready_stage_ = stage;
    } else {
      error_ = res.status();
    }
    cv_.notify_all();
  }
}

absl::StatusOr<std::shared_ptr<Model::Stage>> Model::BlockStreamer::Acquire(int stage) {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  if (want_ != stage) {
    // Not what we prefetched: drop it and load the right one.
    ready_.reset();
    error_.reset();
    want_ = stage;
    ready_stage_ = -1;
    cv_.notify_all();
  }
  cv_.wait(lock, [&] { return (ready_ && ready_stage_ == stage) || error_.has_value(); });
  if (error_.has_value()) {
    absl::Status e = *error_;
    error_.reset();
    want_ = -1;
    return e;
  }
  std::shared_ptr<Stage> out(std::move(ready_));
  ready_stage_ = -1;
  model_->stream_stats_.bytes_read += out->bytes;
  model_->stream_stats_.stage_loads += 1;
  // Prefetch the next stage while this one computes.
  want_ = (stage + 1) % num_stages();
  cv_.notify_all();
  model_->stream_stats_.stall_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
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

void Model::LinearMulti(const std::string& key, const Q8Job* jobs, size_t n, const float* x, size_t T,
                        size_t ldx, size_t k, ActQ8& qa) const {
  bool all_q8 = true;
  for (size_t i = 0; i < n; ++i) all_q8 = all_q8 && jobs[i].q8 != nullptr && jobs[i].q8->data != nullptr;
  if (!all_q8) {
    for (size_t i = 0; i < n; ++i)
      Linear(key, *jobs[i].w, jobs[i].bias, x, T, ldx, k, jobs[i].y, jobs[i].ldy);
    return;
  }
  if (observer_) observer_(key, x, T, ldx, k);
  const size_t K = jobs[0].w->cols;
  bool any_gemm = false;
  for (size_t i = 0; i < n; ++i) any_gemm = any_gemm || GemmLayout(jobs[i].q8->type);
  // Prefill on AMX-INT8 CPUs: the AMX tiles (bit-identical results, gemm.h).
  const bool amx = any_gemm && T >= kAmxMinTokens && kernels::GemmAmxAvailable();
  // Lays out the GEMM panel of the quantized activations (AMX: 16-token tiles; VNNI: GemmTiles),
  // one token tile per task; with `quantize`, each task first quantizes its tile's tokens.
  auto lay_out_panel = [&](bool quantize) {
    if (amx) {
      qa.panel.resize(kernels::GemmAmxPanelSize(T, qa.a.Kp));
      ThreadPool::Global().ParallelFor(kernels::GemmAmxTiles(T), 1, [&](size_t b, size_t e) {
        if (quantize)
          kernels::QuantizeActsQ8(x, ldx, K, qa.a, b * kernels::kGemmAmxTokens, std::min(T, e * kernels::kGemmAmxTokens));
        kernels::BuildGemmAmxPanel(qa.a, T, b, e, qa.panel.data());
      });
      return;
    }
    qa.panel.resize(kernels::GemmPanelSize(T, qa.a.Kp));
    ThreadPool::Global().ParallelFor(kernels::GemmTiles(T), 2, [&](size_t b, size_t e) {
      if (quantize) {
        size_t t0 = 0, t1;
        for (size_t i = 0; i < b; ++i) t0 += kernels::GemmTileTokens(T, i, t0);
        t1 = t0;
        for (size_t i = b; i < e; ++i) t1 += kernels::GemmTileTokens(T, i, t1);
        kernels::QuantizeActsQ8(x, ldx, K, qa.a, t0, t1);
      }
      kernels::BuildGemmPanel(qa.a, T, b, e, qa.panel.data());
    });
  };
  // Long prefill on AMX-BF16 CPUs: the GEMM-layout matrices take the bf16 panel of x (gemm.h; not
  // bit-identical, so only for batches past the server's bit-identical batch size). Int8
  // activations are then made only for the MatMulQ8 matrices (I6) among the jobs.
  const bool bf16 = amx && T > kernels::kGemmAmxExactMaxTokens && kernels::GemmAmxBf16Available();
  bool any_q8 = false;
  for (size_t i = 0; i < n; ++i) any_q8 = any_q8 || !GemmLayout(jobs[i].q8->type);
  if (bf16 && !qa.bf16_valid) {
    const size_t Kp = kernels::Q8PaddedK(K);
    qa.panel.resize(kernels::GemmAmxBf16PanelSize(T, Kp));
    ThreadPool::Global().ParallelFor(kernels::GemmAmxTiles(T), 1, [&](size_t b, size_t e) {
      kernels::BuildGemmAmxBf16Panel(x, ldx, K, Kp, T, b, e, qa.panel.data());
    });
    qa.bf16_valid = true;
  }
  if ((!bf16 || any_q8) && !qa.valid) {
    const size_t Kp = kernels::Q8PaddedK(K);
    qa.q.resize(T * Kp);
    qa.d.resize(T * Kp / kernels::kQ8Block);
    qa.sum.resize(T * Kp / kernels::kQ8Block);
    qa.a = {Kp, qa.q.data(), qa.d.data(), qa.sum.data()};
    if (!bf16) qa.panel.clear();  // rebuilt below for these activations (capacity kept)
    if (!bf16 && any_gemm && T >= 8) {
      lay_out_panel(true);
    } else if (T >= 8) {
      ThreadPool::Global().ParallelFor(T, 4, [&](size_t b, size_t e) { kernels::QuantizeActsQ8(x, ldx, K, qa.a, b, e); });
    } else {
      kernels::QuantizeActsQ8(x, ldx, K, qa.a, 0, T);
    }
    qa.valid = true;
  }
  if (!bf16 && any_gemm && qa.panel.empty()) lay_out_panel(false);
  // Work units: row groups of 16 (GEMM layout) or row blocks of 4 (MatMulQ8's layout).
  // Prefill: GEMM units are pairs of row groups (the GEMM's 32-row tiles; an odd range would run
  // its last group through the 16-row tile).
  auto gemm = [&](size_t i) { return GemmLayout(jobs[i].q8->type); };
  const size_t per_unit = bf16 || (!amx && T >= 2 * kernels::kGemmMaxU) ? 2 : 1;
  size_t start[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < n; ++i)
    start[i + 1] = start[i] + (gemm(i) ? (kernels::GemmGroups(jobs[i].q8->rows) + per_unit - 1) / per_unit
                                       : (jobs[i].q8->rows + kernels::kQ8RowBlock - 1) / kernels::kQ8RowBlock);
  ThreadPool::Global().ParallelFor(start[n], 1, [&](size_t b, size_t e) {
    for (size_t i = 0; i < n; ++i) {
      const size_t lo = std::max(b, start[i]), hi = std::min(e, start[i + 1]);
      if (lo >= hi) continue;
      if (gemm(i)) {
        const size_t groups = kernels::GemmGroups(jobs[i].q8->rows);
        (bf16  ? kernels::MatMulGemmAmxBf16
         : amx ? kernels::MatMulGemmAmx
               : kernels::MatMulGemm)(*jobs[i].q8, qa.panel.data(), T, jobs[i].y, jobs[i].ldy,
                                      (lo - start[i]) * per_unit, std::min(groups, (hi - start[i]) * per_unit));
      } else {
        kernels::MatMulQ8(*jobs[i].q8, qa.a, T, jobs[i].y, jobs[i].ldy, lo - start[i], hi - start[i]);
      }
    }
  });
  for (size_t i = 0; i < n; ++i) {
    if (jobs[i].bias)
      for (size_t t = 0; t < T; ++t) kernels::Axpy(1.0f, jobs[i].bias, jobs[i].w->rows, jobs[i].y + t * jobs[i].ldy);
  }
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

absl::Status Model::CheckIds(const int32_t* ids, size_t n) const {
  const int64_t vocab = config().vocab;
  for (size_t t = 0; t < n; ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[t], " out of range [0, ", vocab, ")"));
  return absl::OkStatus();
}

void Model::InitPass(Pass& p) const {
  const ModelConfig& c = config();
  const size_t T = p.T;
  const size_t H = static_cast<size_t>(c.hidden), D = static_cast<size_t>(c.head_dim);
  const size_t Q = static_cast<size_t>(c.heads) * D, KV = static_cast<size_t>(c.kv_heads) * D;
  const size_t F = static_cast<size_t>(c.ffn);
  p.xn.assign(T * Padded(H), 0.0f);
  p.q.assign(T * Q, 0.0f);
  p.k.assign(T * KV, 0.0f);
  p.v.assign(T * KV, 0.0f);
  p.att.assign(T * Padded(Q), 0.0f);
  p.proj.assign(T * H, 0.0f);
  p.gate.assign(c.mlp == "gated" ? T * F : 0, 0.0f);
  p.up.assign(T * F, 0.0f);
  p.hid.assign(T * Padded(F), 0.0f);
  // RoPE tables for these positions.
  const size_t half = D / 2;
  p.cosv.assign(T * half, 0.0f);
  p.sinv.assign(T * half, 0.0f);
  for (size_t t = 0; t < T && c.positions == "rope"; ++t) {
    const float pos = static_cast<float>(p.pos[t]);
    for (size_t i = 0; i < half; ++i) {
      const float ang = pos * rope_inv_freq_[i];
      p.cosv[t * half + i] = static_cast<float>(std::cos(static_cast<double>(ang)));
      p.sinv[t * half + i] = static_cast<float>(std::sin(static_cast<double>(ang)));
    }
  }
}

absl::Status Model::EmbedRows(const int32_t* ids, const int64_t* pos, size_t T, float* x) const {
  const ModelConfig& c = config();
  const size_t H = static_cast<size_t>(c.hidden);
  std::vector<float> row(H);
  for (size_t t = 0; t < T; ++t) {
    float* xt = x + t * H;
    if (pkg_->streaming()) {
      TESSERA_RETURN_IF_ERROR(ReadEmbeddingRow(*embedding_, static_cast<size_t>(ids[t]), xt));
    } else {
      embedding_->RowToF32(static_cast<size_t>(ids[t]), xt);
    }
    if (c.embed_scale != 1.0) {
      const float s = static_cast<float>(c.embed_scale);
      for (size_t i = 0; i < H; ++i) xt[i] *= s;
    }
    if (pos_embd_ != nullptr) {
      if (pkg_->streaming()) {
        TESSERA_RETURN_IF_ERROR(ReadEmbeddingRow(*pos_embd_, static_cast<size_t>(pos[t]), row.data()));
      } else {
        pos_embd_->RowToF32(static_cast<size_t>(pos[t]), row.data());
      }
      for (size_t i = 0; i < H; ++i) xt[i] += row[i];
    }
  }
  return absl::OkStatus();
}

void Model::Observe(const std::string& key, const float* x, size_t T, size_t ldx, size_t k) const {
  if (observer_) observer_(key, x, T, ldx, k);
}

void Model::RunLayer(const Layer& L, size_t l, Pass& p, float* x, LayerStop stop) const {
  const ModelConfig& c = config();
  const size_t T = p.T;
  const size_t H = static_cast<size_t>(c.hidden), D = static_cast<size_t>(c.head_dim);
  const size_t NH = static_cast<size_t>(c.heads), NKV = static_cast<size_t>(c.kv_heads);
  const size_t Q = NH * D, KV = NKV * D, F = static_cast<size_t>(c.ffn);
  const size_t ldh = Padded(H), ldq = Padded(Q), ldf = Padded(F);
  float *xn = p.xn.data(), *q = p.q.data(), *k = p.k.data(), *v = p.v.data(), *att = p.att.data();
  float *proj = p.proj.data(), *gate = p.gate.data(), *up = p.up.data(), *hid = p.hid.data();
  const bool use_rope = c.positions == "rope";
  const size_t half = D / 2;
  const bool interleaved = c.rope_convention == "interleaved";
  auto rope = [&](float* vec, size_t t) {
    if (!use_rope) return;
    const float* cs = p.cosv.data() + t * half;
    const float* sn = p.sinv.data() + t * half;
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
  ThreadPool& pool = ThreadPool::Global();
  constexpr size_t kTokenChunk = 4;
  const std::string& lk = L.key;
  // The per-token steps between the matmuls run over token ranges on the pool too (each token's
  // arithmetic is unchanged; T = 1 runs inline).
  pool.ParallelFor(T, kTokenChunk, [&](size_t b, size_t e) {
    for (size_t t = b; t < e; ++t) Norm(x + t * H, L.attn_norm, L.attn_norm_b, H, xn + t * ldh);
  });
  p.qa_x.Invalidate();
  p.qa_att.Invalidate();
  p.qa_hid.Invalidate();
  if (stop == LayerStop::kQkv) {  // the observer calls of the multiplies below
    if (observer_per_matrix_) {
      for (const char* m : {"/attn_q", "/attn_k", "/attn_v"}) Observe(lk + m, xn, T, ldh, H);
    } else {
      Observe(lk + "/attn_qkv", xn, T, ldh, H);
    }
    return;
  }
  if (observer_per_matrix_) {
    // Calibration hooks see each matrix's key.
    Linear(lk + "/attn_q", L.wq, L.bq, xn, T, ldh, H, q, Q);
    Linear(lk + "/attn_k", L.wk, L.bk, xn, T, ldh, H, k, KV);
    Linear(lk + "/attn_v", L.wv, L.bv, xn, T, ldh, H, v, KV);
  } else {
    const Q8Job jobs[3] = {{&L.wq, &L.q8q, L.bq, q, Q}, {&L.wk, &L.q8k, L.bk, k, KV}, {&L.wv, &L.q8v, L.bv, v, KV}};
    LinearMulti(lk + "/attn_qkv", jobs, 3, xn, T, ldh, H, p.qa_x);
  }
  pool.ParallelFor(T, kTokenChunk, [&](size_t b, size_t e) {
    for (size_t t = b; t < e; ++t) {
      for (size_t h = 0; h < NH; ++h) {
        float* qh = q + t * Q + h * D;
        if (L.q_norm) kernels::RMSNorm(qh, L.q_norm, D, eps, qh);
        rope(qh, t);
      }
      for (size_t h = 0; h < NKV; ++h) {
        float* kh = k + t * KV + h * D;
        if (L.k_norm) kernels::RMSNorm(kh, L.k_norm, D, eps, kh);
        rope(kh, t);
        KVCache& cache = *p.cache[t];
        const int64_t pos = p.pos[t];
        std::memcpy(cache.k(static_cast<int64_t>(l), static_cast<int64_t>(h), pos), kh, D * 4);
        std::memcpy(cache.v(static_cast<int64_t>(l), static_cast<int64_t>(h), pos), v + t * KV + h * D, D * 4);
      }
    }
  });
  // Causal attention, parallel over (token, head).
  pool.ParallelFor(T * NH, 4, [&](size_t b, size_t e) {
    std::vector<float> scores;
    for (size_t idx = b; idx < e; ++idx) {
      const size_t t = idx / NH, h = idx % NH, kvh = h / group;
      KVCache& cache = *p.cache[t];
      const int64_t n = p.pos[t] + 1;
      scores.resize(static_cast<size_t>(n));
      const float* qv = q + t * Q + h * D;
      // K / V rows of consecutive positions are contiguous ([layer][kv_head][pos][head_dim]).
      kernels::AttendHead(qv, cache.k(static_cast<int64_t>(l), static_cast<int64_t>(kvh), 0),
                          cache.v(static_cast<int64_t>(l), static_cast<int64_t>(kvh), 0), static_cast<size_t>(n), D,
                          scale, scores.data(), att + t * ldq + h * D);
    }
  });
  if (stop == LayerStop::kAttnOutput) {
    Observe(lk + "/attn_output", att, T, ldq, Q);
    return;
  }
  {
    const Q8Job job{&L.wo, &L.q8o, L.bo, proj, H};
    LinearMulti(lk + "/attn_output", &job, 1, att, T, ldq, Q, p.qa_att);
  }
  pool.ParallelFor(T, kTokenChunk, [&](size_t b, size_t e) {
    for (size_t i = b * H; i < e * H; ++i) x[i] += proj[i];
    for (size_t t = b; t < e; ++t) Norm(x + t * H, L.ffn_norm, L.ffn_norm_b, H, xn + t * ldh);
  });
  p.qa_x.Invalidate();  // xn now holds the FFN norm
  if (stop == LayerStop::kFfnUp) {
    if (c.mlp == "gated" && !observer_per_matrix_) {
      Observe(lk + "/ffn_up_gate", xn, T, ldh, H);
    } else {
      Observe(lk + "/ffn_up", xn, T, ldh, H);
      if (c.mlp == "gated") Observe(lk + "/ffn_gate", xn, T, ldh, H);
    }
    return;
  }
  if (c.mlp == "gated" && !observer_per_matrix_) {
    const Q8Job jobs[2] = {{&L.w_up, &L.q8up, L.b_up, up, F}, {&L.w_gate, &L.q8gate, L.b_gate, gate, F}};
    LinearMulti(lk + "/ffn_up_gate", jobs, 2, xn, T, ldh, H, p.qa_x);
  } else {
    const Q8Job job{&L.w_up, &L.q8up, L.b_up, up, F};
    LinearMulti(lk + "/ffn_up", &job, 1, xn, T, ldh, H, p.qa_x);
  }
  if (c.mlp == "gated") {
    if (observer_per_matrix_) Linear(lk + "/ffn_gate", L.w_gate, L.b_gate, xn, T, ldh, H, gate, F);
    pool.ParallelFor(T, kTokenChunk, [&](size_t b, size_t e) {
      for (size_t t = b; t < e; ++t) {
        const float* g = gate + t * F;
        const float* u = up + t * F;
        float* o = hid + t * ldf;
        if (c.activation == "silu") {
          kernels::SiluMul(g, u, F, o);
        } else {
          for (size_t i = 0; i < F; ++i) o[i] = GeluTanh(g[i]) * u[i];
        }
      }
    });
  } else {
    pool.ParallelFor(T, kTokenChunk, [&](size_t b, size_t e) {
      for (size_t t = b; t < e; ++t) {
        const float* u = up + t * F;
        float* o = hid + t * ldf;
        for (size_t i = 0; i < F; ++i) o[i] = c.activation == "silu" ? u[i] / (1.0f + std::exp(-u[i])) : GeluTanh(u[i]);
      }
    });
  }
  if (stop == LayerStop::kFfnDown) {
    Observe(lk + "/ffn_down", hid, T, ldf, F);
    return;
  }
  {
    const Q8Job job{&L.w_down, &L.q8down, L.b_down, proj, H};
    LinearMulti(lk + "/ffn_down", &job, 1, hid, T, ldf, F, p.qa_hid);
  }
  pool.ParallelFor(T, kTokenChunk, [&](size_t b, size_t e) {
    for (size_t i = b * H; i < e * H; ++i) x[i] += proj[i];
  });
}

void Model::RunHead(const Head& head, const float* x, const size_t* rows, size_t n, Pass& p, float* logits) const {
  const size_t H = static_cast<size_t>(config().hidden), ldh = Padded(H);
  for (size_t i = 0; i < n; ++i) Norm(x + rows[i] * H, head.norm, head.norm_b, H, p.xn.data() + i * ldh);
  if (logits == nullptr) {  // the observer call of the multiply below
    Observe("lm/output", p.xn.data(), n, ldh, H);
    return;
  }
  p.qa_x.Invalidate();
  const size_t V = static_cast<size_t>(config().vocab);
  const Q8Job job{&head.output, &head.q8out, nullptr, logits, V};
  LinearMulti("lm/output", &job, 1, p.xn.data(), n, ldh, H, p.qa_x);
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
    TESSERA_RETURN_IF_ERROR(CheckIds(sq.ids, sq.n));
    T += sq.n;
  }
  if (T == 0) return absl::OkStatus();
  // Row r of the batch: which sequence (cache), which position.
  Pass p;
  p.T = T;
  p.cache.resize(T);
  p.pos.resize(T);
  std::vector<int32_t> row_id(T);
  {
    size_t r = 0;
    for (const auto& sq : seqs)
      for (size_t t = 0; t < sq.n; ++t, ++r) {
        p.cache[r] = sq.cache;
        p.pos[r] = sq.pos0 + static_cast<int64_t>(t);
        row_id[r] = sq.ids[t];
      }
  }
  const size_t H = static_cast<size_t>(c.hidden);
  std::vector<float> x(T * H);
  TESSERA_RETURN_IF_ERROR(EmbedRows(row_id.data(), p.pos.data(), T, x.data()));
  InitPass(p);

  const bool stream = pkg_->streaming();
  std::unique_lock<std::mutex> stream_lock(stream_mu_, std::defer_lock);
  if (stream) stream_lock.lock();
  std::shared_ptr<Stage> stage;  // stream mode: the resident block (the loader holds the next)
  for (size_t l = 0; l < static_cast<size_t>(c.layers); ++l) {
    if (stream) {
      stage.reset();
      TESSERA_ASSIGN_OR_RETURN(stage, streamer_->Acquire(static_cast<int>(l)));
    }
    RunLayer(stream ? stage->layer : layers_[l], l, p, x.data(), LayerStop::kNone);
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
  if (stream) {
    stage.reset();
    TESSERA_ASSIGN_OR_RETURN(stage, streamer_->Acquire(static_cast<int>(c.layers)));
  }
  const Head& head = stream ? stage->head : head_;
  if (seqs.size() == 1 && seqs[0].n > 0) {
    RunHead(head, x.data(), out_rows.data(), n_out, p, seqs[0].logits);
    return absl::OkStatus();
  }
  const size_t V = static_cast<size_t>(c.vocab);
  std::vector<float> lg(n_out * V);
  RunHead(head, x.data(), out_rows.data(), n_out, p, lg.data());
  size_t i = 0;
  for (const auto& sq : seqs) {
    const size_t k = sq.n == 0 ? 0 : (sq.all_logits ? sq.n : 1);
    if (k) std::memcpy(sq.logits, lg.data() + i * V, k * V * 4);
    i += k;
  }
  return absl::OkStatus();
}

// ---- layer by layer (sequential calibration) ----
absl::Status Model::Embed(const int32_t* ids, size_t T, float* x) const {
  const ModelConfig& c = config();
  if (config().positions == "learned" && static_cast<int64_t>(T) > c.max_ctx)
    return absl::OutOfRangeError(
        absl::StrCat("position ", T - 1, " exceeds the model's learned positions (", c.max_ctx, ")"));
  TESSERA_RETURN_IF_ERROR(CheckIds(ids, T));
  std::vector<int64_t> pos(T);
  for (size_t t = 0; t < T; ++t) pos[t] = static_cast<int64_t>(t);
  return EmbedRows(ids, pos.data(), T, x);
}

absl::Status Model::ForwardLayers(KVCache& cache, size_t T, int64_t first, int64_t last, float* x,
                                  LayerStop stop) const {
  const ModelConfig& c = config();
  if (first < 0 || first > last || last > c.layers)
    return absl::InvalidArgumentError(absl::StrCat("layers [", first, ", ", last, ") not within [0, ", c.layers, ")"));
  if (static_cast<int64_t>(T) > cache.n_ctx())
    return absl::OutOfRangeError(absl::StrCat("context overflow: ", T, " tokens exceed the context size ", cache.n_ctx()));
  if (T == 0 || first == last) return absl::OkStatus();
  Pass p;
  p.T = T;
  p.cache.assign(T, &cache);
  p.pos.resize(T);
  for (size_t t = 0; t < T; ++t) p.pos[t] = static_cast<int64_t>(t);
  InitPass(p);
  const bool stream = pkg_->streaming();
  std::unique_lock<std::mutex> stream_lock(stream_mu_, std::defer_lock);
  if (stream) stream_lock.lock();
  std::shared_ptr<Stage> stage;
  for (int64_t l = first; l < last; ++l) {
    if (stream) {
      stage.reset();
      TESSERA_ASSIGN_OR_RETURN(stage, streamer_->Acquire(static_cast<int>(l)));
    }
    RunLayer(stream ? stage->layer : layers_[static_cast<size_t>(l)], static_cast<size_t>(l), p, x,
             l + 1 == last ? stop : LayerStop::kNone);
  }
  return absl::OkStatus();
}

absl::Status Model::ForwardHead(const float* x, size_t T, float* logits) const {
  if (T == 0) return absl::OkStatus();
  Pass p;
  p.T = T;
  p.xn.assign(T * Padded(static_cast<size_t>(config().hidden)), 0.0f);
  std::vector<size_t> rows(T);
  for (size_t t = 0; t < T; ++t) rows[t] = t;
  const bool stream = pkg_->streaming();
  std::unique_lock<std::mutex> stream_lock(stream_mu_, std::defer_lock);
  if (stream) stream_lock.lock();
  std::shared_ptr<Stage> stage;
  if (stream) {
    TESSERA_ASSIGN_OR_RETURN(stage, streamer_->Acquire(static_cast<int>(config().layers)));
  }
  RunHead(stream ? stage->head : head_, x, rows.data(), T, p, logits);
  return absl::OkStatus();
}

absl::Status Model::ReplaceBlock(int64_t i, std::unique_ptr<TensorPack> pack) {
  if (pkg_->streaming()) return absl::FailedPreconditionError("ReplaceBlock: not in stream mode");
  if (i < 0 || i >= config().layers)
    return absl::InvalidArgumentError(absl::StrCat("ReplaceBlock: no block ", i, " (", config().layers, " layers)"));
  TESSERA_ASSIGN_OR_RETURN(Layer L, BindLayer(*pack, i));
  Arena arena;
  TESSERA_RETURN_IF_ERROR(RepackInto(Matrices(&L, 1, nullptr), &arena, true, false));
  const size_t n = static_cast<size_t>(config().layers);
  replaced_packs_.resize(n);
  replaced_arenas_.resize(n);
  layers_[static_cast<size_t>(i)] = L;
  replaced_packs_[static_cast<size_t>(i)] = std::move(pack);
  replaced_arenas_[static_cast<size_t>(i)] = std::move(arena);
  rows_independent_ = ComputeRowsIndependent();
  return absl::OkStatus();
}

}  // namespace tessera
