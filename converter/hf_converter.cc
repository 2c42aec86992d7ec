#include "converter/hf_converter.h"

#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/status.h"
#include "formats/package.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"

namespace tessera {
namespace fs = std::filesystem;

absl::StatusOr<ModelConfig> ReadHfConfig(const std::string& hf_dir) {
  const std::string path = (fs::path(hf_dir) / "config.json").string();
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return FileError(path, absl::StrCat("invalid JSON: ", e.what()));
  }
  ModelConfig c;
  try {
    const std::string model_type = j.value("model_type", "");
    std::string arch = j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty()
                           ? j["architectures"][0].get<std::string>() : "";
    if (model_type == "llama" || arch == "LlamaForCausalLM") {
      c.family = "llama";
    } else if (model_type == "mistral" || arch == "MistralForCausalLM") {
      c.family = "mistral";
      if (j.contains("sliding_window") && !j["sliding_window"].is_null())
        return FileError(path, "mistral sliding_window attention is not supported yet");
    } else {
      return FileError(path, absl::StrCat("unsupported architecture '", arch.empty() ? model_type : arch,
                                          "' (supported: LlamaForCausalLM, MistralForCausalLM)"));
    }
    c.hidden = j.at("hidden_size").get<int64_t>();
    c.layers = j.at("num_hidden_layers").get<int64_t>();
    c.heads = j.at("num_attention_heads").get<int64_t>();
    c.kv_heads = j.value("num_key_value_heads", c.heads);
    if (j.contains("head_dim") && !j["head_dim"].is_null()) {
      c.head_dim = j["head_dim"].get<int64_t>();
    } else {
      c.head_dim = c.heads > 0 ? c.hidden / c.heads : 0;
    }
    c.ffn = j.at("intermediate_size").get<int64_t>();
    c.vocab = j.at("vocab_size").get<int64_t>();
    c.max_ctx = j.value("max_position_embeddings", int64_t{2048});
    c.norm_eps = j.value("rms_norm_eps", 1e-6);
    c.tie_embeddings = j.value("tie_word_embeddings", false);
    c.qkv_bias = j.value("attention_bias", false);
    if (j.value("mlp_bias", false)) return FileError(path, "mlp_bias is not supported yet");
    const std::string act = j.value("hidden_act", "silu");
    if (act != "silu") return FileError(path, absl::StrCat("hidden_act '", act, "' is not supported"));
    c.activation = act;
    // RoPE: theta at the top level (older configs) or in rope_parameters (transformers 5).
    nlohmann::json rope = j.contains("rope_parameters") ? j["rope_parameters"]
                          : j.contains("rope_scaling") ? j["rope_scaling"] : nlohmann::json();
    c.rope_theta = j.value("rope_theta", 10000.0);
    if (rope.is_object()) {
      if (rope.contains("rope_theta")) c.rope_theta = rope["rope_theta"].get<double>();
      std::string type = rope.value("rope_type", rope.value("type", "default"));
      if (type != "default")
        return FileError(path, absl::StrCat("rope scaling type '", type, "' is not supported yet"));
    }
    c.rope_convention = "rotate_half";  // HF checkpoints use the rotate-half pairing.
    auto first_id = [](const nlohmann::json& v) -> int32_t {
      if (v.is_number_integer()) return v.get<int32_t>();
      if (v.is_array() && !v.empty()) return v[0].get<int32_t>();
      return -1;
    };
    if (j.contains("bos_token_id")) c.bos_id = first_id(j["bos_token_id"]);
    if (j.contains("eos_token_id")) c.eos_id = first_id(j["eos_token_id"]);
  } catch (const std::exception& e) {
    return FileError(path, absl::StrCat("missing or bad field: ", e.what()));
  }
  TESSERA_RETURN_IF_ERROR(c.Validate(path));
  return c;
}

namespace {

// Copies a source tensor into a package tensor. Matrices keep F32/F16/BF16; everything else
// becomes F32.
absl::StatusOr<TensorData> TakeTensor(const SafetensorsSet& st, const std::string& src_name,
                                      const std::string& dst_name, std::vector<int64_t> want_shape,
                                      std::set<std::string>* used) {
  const SafeTensor* t = st.Find(src_name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat("tensor ", src_name, " not found in the safetensors files"));
  if (t->shape != want_shape) {
    std::string got, want;
    for (auto d : t->shape) absl::StrAppend(&got, got.empty() ? "" : ",", d);
    for (auto d : want_shape) absl::StrAppend(&want, want.empty() ? "" : ",", d);
    return absl::InvalidArgumentError(absl::StrCat(t->file, ": tensor ", src_name, " has shape [", got,
                                                   "], config.json implies [", want, "]"));
  }
  used->insert(src_name);
  TensorData d;
  d.name = dst_name;
  d.shape = want_shape;
  d.cols = static_cast<uint64_t>(want_shape.back());
  const bool matrix = want_shape.size() == 2;
  if (matrix && (t->dtype == SafeDType::kF32 || t->dtype == SafeDType::kF16 || t->dtype == SafeDType::kBF16)) {
    d.qtype = t->dtype == SafeDType::kF32 ? QType::kF32 : t->dtype == SafeDType::kF16 ? QType::kF16 : QType::kBF16;
    d.data.assign(t->data, t->data + t->bytes);
    return d;
  }
  d.qtype = QType::kF32;
  d.data.resize(t->numel() * 4);
  TESSERA_RETURN_IF_ERROR(t->ToF32(reinterpret_cast<float*>(d.data.data())));
  return d;
}

}  // namespace

absl::Status ConvertHuggingFace(const std::string& src, const std::string& out, const ConvertOptions& opts) {
  if (!fs::is_directory(src)) return FileError(src, "not a directory (expected a Hugging Face model directory)");
  TESSERA_ASSIGN_OR_RETURN(ModelConfig c, ReadHfConfig(src));
  TESSERA_ASSIGN_OR_RETURN(SafetensorsSet st, SafetensorsSet::Open(src));
  const std::string tok_json = (fs::path(src) / "tokenizer.json").string();
  const std::string tok_cfg = (fs::path(src) / "tokenizer_config.json").string();
  if (!fs::exists(tok_json)) return FileError(tok_json, "missing (a tokenizer.json is required)");
  TESSERA_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromHuggingFace(tok_json, fs::exists(tok_cfg) ? tok_cfg : ""));
  if (tok.vocab_size() > c.vocab)
    return FileError(tok_json, absl::StrCat("tokenizer has ", tok.vocab_size(), " tokens but the model's vocab is ", c.vocab));
  if (c.bos_id < 0) c.bos_id = tok.bos_id();
  if (c.eos_id < 0) c.eos_id = tok.eos_id();

  TESSERA_ASSIGN_OR_RETURN(auto writer, PackageWriter::Create(out, opts.force));
  std::set<std::string> used;
  const int64_t H = c.hidden, Q = c.heads * c.head_dim, KV = c.kv_heads * c.head_dim, F = c.ffn;
  Progress progress("convert", static_cast<size_t>(c.layers + 2));

  {
    std::vector<TensorData> v;
    TESSERA_ASSIGN_OR_RETURN(auto e, TakeTensor(st, "model.embed_tokens.weight", "token_embd", {c.vocab, H}, &used));
    v.push_back(std::move(e));
    TESSERA_RETURN_IF_ERROR(writer->WritePack("embedding.bin", "embedding", -1, v));
    progress.Add();
  }
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    struct M { const char* src; const char* dst; std::vector<int64_t> shape; };
    std::vector<M> map = {
        {"input_layernorm.weight", "attn_norm", {H}},
        {"self_attn.q_proj.weight", "attn_q", {Q, H}},
        {"self_attn.k_proj.weight", "attn_k", {KV, H}},
        {"self_attn.v_proj.weight", "attn_v", {KV, H}},
        {"self_attn.o_proj.weight", "attn_output", {H, Q}},
        {"post_attention_layernorm.weight", "ffn_norm", {H}},
        {"mlp.gate_proj.weight", "ffn_gate", {F, H}},
        {"mlp.up_proj.weight", "ffn_up", {F, H}},
        {"mlp.down_proj.weight", "ffn_down", {H, F}},
    };
    if (c.qkv_bias) {
      map.push_back({"self_attn.q_proj.bias", "attn_q.bias", {Q}});
      map.push_back({"self_attn.k_proj.bias", "attn_k.bias", {KV}});
      map.push_back({"self_attn.v_proj.bias", "attn_v.bias", {KV}});
    }
    std::vector<TensorData> v;
    for (const auto& m : map) {
      TESSERA_ASSIGN_OR_RETURN(auto t, TakeTensor(st, p + m.src, m.dst, m.shape, &used));
      v.push_back(std::move(t));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack(BlockFileName(i), "block", i, v));
    progress.Add();
  }
  {
    std::vector<TensorData> v;
    TESSERA_ASSIGN_OR_RETURN(auto n, TakeTensor(st, "model.norm.weight", "output_norm", {H}, &used));
    v.push_back(std::move(n));
    if (!c.tie_embeddings) {
      TESSERA_ASSIGN_OR_RETURN(auto o, TakeTensor(st, "lm_head.weight", "output", {c.vocab, H}, &used));
      v.push_back(std::move(o));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack("lm.bin", "lm", -1, v));
    progress.Add();
  }
  for (const auto& [name, t] : st.tensors()) {
    if (used.count(name) || absl::EndsWith(name, "rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && c.tie_embeddings) continue;
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
  if (const SafeTensor* e = st.Find("model.embed_tokens.weight")) {
    src_dtype = e->dtype == SafeDType::kF16 ? "f16" : e->dtype == SafeDType::kBF16 ? "bf16" : "f32";
  }
  nlohmann::ordered_json m;
  m["producer"] = {{"tool", "tessera"}, {"version", kTesseraVersion}, {"cmdline", opts.cmdline}};
  m["source"] = {{"type", "hf-safetensors"}, {"path", fs::absolute(src).string()}, {"files", source_files}};
  m["arch"] = c.ToJson();
  nlohmann::ordered_json eos = nlohmann::ordered_json::array();
  for (int32_t id : tok.eos_ids()) eos.push_back(id);
  m["tokenizer"] = {{"file", "tokenizer.txt"}, {"type", tok.type()}, {"vocab", tok.vocab_size()},
                    {"bos", tok.bos_id()}, {"eos", eos}, {"add_bos", tok.add_bos()},
                    {"chat_template", tok.chat_template()}};
  m["quant"] = {{"recipe", src_dtype}, {"type", src_dtype}, {"algorithm", "none"}};
  return writer->Commit(std::move(m));
}

}  // namespace tessera
