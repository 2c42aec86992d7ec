#include "converter/families.h"

namespace tessera {

const std::vector<FamilySpec>& Families() {
  static const std::vector<FamilySpec>* families = [] {
    auto* v = new std::vector<FamilySpec>();
    FamilySpec llama;
    llama.family = "llama";
    llama.architectures = {"LlamaForCausalLM"};
    llama.model_types = {"llama"};
    v->push_back(llama);

    FamilySpec mistral = llama;
    mistral.family = "mistral";
    mistral.architectures = {"MistralForCausalLM"};
    mistral.model_types = {"mistral"};
    v->push_back(mistral);

    FamilySpec qwen2 = llama;
    qwen2.family = "qwen2";
    qwen2.architectures = {"Qwen2ForCausalLM"};
    qwen2.model_types = {"qwen2"};
    qwen2.default_qkv_bias = true;
    v->push_back(qwen2);

    FamilySpec qwen3 = llama;
    qwen3.family = "qwen3";
    qwen3.architectures = {"Qwen3ForCausalLM"};
    qwen3.model_types = {"qwen3"};
    qwen3.q_norm = "self_attn.q_norm";
    qwen3.k_norm = "self_attn.k_norm";
    v->push_back(qwen3);

    FamilySpec phi3 = llama;
    phi3.family = "phi3";
    phi3.architectures = {"Phi3ForCausalLM"};
    phi3.model_types = {"phi3"};
    phi3.qkv_fused = "self_attn.qkv_proj";
    phi3.gate_up_fused = "mlp.gate_up_proj";
    v->push_back(phi3);

    FamilySpec gemma = llama;
    gemma.family = "gemma";
    gemma.architectures = {"GemmaForCausalLM"};
    gemma.model_types = {"gemma"};
    gemma.norm_weight_offset = 1.0;
    gemma.default_activation = "gelu_tanh";
    gemma.embed_scale_sqrt_hidden = true;
    v->push_back(gemma);

    FamilySpec gpt2;
    gpt2.family = "gpt2";
    gpt2.architectures = {"GPT2LMHeadModel"};
    gpt2.model_types = {"gpt2"};
    gpt2.layer_prefix = "transformer.h.{i}.";
    gpt2.embed = "transformer.wte.weight";
    gpt2.pos_embed = "transformer.wpe.weight";
    gpt2.final_norm = "transformer.ln_f";
    gpt2.attn_norm = "ln_1";
    gpt2.ffn_norm = "ln_2";
    gpt2.qkv_fused = "attn.c_attn";
    gpt2.o = "attn.c_proj";
    gpt2.up = "mlp.c_fc";
    gpt2.down = "mlp.c_proj";
    gpt2.gate.clear();
    gpt2.conv1d = true;
    gpt2.norm = "layer";
    gpt2.mlp = "plain";
    gpt2.default_activation = "gelu_tanh";
    gpt2.positions = "learned";
    gpt2.all_biases = true;
    v->push_back(gpt2);
    return v;
  }();
  return *families;
}

}  // namespace tessera
