// runtime-lite: the transformer forward pass over a loaded package.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "formats/package.h"
#include "quantizer/kernels/kernels.h"

namespace tessera {

// Per-sequence attention state: K and V for every layer, [layer][kv_head][pos][head_dim].
class KVCache {
 public:
  KVCache(const ModelConfig& c, int64_t n_ctx);
  int64_t n_ctx() const { return n_ctx_; }
  float* k(int64_t layer, int64_t kv_head, int64_t pos) { return at(k_, layer, kv_head, pos); }
  float* v(int64_t layer, int64_t kv_head, int64_t pos) { return at(v_, layer, kv_head, pos); }

 private:
  float* at(std::vector<float>& buf, int64_t layer, int64_t h, int64_t pos) {
    return buf.data() + ((layer * kv_heads_ + h) * n_ctx_ + pos) * head_dim_;
  }
  int64_t n_ctx_, kv_heads_, head_dim_;
  std::vector<float> k_, v_;
};

struct StreamStats {
  uint64_t bytes_read = 0;    // from disk by the stream loader and disk embedding
  uint64_t stage_loads = 0;   // blocks / heads loaded
  double stall_seconds = 0;   // time the compute thread waited for the loader
};

class Model {
 public:
  ~Model();
  // Stream-mode counters (zero in the other modes).
  const StreamStats& stream_stats() const { return stream_stats_; }
  // Takes ownership of the package; validates every tensor's shape against the manifest.
  static absl::StatusOr<std::unique_ptr<Model>> Load(std::unique_ptr<Package> pkg);
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir);
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, const Package::Options& opts);

  const ModelConfig& config() const { return pkg_->config(); }
  const Tokenizer& tokenizer() const { return pkg_->tokenizer(); }
  const Package& package() const { return *pkg_; }
  int64_t vocab() const { return config().vocab; }

  // Runs tokens ids[0..T) at positions pos0..pos0+T-1 (cache must hold everything before pos0).
  // Writes logits for every token ([T][vocab]) when all_logits, else only the last ([vocab]).
  // Called before every matrix multiply with key "block_{i}/attn_q" ... "block_{i}/ffn_down",
  // "lm/output": x holds T rows of k floats, row stride ldx. For calibration (imatrix).
  using ActivationObserver =
      std::function<void(const std::string& key, const float* x, size_t T, size_t ldx, size_t k)>;
  // per_matrix false: the observer only needs the input of the LM head ("lm/output", e.g. for
  // embeddings), so the fused multi-matrix kernels stay in use (they report fused keys such as
  // "block_{i}/attn_qkv"); true (calibration) runs each matrix alone under its own key.
  void SetActivationObserver(ActivationObserver obs, bool per_matrix = true) {
    observer_ = std::move(obs);
    observer_per_matrix_ = observer_ && per_matrix;
  }
  // True when every row of a ForwardBatch gives the same result whatever the batch (all linears
  // run on the int8-activation path, which quantizes each row alone and sums in integers, and the
  // CPU has no AMX-BF16, whose tiles serve batches of more than 16 rows); when false, results are
  // row-independent only for batches of at most 16 rows.
  bool RowsIndependent() const { return rows_independent_; }

  // One sequence's share of a batched forward pass.
  struct SeqInput {
    KVCache* cache = nullptr;
    const int32_t* ids = nullptr;
    size_t n = 0;          // tokens
    int64_t pos0 = 0;      // position of ids[0]
    float* logits = nullptr;  // [n][vocab] when all_logits, else [vocab]
    bool all_logits = false;
  };
  // Runs several sequences in one pass over the weights (continuous batching). Each sequence's
  // results are bit-identical to running it alone as long as the batch has at most 16 rows.
  absl::Status ForwardBatch(const std::vector<SeqInput>& seqs) const;

  absl::Status Forward(KVCache& cache, const int32_t* ids, size_t T, int64_t pos0, float* logits,
                       bool all_logits) const;

  // One sequence layer by layer (sequential calibration): positions 0..T-1 (`Embed` checks the
  // ids), x = the residual stream, T rows of `hidden` floats. Embed, ForwardLayers over [0, layers)
  // in any number of calls (each layer runs the same code as ForwardBatch) and ForwardHead give
  // Forward's logits bit for bit, and the activation observer the same calls.
  absl::Status Embed(const int32_t* ids, size_t T, float* x) const;
  // Where ForwardLayers' last layer may stop: right after the activation observer was given the
  // input of a group of matrices, before they multiply (x is then not the layer's output): attn_q /
  // attn_k / attn_v, attn_output, ffn_up (+ ffn_gate), ffn_down.
  enum class LayerStop { kNone, kQkv, kAttnOutput, kFfnUp, kFfnDown };
  // Runs layers [first, last) on x in place; the cache receives their K / V for positions 0..T-1.
  absl::Status ForwardLayers(KVCache& cache, size_t T, int64_t first, int64_t last, float* x,
                             LayerStop stop = LayerStop::kNone) const;
  // The final norm and the LM head on the T rows of x: logits [T][vocab]; logits null: the
  // activation observer is only given the head's input.
  absl::Status ForwardHead(const float* x, size_t T, float* logits) const;
  // Rebinds block i to the tensors of `pack` (a block of the same architecture, e.g. partly
  // quantized), repacked for the int8-activation path as Load does. Not in stream mode; not while
  // another thread runs the model.
  absl::Status ReplaceBlock(int64_t i, std::unique_ptr<TensorPack> pack);

 private:
  struct Layer {
    const float* attn_norm = nullptr;
    const float* attn_norm_b = nullptr;
    const float* ffn_norm = nullptr;
    const float* ffn_norm_b = nullptr;
    const float* bq = nullptr;
    const float* bk = nullptr;
    const float* bv = nullptr;
    const float* bo = nullptr;
    const float* b_gate = nullptr;
    const float* b_up = nullptr;
    const float* b_down = nullptr;
    const float* q_norm = nullptr;
    const float* k_norm = nullptr;
    kernels::WeightMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
    // Runtime-repacked copies for the int8-activation (VNNI) path; data == nullptr if unused.
    kernels::Q8Weights q8q, q8k, q8v, q8o, q8gate, q8up, q8down;
    std::string key;  // "block_{i}"
  };
  struct Head {
    const float* norm = nullptr;
    const float* norm_b = nullptr;
    kernels::WeightMatrix output;
    kernels::Q8Weights q8out;
  };
  // Stream mode: one loaded block (or the LM head) with its bound views.
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  using Arena = std::unique_ptr<uint8_t, FreeDeleter>;
  struct Stage {
    std::unique_ptr<TensorPack> a, b;
    Arena arena;  // repacked weights of this stage (int8-activation path)
    Layer layer;
    Head head;
    size_t bytes = 0;
  };
  // Loads stage i+1 on its own thread while stage i computes: at most two resident.
  class BlockStreamer {
   public:
    explicit BlockStreamer(const Model* m);
    ~BlockStreamer();
    absl::StatusOr<std::shared_ptr<Stage>> Acquire(int stage);

   private:
    int num_stages() const;
    absl::StatusOr<std::unique_ptr<Stage>> LoadStage(int stage);
    void Loop();
    const Model* model_;
    std::mutex mu_;
    std::condition_variable cv_;
    int want_ = 0, ready_stage_ = -1;  // block 0 is prefetched at start
    std::unique_ptr<Stage> ready_;
    std::optional<absl::Status> error_;
    bool stop_ = false;
    std::thread worker_;
  };

  Model() = default;
  absl::Status Bind();
  absl::StatusOr<Layer> BindLayer(const TensorPack& b, int64_t i) const;
  absl::StatusOr<Head> BindHead(const TensorPack& lm, const TensorPack* embedding) const;
  absl::Status OpenDiskEmbedding();
  absl::Status ReadEmbeddingRow(const PackTensor& t, size_t row, float* out) const;
  // y = x W^T (+ bias); notifies the activation observer first.
  void Linear(const std::string& key, const kernels::WeightMatrix& w, const float* bias, const float* x,
              size_t T, size_t ldx, size_t k, float* y, size_t ldy) const;
  // Activations quantized for the int8 path, shared by the matrices that read the same input.
  // Scratch vectors whose resize() leaves new elements uninitialised (every element is written
  // before it is read: no memset of the activations / panel per matmul).
  template <class T>
  struct NoInitAlloc : std::allocator<T> {
    using value_type = T;
    template <class U>
    struct rebind {
      using other = NoInitAlloc<U>;
    };
    NoInitAlloc() = default;
    template <class U>
    NoInitAlloc(const NoInitAlloc<U>&) noexcept {}
    template <class U>
    void construct(U* p) noexcept {
      ::new (static_cast<void*>(p)) U;
    }
  };
  template <class T>
  using Scratch = std::vector<T, NoInitAlloc<T>>;
  struct ActQ8 {
    Scratch<int8_t> q;
    Scratch<float> d;
    Scratch<int32_t> sum;
    Scratch<uint8_t> panel;  // the same activations re-laid for MatMulGemm (I4 sym / I8), or as bf16
    kernels::Q8Acts a;
    bool valid = false;      // q / d / sum hold this input (and panel, unless empty)
    bool bf16_valid = false;  // panel holds this input's bf16 panel (long prefill on AMX-BF16)
    void Invalidate() { valid = bf16_valid = false; }  // the input changed
  };
  struct Q8Job {
    const kernels::WeightMatrix* w;
    const kernels::Q8Weights* q8;
    const float* bias;
    float* y;
    size_t ldy;
  };
  // y_i = W_i x (+ b_i) for up to 3 matrices reading the same x, in one ParallelFor when all
  // have repacked weights (int8 activations), else one Linear each.
  void LinearMulti(const std::string& key, const Q8Job* jobs, size_t n, const float* x, size_t T, size_t ldx,
                   size_t k, ActQ8& qa) const;
  // One forward pass's rows (cache, position) and scratch activations: ForwardBatch's rows, or
  // one sequence layer by layer.
  struct Pass {
    size_t T = 0;
    std::vector<KVCache*> cache;
    std::vector<int64_t> pos;
    std::vector<float> xn, q, k, v, att, proj, gate, up, hid, cosv, sinv;
    ActQ8 qa_x, qa_att, qa_hid;  // int8 activations of xn / att / hid (when weights are repacked)
  };
  absl::Status CheckIds(const int32_t* ids, size_t n) const;
  // Sizes the activations (zeroed) and the RoPE tables of p.T rows at positions p.pos.
  void InitPass(Pass& p) const;
  absl::Status EmbedRows(const int32_t* ids, const int64_t* pos, size_t T, float* x) const;
  void Observe(const std::string& key, const float* x, size_t T, size_t ldx, size_t k) const;
  // Layer l on x (p.T rows, in place), or up to `stop`.
  void RunLayer(const Layer& L, size_t l, Pass& p, float* x, LayerStop stop) const;
  // Norm + LM head of rows[0..n) of x into logits ([n][vocab]; null: only the observer call), with
  // p.xn / p.qa_x as scratch.
  void RunHead(const Head& head, const float* x, const size_t* rows, size_t n, Pass& p, float* logits) const;
  using RepackList = std::vector<std::pair<kernels::WeightMatrix*, kernels::Q8Weights*>>;
  static RepackList Matrices(Layer* layers, size_t n, Head* head);
  // Repacks every supported matrix of `todo` into a new arena (no-op when the int8-activation
  // path is off). `parallel`: use the global pool; `drop`: release the canonical pages after.
  static absl::Status RepackInto(const RepackList& todo, Arena* arena, bool parallel, bool drop);
  // Copies the f16 / bf16 / f32 matrices of `todo` (read as they are by the f32-activation kernels)
  // from the file mapping into one arena backed by huge pages, and drops the mapped pages.
  static absl::Status CopyPlainToHugePages(const RepackList& todo, Arena* arena);
  static absl::Status AllocHugePageArena(size_t bytes, const char* what, Arena* arena);
  void Norm(const float* x, const float* w, const float* b, size_t n, float* out) const;
  ActivationObserver observer_;
  bool observer_per_matrix_ = false;
  bool rows_independent_ = false;
  bool ComputeRowsIndependent();

  std::unique_ptr<Package> pkg_;
  std::vector<Layer> layers_;
  const PackTensor* embedding_ = nullptr;
  const PackTensor* pos_embd_ = nullptr;
  Head head_;
  // Stream mode.
  std::unique_ptr<TensorPack> embed_index_;
  int embed_fd_ = -1;
  mutable std::mutex embed_mu_, stream_mu_;
  mutable std::unordered_map<std::string, std::vector<float>> embed_cache_;
  std::unique_ptr<BlockStreamer> streamer_;
  mutable StreamStats stream_stats_;
  std::vector<float> rope_inv_freq_;
  std::unique_ptr<uint8_t, FreeDeleter> repacked_;  // arena of the runtime-repacked weights
  Arena plain_;  // --memory mmap: the f16 / bf16 / f32 matrices on huge pages
  // ReplaceBlock's packs and repacked weights, by layer.
  std::vector<std::unique_ptr<TensorPack>> replaced_packs_;
  std::vector<Arena> replaced_arenas_;
};

}  // namespace tessera
