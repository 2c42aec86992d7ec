// Architecture description stored in manifest.json ("arch").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tessera {

struct ModelConfig {
  std::string family = "llama";  // llama | mistral | qwen2 | ...
  int64_t hidden = 0;
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t ffn = 0;
  int64_t vocab = 0;
  int64_t max_ctx = 2048;
  double rope_theta = 10000.0;
  std::string rope_convention = "rotate_half";  // rotate_half (HF/NeoX) | interleaved (Meta/llama2.c)
  double norm_eps = 1e-5;
  std::string activation = "silu";      // silu | gelu_tanh
  std::string mlp = "gated";            // gated: down(act(gate(x)) * up(x)); plain: down(act(up(x)))
  std::string norm = "rms";             // rms | layer (LayerNorm with bias)
  double norm_weight_offset = 0.0;      // Gemma's (1 + w): already folded into the stored weights
  std::string positions = "rope";       // rope | learned (pos_embd table added to the embedding)
  double embed_scale = 1.0;             // Gemma: sqrt(hidden)
  bool tie_embeddings = false;
  bool qkv_bias = false;
  bool attn_out_bias = false;
  bool mlp_bias = false;
  bool qk_norm = false;                 // Qwen3: RMSNorm over each head of q and k before RoPE
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  std::vector<int32_t> eos_ids;
  std::string source_arch;              // e.g. "Qwen3ForCausalLM"

  nlohmann::json ToJson() const;
  static absl::StatusOr<ModelConfig> FromJson(const nlohmann::json& j, const std::string& where);
  absl::Status Validate(const std::string& where) const;
};

}  // namespace tessera
