// Writes the fuzz seed corpora (fuzz/corpus/<target>/) from the fixtures and the project's own
// writers, keeping each seed small. Run by `scripts/fuzz.sh --make-corpus`; the output is
// committed so fuzzing needs no generation step.
//   usage: fuzz_make_corpus FIXTURES_DIR OUT_DIR
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "converter/hf_converter.h"
#include "core/half.h"
#include "formats/gguf.h"
#include "formats/tensor_pack.h"
#include "formats/tokenizer.h"
#include "nlohmann/json.hpp"
#include "onnx/onnx_pb.h"

namespace fs = std::filesystem;
using namespace tessera;

namespace {
std::string g_out;

void Put(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(g_out + "/" + target);
  std::ofstream(g_out + "/" + target + "/" + name, std::ios::binary | std::ios::trunc) << bytes;
}
std::string Slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
template <typename T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

void Safetensors() {
  auto file = [](const nlohmann::ordered_json& header, const std::string& data) {
    std::string h = header.dump();
    uint64_t n = h.size();
    return std::string(reinterpret_cast<const char*>(&n), 8) + h + data;
  };
  std::vector<float> f32{1, -2, 3.5f, 0, 1e-3f, 7};
  std::vector<uint16_t> f16{F32ToF16(1.f), F32ToF16(-0.5f), F32ToF16(2.f), F32ToF16(65504.f)};
  std::vector<uint16_t> bf16{F32ToBF16(1.f), F32ToBF16(-3.f), F32ToBF16(0.25f), F32ToBF16(1e30f)};
  std::vector<double> f64{1.0, -1.0};
  nlohmann::ordered_json h;
  h["__metadata__"] = {{"format", "pt"}};
  h["a"] = {{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 24}}};
  h["b"] = {{"dtype", "F16"}, {"shape", {4}}, {"data_offsets", {24, 32}}};
  h["c"] = {{"dtype", "BF16"}, {"shape", {2, 2}}, {"data_offsets", {32, 40}}};
  h["d"] = {{"dtype", "F64"}, {"shape", {2}}, {"data_offsets", {40, 56}}};
  Put("safetensors", "mixed", file(h, Bytes(f32) + Bytes(f16) + Bytes(bf16) + Bytes(f64)));
  nlohmann::ordered_json one;
  one["x"] = {{"dtype", "I32"}, {"shape", {1}}, {"data_offsets", {0, 4}}};
  Put("safetensors", "int", file(one, std::string(4, '\1')));
  nlohmann::ordered_json empty = nlohmann::ordered_json::object();
  Put("safetensors", "empty", file(empty, ""));
  nlohmann::ordered_json scalar;
  scalar["s"] = {{"dtype", "F32"}, {"shape", nlohmann::json::array()}, {"data_offsets", {0, 4}}};
  Put("safetensors", "scalar", file(scalar, std::string(4, '\0')));
}

void TensorPacks() {
  std::vector<TensorData> ts;
  auto add = [&](const std::string& name, QType q, std::vector<int64_t> shape, uint32_t group, uint64_t cols) {
    TensorData t;
    t.name = name;
    t.qtype = q;
    t.shape = shape;
    t.group = group;
    t.cols = cols;
    const size_t rows = t.rows();
    t.data.resize(DataPlaneBytes(q, rows, cols));
    for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = static_cast<uint8_t>(i * 37 + 11);
    if (IsQuantized(q)) {
      t.scales.resize(ScalePlaneBytes(q, rows, cols, group));
      for (size_t i = 0; i + 1 < t.scales.size(); i += 2) {
        const uint16_t s = F32ToF16(0.01f * static_cast<float>(i + 1));
        std::memcpy(&t.scales[i], &s, 2);
      }
      if (q == QType::kI4Asym) t.mins = t.scales;
    } else if (q == QType::kF32) {
      std::vector<float> v(rows * cols, 0.5f);
      std::memcpy(t.data.data(), v.data(), t.data.size());
    }
    ts.push_back(t);
  };
  add("norm", QType::kF32, {8}, 0, 8);
  add("attn_q", QType::kF16, {2, 4}, 0, 4);
  add("attn_k", QType::kBF16, {2, 4}, 0, 4);
  add("ffn_up", QType::kI8, {2, 32}, 32, 32);
  add("ffn_down", QType::kI4Sym, {2, 40}, 32, 64);
  add("ffn_gate", QType::kI4Asym, {3, 32}, 32, 32);
  add("attn_v", QType::kI6Sym, {2, 64}, 32, 64);
  const std::string tmp = g_out + "/pack.tmp";
  if (!WriteTensorPack(tmp, ts).ok()) std::abort();
  const std::string pack = Slurp(tmp);
  fs::remove(tmp);
  // Byte 0: load mode (mmap / read / index only) and bit 2 = verify checksums.
  Put("tensor_pack", "mmap-verify", std::string(1, '\4') + pack);
  Put("tensor_pack", "read", std::string(1, '\1') + pack);
  Put("tensor_pack", "index-only", std::string(1, '\2') + pack);
  if (!WriteTensorPack(tmp, {ts[0]}).ok()) std::abort();
  Put("tensor_pack", "one-f32", std::string(1, '\5') + Slurp(tmp));
  fs::remove(tmp);
}

void PackageSeeds(const std::string& fx) {
  const std::string dir = g_out + "/pkg.tmp";
  fs::remove_all(dir);
  if (!ConvertHuggingFace(fx + "/stories260K/hf", dir, {}).ok()) std::abort();
  Put("package", "manifest.json", Slurp(dir + "/manifest.json"));
  auto m = nlohmann::ordered_json::parse(Slurp(dir + "/manifest.json"));
  m["files"][0].erase("xxh3_64");
  Put("package", "no-hash.json", m.dump());
  Put("tokenizer", "stories260K.txt", "\1" + Slurp(dir + "/tokenizer.txt"));
  fs::remove_all(dir);
}

void Tokenizers(const std::string& fx) {
  Put("tokenizer", "stories260K.json", std::string(1, '\0') + Slurp(fx + "/stories260K/hf/tokenizer.json"));
  Put("tokenizer", "qwen2.json", std::string(1, '\0') + Slurp(fx + "/tiny/qwen2/tokenizer.json"));
  auto q = Tokenizer::FromHuggingFace(fx + "/tiny/qwen2/tokenizer.json", fx + "/tiny/qwen2/tokenizer_config.json");
  if (!q.ok()) std::abort();
  Put("tokenizer", "qwen2.txt", "\1" + q->Serialize());
  const char* texts[] = {"Hello world", "Once upon a time, there was a little girl.",
                         "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x98\x80",
                         "<|im_start|>user\nhi<|im_end|>", "   leading  and\ttabs\n\n", "12345 67.89e-3",
                         "bad \xff\xfe utf8 \xc3", "<s></s><unk> <0x41>"};
  int i = 0;
  for (const char* t : texts)
    for (char sel = 0; sel < 4; ++sel) Put("tokenizer_encode", "text" + std::to_string(i++), std::string(1, sel) + t);
}

void Onnx(const std::string& fx) {
  onnx::ModelProto m;
  if (!m.ParseFromString(Slurp(fx + "/stories260K/onnx/model_ext.onnx"))) std::abort();
  for (auto& t : *m.mutable_graph()->mutable_initializer())
    for (auto& kv : *t.mutable_external_data())
      if (kv.key() == "location") kv.set_value("weights.bin");
  Put("onnx", "stories260K-ext", m.SerializeAsString());
  // The same with an external location that tries to leave the directory.
  for (auto& t : *m.mutable_graph()->mutable_initializer())
    for (auto& kv : *t.mutable_external_data())
      if (kv.key() == "location") kv.set_value("../../etc/passwd");
  Put("onnx", "escape", m.SerializeAsString());
  // A minimal graph with inline initializers of several dtypes.
  onnx::ModelProto s;
  s.set_ir_version(8);
  s.add_opset_import()->set_version(17);
  auto* g = s.mutable_graph();
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(1);
  w->add_dims(2);
  w->add_dims(2);
  for (float v : {1.f, 2.f, 3.f, 4.f}) w->add_float_data(v);
  auto* i64 = g->add_initializer();
  i64->set_name("shape");
  i64->set_data_type(7);
  i64->add_dims(2);
  i64->add_int64_data(1);
  i64->add_int64_data(-1);
  auto* h = g->add_initializer();
  h->set_name("h");
  h->set_data_type(10);
  h->add_dims(2);
  h->set_raw_data(std::string("\x00\x3c\x00\xc0", 4));
  auto* n = g->add_node();
  n->set_op_type("MatMul");
  n->add_input("x");
  n->add_input("w");
  n->add_output("y");
  g->add_input()->set_name("x");
  g->add_output()->set_name("y");
  Put("onnx", "matmul", s.SerializeAsString());
}

void ChatTemplates(const std::string& fx) {
  const std::string msgs =
      R"([{"role":"system","content":"sys"},{"role":"user","content":"hi"},{"role":"assistant","content":"yo"},)"
      R"({"role":"tool","content":"{\"x\":1}"},{"role":"user","content":[{"type":"text","text":"parts"}]}])";
  for (const char* m : {"gemma", "llama", "mistral", "phi3", "qwen2", "qwen3"}) {
    const std::string src = Slurp(fx + "/tiny/" + m + "/chat_template.jinja");
    Put("chat_template", m, src);
    Put("chat_template", std::string(m) + "-msgs", src + std::string(1, '\0') + msgs);
  }
  Put("chat_template", "constructs",
      "{%- set ns = namespace(n=0) -%}{% macro f(x) %}[{{ x|upper }}]{% endmacro %}"
      "{% for m in messages if m.role != 'tool' %}{{ loop.index }}{{ f(m.content) }}{% set ns.n = ns.n + 1 %}"
      "{% elif false %}{% else %}{% endfor %}{{ ns.n }}{{ messages|length }}{{ 'a,b'.split(',')|join('-') }}"
      "{{ (messages|first).role|default('x') }}{{ tools|tojson }}{% if not bos_token is defined %}{{ raise_exception('no') }}{% endif %}"
      "{{ messages[-1]['content'] if messages[-1]['content'] is string else 'parts' }}{{ 3 // 2 }}{{ 7 % 3 }}{{ 'x' ~ 1 }}"
      "{{ {'k': [1, 2.5, none, true]}|items|list|tojson }}{{ range(3)|list }}{{ ' t '|trim }}");
}

void Server() {
  struct S {
    int route;
    int client;
    const char* body;
  };
  // Route numbers as in fuzz_server.cc's kRoutes.
  const S seeds[] = {
      {0, 0, R"({"model":"s260k","messages":[{"role":"user","content":"Once upon"}],"max_tokens":4,"temperature":0})"},
      {0, 0x84, R"({"model":"s260k","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":8,"stream_options":{"include_usage":true}})"},
      {1, 0, R"({"model":"s260k","prompt":"Once upon a time","max_tokens":5,"stop":["\n"],"seed":1,"logit_bias":{"5":-100}})"},
      {1, 0x81, R"({"model":"s260k","prompt":[[1,2,3]],"max_tokens":6,"stream":true,"top_p":0.5,"presence_penalty":1})"},
      {2, 0, R"({"model":"s260k","input":["a","b"],"encoding_format":"base64","dimensions":8})"},
      {3, 0, R"({"model":"s260k","prompt":"Lily","options":{"num_predict":4,"temperature":0,"stop":["."]}})"},
      {3, 0x82, R"({"model":"s260k","prompt":"Tom","stream":true,"options":{"num_predict":12}})"},
      {4, 0, R"({"model":"s260k","messages":[{"role":"user","content":"x"}],"stream":false,"options":{"num_ctx":32}})"},
      {5, 0, R"({"model":"s260k","input":"text","truncate":false})"},
      {6, 0, R"({"model":"s260k","prompt":"text"})"},
      {7, 0, R"({"model":"s260k"})"},
      {8, 0, R"({"model":"s260k"})"},
      {9, 0, R"({"content":"Hello world","with_pieces":true})"},
      {10, 0, R"({"tokens":[1,2,3,511,-1]})"},
      {11, 0, R"({"messages":[{"role":"user","content":"q"}]})"},
      {0, 0, R"({"model":"s260k","messages":"oops","max_tokens":1e309})"},
      {1, 0, "{\"prompt\":\"bad \xff utf8\",\"max_tokens\":-5}"},
      {12, 0, ""},
  };
  int i = 0;
  for (const S& s : seeds)
    Put("server", "req" + std::to_string(i++), std::string(1, static_cast<char>(s.route)) +
                                                   std::string(1, static_cast<char>(s.client)) + s.body);
}
}  // namespace

// A two-token-type llama in every small tensor type the importer maps (a few KB).
void GgufSeeds() {
  namespace g = tessera::gguf;
  auto make = [](bool qwen) {
    g::Writer w;
    const std::string arch = qwen ? "qwen2" : "llama";
    w.Add("general.architecture", g::Value::Str(arch));
    w.Add("general.name", g::Value::Str("seed"));
    w.Add(arch + ".block_count", g::Value::U32(1));
    w.Add(arch + ".context_length", g::Value::U32(64));
    w.Add(arch + ".embedding_length", g::Value::U32(32));
    w.Add(arch + ".feed_forward_length", g::Value::U32(32));
    w.Add(arch + ".attention.head_count", g::Value::U32(2));
    w.Add(arch + ".attention.head_count_kv", g::Value::U32(1));
    w.Add(arch + ".attention.layer_norm_rms_epsilon", g::Value::F32(1e-5f));
    w.Add(arch + ".rope.freq_base", g::Value::F32(10000.0f));
    if (qwen) {
      w.Add("tokenizer.ggml.model", g::Value::Str("gpt2"));
      w.Add("tokenizer.ggml.pre", g::Value::Str("qwen2"));
      w.Add("tokenizer.ggml.tokens", g::Value::StrArray({"a", "b", "ab", "\xc4\xa0", "<|im_end|>", "c", "d", "e"}));
      w.Add("tokenizer.ggml.merges", g::Value::StrArray({"a b"}));
      w.Add("tokenizer.ggml.eos_token_id", g::Value::U32(4));
      w.Add("tokenizer.chat_template", g::Value::Str("{% for m in messages %}{{ m.content }}{% endfor %}"));
    } else {
      w.Add("tokenizer.ggml.model", g::Value::Str("llama"));
      w.Add("tokenizer.ggml.tokens", g::Value::StrArray({"<unk>", "<s>", "</s>", "<0x0A>", "\xe2\x96\x81" "a", "a", "b", "ab"}));
      w.Add("tokenizer.ggml.scores", g::Value::F32Array({0, 0, 0, 0, -1, -2, -3, -4}));
      w.Add("tokenizer.ggml.token_type", g::Value::I32Array({2, 3, 3, 6, 1, 1, 1, 1}));
      w.Add("tokenizer.ggml.bos_token_id", g::Value::U32(1));
      w.Add("tokenizer.ggml.eos_token_id", g::Value::U32(2));
    }
    auto t = [&](const std::string& name, std::vector<uint64_t> dims, uint32_t type) {
      uint64_t numel = 1;
      for (uint64_t d : dims) numel *= d;
      const uint64_t bytes = g::TensorBytes(type, dims[0], numel);
      w.AddTensor(name, dims, type, [bytes, type]() -> absl::StatusOr<std::vector<uint8_t>> {
        std::vector<uint8_t> b(bytes);
        for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>((i * 37 + type) & 0x3f);
        return b;
      });
    };
    t("token_embd.weight", {32, 8}, g::kF16);
    t("output_norm.weight", {32}, g::kF32);
    t("output.weight", {32, 8}, g::kQ8_0);
    t("blk.0.attn_norm.weight", {32}, g::kF32);
    t("blk.0.attn_q.weight", {32, 32}, g::kQ4_0);
    t("blk.0.attn_k.weight", {32, 16}, g::kQ4_1);
    t("blk.0.attn_v.weight", {32, 16}, g::kQ5_0);
    if (qwen) {
      t("blk.0.attn_q.bias", {32}, g::kF32);
      t("blk.0.attn_k.bias", {16}, g::kF32);
      t("blk.0.attn_v.bias", {16}, g::kF32);
    }
    t("blk.0.attn_output.weight", {32, 32}, g::kQ5_1);
    t("blk.0.ffn_norm.weight", {32}, g::kF32);
    t("blk.0.ffn_gate.weight", {32, 32}, g::kBF16);
    t("blk.0.ffn_up.weight", {32, 32}, g::kQ8_0);
    t("blk.0.ffn_down.weight", {32, 32}, g::kF16);
    auto bytes = w.Serialize();
    if (!bytes.ok()) std::abort();
    return std::string(bytes->begin(), bytes->end());
  };
  const std::string llama = make(false), qwen = make(true);
  Put("gguf", "llama.gguf", llama);
  Put("gguf", "qwen2.gguf", qwen);
  Put("gguf", "truncated.gguf", llama.substr(0, llama.size() / 3));
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: fuzz_make_corpus FIXTURES_DIR OUT_DIR\n";
    return 2;
  }
  const std::string fx = argv[1];
  g_out = argv[2];
  fs::create_directories(g_out);
  Safetensors();
  TensorPacks();
  PackageSeeds(fx);
  Tokenizers(fx);
  Onnx(fx);
  ChatTemplates(fx);
  Server();
  GgufSeeds();
  std::cout << "wrote seeds to " << g_out << "\n";
  return 0;
}
