// Architecture description stored in manifest.json ("arch").
#pragma once

#include <cstdint>
#include <string>

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
  std::string activation = "silu";
  bool tie_embeddings = false;
  bool qkv_bias = false;
  int32_t bos_id = -1;
  int32_t eos_id = -1;

  nlohmann::json ToJson() const;
  static absl::StatusOr<ModelConfig> FromJson(const nlohmann::json& j, const std::string& where);
  absl::Status Validate(const std::string& where) const;
};

}  // namespace tessera
