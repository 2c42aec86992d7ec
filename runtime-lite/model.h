// runtime-lite: the transformer forward pass over a loaded package.
#pragma once

#include <cstdint>
#include <functional>
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

class Model {
 public:
  // Takes ownership of the package; validates every tensor's shape against the manifest.
  static absl::StatusOr<std::unique_ptr<Model>> Load(std::unique_ptr<Package> pkg);
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir);

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
  void SetActivationObserver(ActivationObserver obs) { observer_ = std::move(obs); }

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
    std::string key;  // "block_{i}"
  };
  Model() = default;
  absl::Status Bind();
  // y = x W^T (+ bias); notifies the activation observer first.
  void Linear(const std::string& key, const kernels::WeightMatrix& w, const float* bias, const float* x,
              size_t T, size_t ldx, size_t k, float* y, size_t ldy) const;
  void Norm(const float* x, const float* w, const float* b, size_t n, float* out) const;
  ActivationObserver observer_;

  std::unique_ptr<Package> pkg_;
  std::vector<Layer> layers_;
  const PackTensor* embedding_ = nullptr;
  const PackTensor* pos_embd_ = nullptr;
  const float* output_norm_ = nullptr;
  const float* output_norm_b_ = nullptr;
  kernels::WeightMatrix output_;
  std::vector<float> rope_inv_freq_;
};

}  // namespace tessera
