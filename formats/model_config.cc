#include "formats/model_config.h"

#include "absl/strings/str_cat.h"

namespace tessera {

nlohmann::json ModelConfig::ToJson() const {
  return nlohmann::ordered_json{
      {"family", family},
      {"hidden", hidden},
      {"layers", layers},
      {"heads", heads},
      {"kv_heads", kv_heads},
      {"head_dim", head_dim},
      {"ffn", ffn},
      {"vocab", vocab},
      {"max_ctx", max_ctx},
      {"rope", {{"theta", rope_theta}, {"convention", rope_convention}}},
      {"norm_eps", norm_eps},
      {"activation", activation},
      {"mlp", mlp},
      {"norm", norm},
      {"norm_weight_offset", norm_weight_offset},
      {"norm_weight_offset_folded", norm_weight_offset != 0.0},
      {"positions", positions},
      {"embed_scale", embed_scale},
      {"tie_embeddings", tie_embeddings},
      {"qkv_bias", qkv_bias},
      {"attn_out_bias", attn_out_bias},
      {"mlp_bias", mlp_bias},
      {"qk_norm", qk_norm},
      {"bos_id", bos_id},
      {"eos_id", eos_id},
      {"eos_ids", eos_ids},
      {"source_arch", source_arch},
  };
}

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const nlohmann::json& j, const std::string& where) {
  ModelConfig c;
  // nlohmann's get<int64_t>() of a float (e.g. "hidden": 1e300) is an unchecked cast: insist on
  // integers so a hostile manifest cannot reach undefined behaviour.
  for (const char* k : {"hidden", "layers", "heads", "kv_heads", "head_dim", "ffn", "vocab", "max_ctx", "bos_id", "eos_id"})
    if (j.is_object() && j.contains(k) && !j[k].is_number_integer())
      return absl::InvalidArgumentError(absl::StrCat(where, ": bad \"arch\": \"", k, "\" must be an integer"));
  if (j.is_object() && j.contains("eos_ids") && j["eos_ids"].is_array())
    for (const auto& e : j["eos_ids"])
      if (!e.is_number_integer())
        return absl::InvalidArgumentError(absl::StrCat(where, ": bad \"arch\": \"eos_ids\" must hold integers"));
  try {
    c.family = j.at("family").get<std::string>();
    c.hidden = j.at("hidden").get<int64_t>();
    c.layers = j.at("layers").get<int64_t>();
    c.heads = j.at("heads").get<int64_t>();
    c.kv_heads = j.at("kv_heads").get<int64_t>();
    c.head_dim = j.at("head_dim").get<int64_t>();
    c.ffn = j.at("ffn").get<int64_t>();
    c.vocab = j.at("vocab").get<int64_t>();
    c.max_ctx = j.value("max_ctx", int64_t{2048});
    c.rope_theta = j.at("rope").at("theta").get<double>();
    c.rope_convention = j.at("rope").at("convention").get<std::string>();
    c.norm_eps = j.at("norm_eps").get<double>();
    c.activation = j.value("activation", std::string("silu"));
    c.tie_embeddings = j.at("tie_embeddings").get<bool>();
    c.mlp = j.value("mlp", std::string("gated"));
    c.norm = j.value("norm", std::string("rms"));
    c.norm_weight_offset = j.value("norm_weight_offset", 0.0);
    c.positions = j.value("positions", std::string("rope"));
    c.embed_scale = j.value("embed_scale", 1.0);
    c.qkv_bias = j.value("qkv_bias", false);
    c.attn_out_bias = j.value("attn_out_bias", false);
    c.mlp_bias = j.value("mlp_bias", false);
    c.qk_norm = j.value("qk_norm", false);
    c.bos_id = j.value("bos_id", -1);
    c.eos_id = j.value("eos_id", -1);
    if (j.contains("eos_ids")) c.eos_ids = j["eos_ids"].get<std::vector<int32_t>>();
    c.source_arch = j.value("source_arch", std::string());
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": bad \"arch\": ", e.what()));
  }
  auto st = c.Validate(where);
  if (!st.ok()) return st;
  return c;
}

absl::Status ModelConfig::Validate(const std::string& where) const {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": invalid architecture: ", what));
  };
  if (hidden <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || head_dim <= 0 || ffn <= 0 ||
      vocab <= 0)
    return bad("every dimension must be positive");
  if (heads % kv_heads != 0) return bad(absl::StrCat("heads ", heads, " not a multiple of kv_heads ", kv_heads));
  if (head_dim % 2 != 0) return bad("head_dim must be even for RoPE");
  if (rope_convention != "rotate_half" && rope_convention != "interleaved")
    return bad(absl::StrCat("unknown rope convention '", rope_convention, "'"));
  if (hidden > (1 << 20) || layers > 4096 || vocab > (1 << 24) || ffn > (1 << 22) || heads > 4096)
    return bad("dimensions out of range");
  if (activation != "silu" && activation != "gelu_tanh")
    return bad(absl::StrCat("unknown activation '", activation, "'"));
  if (mlp != "gated" && mlp != "plain") return bad(absl::StrCat("unknown mlp '", mlp, "'"));
  if (norm != "rms" && norm != "layer") return bad(absl::StrCat("unknown norm '", norm, "'"));
  if (positions != "rope" && positions != "learned")
    return bad(absl::StrCat("unknown positions '", positions, "'"));
  if (max_ctx <= 0 || max_ctx > (1 << 24)) return bad("max_ctx out of range");
  return absl::OkStatus();
}

}  // namespace tessera
