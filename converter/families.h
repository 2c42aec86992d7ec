// Hugging Face model families as data: how each one names its tensors, which of them are fused
// or transposed, and which math variants it uses. Adding a family means adding a FamilySpec.
#pragma once

#include <string>
#include <vector>

namespace tessera {

struct FamilySpec {
  std::string family;                    // recorded as arch.family
  std::vector<std::string> architectures;  // config.json "architectures"
  std::vector<std::string> model_types;    // config.json "model_type"

  // Tensor names ("{L}" = layer prefix, e.g. "model.layers.3.").
  std::string layer_prefix = "model.layers.{i}.";
  std::string embed = "model.embed_tokens.weight";
  std::string pos_embed;                 // learned positions (GPT-2)
  std::string final_norm = "model.norm";
  std::string lm_head = "lm_head.weight";
  std::string attn_norm = "input_layernorm", ffn_norm = "post_attention_layernorm";
  std::string q = "self_attn.q_proj", k = "self_attn.k_proj", v = "self_attn.v_proj";
  std::string qkv_fused;                 // one [q|k|v] projection (Phi-3, GPT-2)
  std::string o = "self_attn.o_proj";
  std::string q_norm, k_norm;            // per-head RMSNorm (Qwen3)
  std::string gate = "mlp.gate_proj", up = "mlp.up_proj", down = "mlp.down_proj";
  std::string gate_up_fused;             // one [gate|up] projection (Phi-3)
  bool conv1d = false;                   // weights stored [in, out] (GPT-2 Conv1D)

  // Math.
  std::string norm = "rms";              // rms | layer
  double norm_weight_offset = 0.0;       // Gemma: weight is (1 + w)
  std::string mlp = "gated";             // gated | plain
  std::string default_activation = "silu";
  std::string positions = "rope";        // rope | learned
  bool embed_scale_sqrt_hidden = false;  // Gemma
  bool default_qkv_bias = false;         // Qwen2 always has q/k/v biases
  bool all_biases = false;               // GPT-2: every linear and norm has a bias
};

const std::vector<FamilySpec>& Families();

}  // namespace tessera
