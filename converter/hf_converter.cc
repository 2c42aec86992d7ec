#include "converter/hf_converter.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "converter/families.h"
#include "core/half.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/status.h"
#include "formats/package.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

const FamilySpec* FindFamily(const std::string& arch, const std::string& model_type) {
  for (const auto& f : Families())
    for (const auto& a : f.architectures)
      if (a == arch) return &f;
  for (const auto& f : Families())
    for (const auto& t : f.model_types)
      if (t == model_type) return &f;
  return nullptr;
}

std::string SupportedList() {
  std::string s;
  for (const auto& f : Families()) absl::StrAppend(&s, s.empty() ? "" : ", ", f.architectures[0]);
  return s;
}

// Reads the first present key among `keys`; null counts as absent.
template <typename T>
bool Get(const nlohmann::json& j, std::initializer_list<const char*> keys, T* out) {
  for (const char* k : keys) {
    if (j.contains(k) && !j[k].is_null()) {
      *out = j[k].get<T>();
      return true;
    }
  }
  return false;
}

absl::StatusOr<ModelConfig> ParseConfig(const nlohmann::json& j, const std::string& path, const FamilySpec** spec_out) {
  const std::string model_type = j.value("model_type", "");
  const std::string arch = j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty()
                               ? j["architectures"][0].get<std::string>() : "";
  const FamilySpec* spec = FindFamily(arch, model_type);
  if (spec == nullptr)
    return FileError(path, absl::StrCat("unsupported architecture '", arch.empty() ? model_type : arch,
                                        "' (field \"architectures\"/\"model_type\"; supported: ", SupportedList(), ")"));
  *spec_out = spec;
  auto unsupported = [&](const std::string& field, const nlohmann::json& value, const std::string& why) {
    return FileError(path, absl::StrCat("unsupported \"", field, "\": ", value.dump(), " (", why, ")"));
  };
  ModelConfig c;
  c.family = spec->family;
  c.source_arch = arch.empty() ? model_type : arch;
  c.norm = spec->norm;
  c.norm_weight_offset = spec->norm_weight_offset;
  c.mlp = spec->mlp;
  c.positions = spec->positions;
  if (!Get(j, {"hidden_size", "n_embd"}, &c.hidden)) return FileError(path, "missing \"hidden_size\"");
  if (!Get(j, {"num_hidden_layers", "n_layer"}, &c.layers)) return FileError(path, "missing \"num_hidden_layers\"");
  if (!Get(j, {"num_attention_heads", "n_head"}, &c.heads)) return FileError(path, "missing \"num_attention_heads\"");
  if (!Get(j, {"num_key_value_heads"}, &c.kv_heads)) c.kv_heads = c.heads;
  if (!Get(j, {"head_dim"}, &c.head_dim)) c.head_dim = c.heads > 0 ? c.hidden / c.heads : 0;
  if (!Get(j, {"intermediate_size", "n_inner"}, &c.ffn)) {
    if (spec->family != "gpt2") return FileError(path, "missing \"intermediate_size\"");
    c.ffn = 4 * c.hidden;
  }
  if (!Get(j, {"vocab_size"}, &c.vocab)) return FileError(path, "missing \"vocab_size\"");
  if (!Get(j, {"max_position_embeddings", "n_positions"}, &c.max_ctx)) c.max_ctx = 2048;
  if (!Get(j, {"rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps"}, &c.norm_eps)) c.norm_eps = 1e-6;
  c.tie_embeddings = j.value("tie_word_embeddings", spec->family == "gpt2" || spec->family == "gemma");
  std::string act = spec->default_activation;
  Get(j, {"hidden_activation", "hidden_act", "activation_function"}, &act);
  if (act == "silu" || act == "swish") {
    c.activation = "silu";
  } else if (act == "gelu_pytorch_tanh" || act == "gelu_new" || act == "gelu_tanh" || act == "gelu_fast") {
    c.activation = "gelu_tanh";
  } else {
    return unsupported("hidden_act", act, "supported: silu, gelu_pytorch_tanh, gelu_new");
  }
  c.qkv_bias = spec->default_qkv_bias || spec->all_biases || j.value("attention_bias", false);
  c.attn_out_bias = spec->all_biases;
  c.mlp_bias = spec->all_biases;
  if (!spec->all_biases && j.value("mlp_bias", false)) return unsupported("mlp_bias", true, "not supported yet");
  c.qk_norm = !spec->q_norm.empty();
  if (spec->embed_scale_sqrt_hidden) c.embed_scale = std::sqrt(static_cast<double>(c.hidden));
  // Sliding-window attention changes the math once the context exceeds the window.
  if (j.contains("sliding_window") && !j["sliding_window"].is_null() && j.value("use_sliding_window", true))
    return unsupported("sliding_window", j["sliding_window"], "sliding-window attention is not supported yet");
  if (j.value("scale_attn_by_inverse_layer_idx", false))
    return unsupported("scale_attn_by_inverse_layer_idx", true, "not supported");
  if (j.value("add_cross_attention", false)) return unsupported("add_cross_attention", true, "not a decoder-only model");
  if (j.contains("final_logit_softcapping") && !j["final_logit_softcapping"].is_null())
    return unsupported("final_logit_softcapping", j["final_logit_softcapping"], "not supported yet");
  if (j.contains("attn_logit_softcapping") && !j["attn_logit_softcapping"].is_null())
    return unsupported("attn_logit_softcapping", j["attn_logit_softcapping"], "not supported yet");
  // RoPE: theta at the top level (transformers 4.x) or under rope_parameters (5.x); rope_scaling (4.x).
  c.rope_theta = j.value("rope_theta", 10000.0);
  c.rope_convention = "rotate_half";  // HF checkpoints use the rotate-half pairing.
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || !j[key].is_object()) continue;
    const auto& rope = j[key];
    if (rope.contains("rope_theta")) c.rope_theta = rope["rope_theta"].get<double>();
    const std::string type = rope.value("rope_type", rope.value("type", std::string("default")));
    if (type != "default") return unsupported(std::string(key) + ".rope_type", type, "only default RoPE is supported yet");
    if (rope.contains("partial_rotary_factor") && rope["partial_rotary_factor"].get<double>() != 1.0)
      return unsupported(std::string(key) + ".partial_rotary_factor", rope["partial_rotary_factor"], "only 1.0");
  }
  if (j.contains("partial_rotary_factor") && !j["partial_rotary_factor"].is_null() &&
      j["partial_rotary_factor"].get<double>() != 1.0)
    return unsupported("partial_rotary_factor", j["partial_rotary_factor"], "only 1.0");
  auto ids = [](const nlohmann::json& v) {
    std::vector<int32_t> out;
    if (v.is_number_integer()) out.push_back(v.get<int32_t>());
    if (v.is_array())
      for (const auto& x : v)
        if (x.is_number_integer()) out.push_back(x.get<int32_t>());
    return out;
  };
  if (j.contains("bos_token_id")) {
    auto b = ids(j["bos_token_id"]);
    if (!b.empty()) c.bos_id = b[0];
  }
  if (j.contains("eos_token_id")) {
    c.eos_ids = ids(j["eos_token_id"]);
    if (!c.eos_ids.empty()) c.eos_id = c.eos_ids[0];
  }
  TESSERA_RETURN_IF_ERROR(c.Validate(path));
  return c;
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  try {
    return nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return FileError(path, absl::StrCat("invalid JSON: ", e.what()));
  }
}

std::string ShapeStr(const std::vector<int64_t>& s) {
  std::string out;
  for (auto d : s) absl::StrAppend(&out, out.empty() ? "" : ",", d);
  return "[" + out + "]";
}

// Reads source tensors and produces package tensors (renamed, transposed, split, offset).
class TensorSource {
 public:
  explicit TensorSource(const SafetensorsSet& st) : st_(st) {}

  absl::StatusOr<const SafeTensor*> Find(const std::string& name) {
    const SafeTensor* t = st_.Find(name);
    if (t == nullptr) {
      std::string where = st_.files().empty() ? "" : st_.files()[0];
      return absl::NotFoundError(absl::StrCat(where, ": tensor ", name, " not found in the safetensors files"));
    }
    used_.insert(name);
    return t;
  }
  bool Has(const std::string& name) const { return st_.Find(name) != nullptr; }
  const std::set<std::string>& used() const { return used_; }

  // A matrix stored [out, in] (or [in, out] when conv1d), split into row ranges of the [out, in]
  // form. Each part keeps the source precision (F32/F16/BF16; conversions are exact round trips).
  absl::StatusOr<std::vector<TensorData>> Matrix(const std::string& name, bool conv1d, int64_t in,
                                                 const std::vector<std::pair<std::string, int64_t>>& parts) {
    TESSERA_ASSIGN_OR_RETURN(const SafeTensor* t, Find(name));
    int64_t out = 0;
    for (const auto& p : parts) out += p.second;
    const std::vector<int64_t> want = conv1d ? std::vector<int64_t>{in, out} : std::vector<int64_t>{out, in};
    if (t->shape != want)
      return absl::InvalidArgumentError(absl::StrCat(t->file, ": tensor ", name, " has shape ", ShapeStr(t->shape),
                                                     ", config.json implies ", ShapeStr(want)));
    const QType qt = t->dtype == SafeDType::kF16 ? QType::kF16 : t->dtype == SafeDType::kBF16 ? QType::kBF16 : QType::kF32;
    std::vector<TensorData> res;
    if (!conv1d && parts.size() == 1 && t->dtype != SafeDType::kF64 && t->dtype != SafeDType::kOther &&
        (t->dtype == SafeDType::kF32 || t->dtype == SafeDType::kF16 || t->dtype == SafeDType::kBF16)) {
      TensorData d;
      d.name = parts[0].first;
      d.qtype = qt;
      d.shape = want;
      d.cols = static_cast<uint64_t>(in);
      d.data.assign(t->data, t->data + t->bytes);
      st_.Release(*t);
      res.push_back(std::move(d));
      return res;
    }
    std::vector<float> f(t->numel());
    TESSERA_RETURN_IF_ERROR(t->ToF32(f.data()));
    st_.Release(*t);
    int64_t row0 = 0;
    for (const auto& [pname, rows] : parts) {
      TensorData d;
      d.name = pname;
      d.qtype = qt;
      d.shape = {rows, in};
      d.cols = static_cast<uint64_t>(in);
      const size_t elem = qt == QType::kF32 ? 4 : 2;
      d.data.resize(static_cast<size_t>(rows * in) * elem);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < in; ++c) {
          const float v = conv1d ? f[static_cast<size_t>(c * out + row0 + r)] : f[static_cast<size_t>((row0 + r) * in + c)];
          const size_t idx = static_cast<size_t>(r * in + c);
          if (qt == QType::kF32) {
            std::memcpy(d.data.data() + idx * 4, &v, 4);
          } else {
            const uint16_t h = qt == QType::kF16 ? F32ToF16(v) : F32ToBF16(v);
            std::memcpy(d.data.data() + idx * 2, &h, 2);
          }
        }
      }
      row0 += rows;
      res.push_back(std::move(d));
    }
    return res;
  }

  // A vector (norm weight or bias), as F32, split into parts, plus `offset` on every element.
  absl::StatusOr<std::vector<TensorData>> Vector(const std::string& name,
                                                 const std::vector<std::pair<std::string, int64_t>>& parts,
                                                 double offset = 0.0) {
    TESSERA_ASSIGN_OR_RETURN(const SafeTensor* t, Find(name));
    int64_t n = 0;
    for (const auto& p : parts) n += p.second;
    if (t->shape != std::vector<int64_t>{n})
      return absl::InvalidArgumentError(absl::StrCat(t->file, ": tensor ", name, " has shape ", ShapeStr(t->shape),
                                                     ", config.json implies [", n, "]"));
    std::vector<float> f(static_cast<size_t>(n));
    TESSERA_RETURN_IF_ERROR(t->ToF32(f.data()));
    std::vector<TensorData> res;
    int64_t i0 = 0;
    for (const auto& [pname, len] : parts) {
      TensorData d;
      d.name = pname;
      d.shape = {len};
      d.cols = static_cast<uint64_t>(len);
      d.data.resize(static_cast<size_t>(len) * 4);
      for (int64_t i = 0; i < len; ++i) {
        // Computed in f32 exactly as transformers does: (1.0 + w.float()).
        const float v = offset != 0.0 ? static_cast<float>(offset) + f[static_cast<size_t>(i0 + i)] : f[static_cast<size_t>(i0 + i)];
        std::memcpy(d.data.data() + static_cast<size_t>(i) * 4, &v, 4);
      }
      i0 += len;
      res.push_back(std::move(d));
    }
    return res;
  }

 private:
  const SafetensorsSet& st_;
  std::set<std::string> used_;
};

void Append(std::vector<TensorData>* dst, std::vector<TensorData>&& src) {
  for (auto& t : src) dst->push_back(std::move(t));
}

}  // namespace

nlohmann::ordered_json TokenizerManifest(const Tokenizer& tok) {
  nlohmann::ordered_json eos = nlohmann::ordered_json::array();
  for (int32_t id : tok.eos_ids()) eos.push_back(id);
  return {{"file", "tokenizer.txt"}, {"type", tok.type()},   {"vocab", tok.vocab_size()},
          {"bos", tok.bos_id()},     {"eos", eos},           {"add_bos", tok.add_bos()},
          {"chat_template", tok.chat_template()}};
}

absl::Status ReconcileTokenizer(const Tokenizer& tok, const std::string& tok_json, ModelConfig* c) {
  if (tok.vocab_size() > c->vocab)
    return FileError(tok_json, absl::StrCat("tokenizer has ", tok.vocab_size(), " tokens but the model's vocab is ", c->vocab));
  if (c->bos_id < 0) c->bos_id = tok.bos_id();
  if (c->eos_id < 0) c->eos_id = tok.eos_id();
  for (int32_t id : tok.eos_ids())
    if (std::find(c->eos_ids.begin(), c->eos_ids.end(), id) == c->eos_ids.end()) c->eos_ids.push_back(id);
  if (c->eos_ids.empty() && c->eos_id >= 0) c->eos_ids.push_back(c->eos_id);
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ReadHfConfig(const std::string& hf_dir) {
  const std::string path = (fs::path(hf_dir) / "config.json").string();
  TESSERA_ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonFile(path));
  const FamilySpec* spec = nullptr;
  try {
    return ParseConfig(j, path, &spec);
  } catch (const std::exception& e) {
    return FileError(path, absl::StrCat("bad field: ", e.what()));
  }
}

absl::Status ConvertHuggingFace(const std::string& src, const std::string& out, const ConvertOptions& opts) {
  if (!fs::is_directory(src)) return FileError(src, "not a directory (expected a Hugging Face model directory)");
  const std::string cfg_path = (fs::path(src) / "config.json").string();
  TESSERA_ASSIGN_OR_RETURN(nlohmann::json cfg_json, ReadJsonFile(cfg_path));
  const FamilySpec* spec = nullptr;
  ModelConfig c;
  try {
    TESSERA_ASSIGN_OR_RETURN(c, ParseConfig(cfg_json, cfg_path, &spec));
  } catch (const std::exception& e) {
    return FileError(cfg_path, absl::StrCat("bad field: ", e.what()));
  }
  TESSERA_ASSIGN_OR_RETURN(SafetensorsSet st, SafetensorsSet::Open(src));
  const std::string tok_json = (fs::path(src) / "tokenizer.json").string();
  const std::string tok_cfg = (fs::path(src) / "tokenizer_config.json").string();
  if (!fs::exists(tok_json)) return FileError(tok_json, "missing (a tokenizer.json is required)");
  TESSERA_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromHuggingFace(tok_json, fs::exists(tok_cfg) ? tok_cfg : ""));
  TESSERA_RETURN_IF_ERROR(ReconcileTokenizer(tok, tok_json, &c));

  TESSERA_ASSIGN_OR_RETURN(auto writer, PackageWriter::Create(out, opts.force));
  TensorSource ts(st);
  const int64_t H = c.hidden, Q = c.heads * c.head_dim, KV = c.kv_heads * c.head_dim, F = c.ffn;
  const bool tcv = spec->conv1d;
  Progress progress("convert", static_cast<size_t>(c.layers + 2));
  {
    std::vector<TensorData> v;
    TESSERA_ASSIGN_OR_RETURN(auto e, ts.Matrix(spec->embed, false, H, {{"token_embd", c.vocab}}));
    Append(&v, std::move(e));
    if (c.positions == "learned") {
      TESSERA_ASSIGN_OR_RETURN(auto p, ts.Matrix(spec->pos_embed, false, H, {{"pos_embd", c.max_ctx}}));
      Append(&v, std::move(p));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack("embedding.bin", "embedding", -1, v));
    progress.Add();
  }
  const bool layer_norm = c.norm == "layer";
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = absl::StrReplaceAll(spec->layer_prefix, {{"{i}", absl::StrCat(i)}});
    std::vector<TensorData> v;
    auto norm = [&](const std::string& src_name, const std::string& dst) -> absl::Status {
      TESSERA_ASSIGN_OR_RETURN(auto w, ts.Vector(p + src_name + ".weight", {{dst, H}}, c.norm_weight_offset));
      Append(&v, std::move(w));
      if (layer_norm) {
        TESSERA_ASSIGN_OR_RETURN(auto b, ts.Vector(p + src_name + ".bias", {{dst + ".bias", H}}));
        Append(&v, std::move(b));
      }
      return absl::OkStatus();
    };
    auto linear = [&](const std::string& src_name, int64_t in, const std::vector<std::pair<std::string, int64_t>>& parts,
                      bool bias) -> absl::Status {
      TESSERA_ASSIGN_OR_RETURN(auto w, ts.Matrix(p + src_name + ".weight", tcv, in, parts));
      Append(&v, std::move(w));
      if (bias) {
        std::vector<std::pair<std::string, int64_t>> bparts;
        for (const auto& [n, len] : parts) bparts.push_back({n + ".bias", len});
        TESSERA_ASSIGN_OR_RETURN(auto b, ts.Vector(p + src_name + ".bias", bparts));
        Append(&v, std::move(b));
      }
      return absl::OkStatus();
    };
    TESSERA_RETURN_IF_ERROR(norm(spec->attn_norm, "attn_norm"));
    if (!spec->qkv_fused.empty()) {
      TESSERA_RETURN_IF_ERROR(linear(spec->qkv_fused, H, {{"attn_q", Q}, {"attn_k", KV}, {"attn_v", KV}}, c.qkv_bias));
    } else {
      TESSERA_RETURN_IF_ERROR(linear(spec->q, H, {{"attn_q", Q}}, c.qkv_bias));
      TESSERA_RETURN_IF_ERROR(linear(spec->k, H, {{"attn_k", KV}}, c.qkv_bias));
      TESSERA_RETURN_IF_ERROR(linear(spec->v, H, {{"attn_v", KV}}, c.qkv_bias));
    }
    if (c.qk_norm) {
      TESSERA_ASSIGN_OR_RETURN(auto qn, ts.Vector(p + spec->q_norm + ".weight", {{"attn_q_norm", c.head_dim}}));
      TESSERA_ASSIGN_OR_RETURN(auto kn, ts.Vector(p + spec->k_norm + ".weight", {{"attn_k_norm", c.head_dim}}));
      Append(&v, std::move(qn));
      Append(&v, std::move(kn));
    }
    TESSERA_RETURN_IF_ERROR(linear(spec->o, Q, {{"attn_output", H}}, c.attn_out_bias));
    TESSERA_RETURN_IF_ERROR(norm(spec->ffn_norm, "ffn_norm"));
    if (c.mlp == "gated") {
      if (!spec->gate_up_fused.empty()) {
        TESSERA_RETURN_IF_ERROR(linear(spec->gate_up_fused, H, {{"ffn_gate", F}, {"ffn_up", F}}, c.mlp_bias));
      } else {
        TESSERA_RETURN_IF_ERROR(linear(spec->gate, H, {{"ffn_gate", F}}, c.mlp_bias));
        TESSERA_RETURN_IF_ERROR(linear(spec->up, H, {{"ffn_up", F}}, c.mlp_bias));
      }
    } else {
      TESSERA_RETURN_IF_ERROR(linear(spec->up, H, {{"ffn_up", F}}, c.mlp_bias));
    }
    TESSERA_RETURN_IF_ERROR(linear(spec->down, F, {{"ffn_down", H}}, c.mlp_bias));
    TESSERA_RETURN_IF_ERROR(writer->WritePack(BlockFileName(i), "block", i, v));
    progress.Add();
  }
  {
    std::vector<TensorData> v;
    TESSERA_ASSIGN_OR_RETURN(auto n, ts.Vector(spec->final_norm + ".weight", {{"output_norm", H}}, c.norm_weight_offset));
    Append(&v, std::move(n));
    if (layer_norm) {
      TESSERA_ASSIGN_OR_RETURN(auto b, ts.Vector(spec->final_norm + ".bias", {{"output_norm.bias", H}}));
      Append(&v, std::move(b));
    }
    if (!c.tie_embeddings) {
      TESSERA_ASSIGN_OR_RETURN(auto o, ts.Matrix(spec->lm_head, false, H, {{"output", c.vocab}}));
      Append(&v, std::move(o));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack("lm.bin", "lm", -1, v));
    progress.Add();
  }
  for (const auto& [name, t] : st.tensors()) {
    if (ts.used().count(name) || absl::EndsWith(name, "rotary_emb.inv_freq") || absl::EndsWith(name, ".attn.bias") ||
        absl::EndsWith(name, ".attn.masked_bias"))
      continue;
    if (name == spec->lm_head && c.tie_embeddings) continue;
    return FileError(t.file, absl::StrCat("unexpected tensor ", name, " (not part of a ", c.family, " model)"));
  }
  TESSERA_RETURN_IF_ERROR(writer->WriteTokenizer(tok));
  progress.Finish();

  nlohmann::ordered_json source_files = nlohmann::ordered_json::array();
  for (const auto& f : st.files()) {
    TESSERA_ASSIGN_OR_RETURN(std::string h, HashFile(f));
    source_files.push_back({{"path", fs::path(f).filename().string()}, {"bytes", fs::file_size(f)}, {"xxh3_64", h}});
  }
  std::string src_dtype = "f32";
  if (const SafeTensor* e = st.Find(spec->embed)) {
    src_dtype = e->dtype == SafeDType::kF16 ? "f16" : e->dtype == SafeDType::kBF16 ? "bf16" : "f32";
  }
  nlohmann::ordered_json m;
  m["producer"] = {{"tool", "tessera"}, {"version", kTesseraVersion}, {"cmdline", opts.cmdline}};
  m["source"] = {{"type", "hf-safetensors"}, {"path", fs::absolute(src).string()}, {"files", source_files}};
  m["arch"] = c.ToJson();
  m["tokenizer"] = TokenizerManifest(tok);
  m["quant"] = {{"recipe", src_dtype}, {"type", src_dtype}, {"algorithm", "none"}};
  return writer->Commit(std::move(m));
}

}  // namespace tessera
