// ONNX import end to end: stories260K (plain, external data, KV-cache exports) bit-identical to the
// safetensors conversion; tiny llama/qwen2/qwen3/gpt2 and the MatMulNBits INT4 exports against ONNX
// Runtime's logits; exact INT4 import; one-line errors from the CLI.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "converter/hf_converter.h"
#include "converter/onnx_converter.h"
#include "core/half.h"
#include "core/npy.h"
#include "formats/package.h"
#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"
#include "runtime-lite/model.h"
#include "tests/model_test_util.h"
#include "tests/testutil.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;
using testing::Fixture;
using testing::ReadJson;
using testing::RunTessera;
using testing::TempDir;

std::string Convert(const TempDir& tmp, const std::string& model_rel, const std::string& tok_rel,
                    OnnxConvertReport* report = nullptr) {
  std::string out = tmp / fs::path(model_rel).stem().string();
  OnnxConvertOptions o;
  if (!tok_rel.empty()) o.tokenizer_dir = Fixture(tok_rel);
  auto st = ConvertOnnx(model_rel.rfind('/', 0) == 0 ? model_rel : Fixture(model_rel), out, o, report);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// (file, tensor) -> "qtype shape checksum".
std::map<std::string, std::string> TensorSums(const std::string& pkg_dir) {
  std::map<std::string, std::string> out;
  auto pkg = Package::Open(pkg_dir);
  EXPECT_TRUE(pkg.ok()) << pkg.status();
  if (!pkg.ok()) return out;
  std::vector<std::string> files{"embedding.bin", "lm.bin"};
  for (int64_t i = 0; i < (*pkg)->config().layers; ++i) files.push_back(BlockFileName(i));
  for (const auto& f : files) {
    auto tp = TensorPack::Open(pkg_dir + "/" + f);
    EXPECT_TRUE(tp.ok()) << tp.status();
    if (!tp.ok()) continue;
    for (const auto& t : (*tp)->tensors()) {
      std::string shape;
      for (auto d : t.shape) shape += std::to_string(d) + ",";
      out[f + ":" + t.name] = std::string(QTypeName(t.qtype)) + " [" + shape + "] " + std::to_string(t.checksum);
    }
  }
  return out;
}

// Max abs diff and top-1 agreement against golden/<prefix><Lk>.npy over L1/L7/L64/L256.
struct Cmp {
  double max_diff = 0, agree = 1;
};
Cmp Compare(const std::string& pkg, const std::string& model_rel, const std::string& prefix) {
  Cmp r;
  auto m = Model::Load(pkg);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return r;
  const auto inputs = ReadJson(Fixture(model_rel + "/golden/inputs.json"));
  size_t rows = 0, same = 0;
  for (const char* key : {"L1", "L7", "L64", "L256"}) {
    if (!inputs.contains(key)) continue;
    auto ids = inputs[key].get<std::vector<int32_t>>();
    auto gold = ReadNpyF32(Fixture(model_rel + "/golden/" + prefix + key + ".npy"));
    EXPECT_TRUE(gold.ok()) << gold.status();
    if (!gold.ok()) continue;
    auto got = testing::AllLogits(**m, ids);
    EXPECT_EQ(got.size(), gold->data.size());
    if (got.size() != gold->data.size()) continue;
    for (size_t i = 0; i < got.size(); ++i) r.max_diff = std::max(r.max_diff, std::fabs(double(got[i]) - gold->data[i]));
    const size_t V = static_cast<size_t>((*m)->vocab());
    for (size_t t = 0; t < ids.size(); ++t, ++rows) {
      auto a = std::max_element(got.begin() + t * V, got.begin() + (t + 1) * V) - got.begin();
      auto b = std::max_element(gold->data.begin() + t * V, gold->data.begin() + (t + 1) * V) - gold->data.begin();
      same += a == b;
    }
  }
  r.agree = rows ? static_cast<double>(same) / rows : 0;
  return r;
}

TEST(OnnxStories260K, BitIdenticalToSafetensorsAndMatchesOrt) {
  TempDir tmp;
  const std::string hf = tmp / "hf";
  ASSERT_TRUE(ConvertHuggingFace(Fixture("stories260K/hf"), hf, ConvertOptions()).ok());
  const auto want = TensorSums(hf);
  ASSERT_EQ(want.size(), 47u);
  for (const char* f : {"model.onnx", "model_ext.onnx", "model_kv.onnx"}) {
    const std::string pkg = Convert(tmp, std::string("stories260K/onnx/") + f, "stories260K/hf");
    EXPECT_EQ(TensorSums(pkg), want) << f;
    const Cmp c = Compare(pkg, "stories260K", "logits_ort_fp32_");
    EXPECT_LE(c.max_diff, 1e-4) << f;
    EXPECT_EQ(c.agree, 1.0) << f;
    auto man = ReadJson(pkg + "/manifest.json");
    EXPECT_EQ(man["source"]["type"], "onnx");
    EXPECT_EQ(man["arch"]["rope"]["theta"], 10000.0);  // from the graph's inv_freq
    EXPECT_EQ(man["arch"]["norm_eps"], 1e-5);
    EXPECT_EQ(man["arch"]["tie_embeddings"], true);
    if (std::string(f) == "model_ext.onnx") {
      EXPECT_EQ(man["source"]["files"].size(), 2u);
    }
  }
}

class OnnxTiny : public ::testing::TestWithParam<std::string> {};
TEST_P(OnnxTiny, LogitsMatchOrt) {
  TempDir tmp;
  const std::string m = "tiny/" + GetParam();
  const std::string pkg = Convert(tmp, m + "/onnx/model.onnx", "");  // config + tokenizer from the parent folder
  const Cmp c = Compare(pkg, m, "logits_ort_fp32_");
  EXPECT_LE(c.max_diff, 1e-4);
  EXPECT_EQ(c.agree, 1.0);
  auto man = ReadJson(pkg + "/manifest.json");
  auto cfg = ReadJson(Fixture(m + "/config.json"));
  EXPECT_EQ(man["arch"]["source_arch"], cfg["architectures"][0]);
}
INSTANTIATE_TEST_SUITE_P(Fixtures, OnnxTiny, ::testing::Values("llama", "qwen2", "qwen3", "gpt2"));

TEST(OnnxTiny, CliConvertDispatchesOnSuffix) {
  TempDir tmp;
  auto r = RunTessera({"convert", Fixture("tiny/qwen3/onnx/model.onnx"), "-o", tmp / "q3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("config.json"), std::string::npos) << r.err;
  auto man = ReadJson(tmp / "q3/manifest.json");
  EXPECT_EQ(man["arch"]["qk_norm"], true);
  EXPECT_EQ(man["arch"]["head_dim"], 32);
}

// ---- MatMulNBits ----

struct Int4Case {
  std::string variant, golden;
  double tol, min_agree;
};
class OnnxInt4 : public ::testing::TestWithParam<Int4Case> {};
TEST_P(OnnxInt4, LogitsWithinFixtureTolerances) {
  const auto& p = GetParam();
  TempDir tmp;
  OnnxConvertReport rep;
  const std::string pkg = Convert(tmp, "stories260K/onnx-int4/model_" + p.variant + ".onnx", "stories260K/hf", &rep);
  const Cmp c = Compare(pkg, "stories260K", "logits_ort_int4_" + p.golden + "_");
  EXPECT_LE(c.max_diff, p.tol) << p.variant << " vs " << p.golden;
  EXPECT_GE(c.agree, p.min_agree) << p.variant << " vs " << p.golden;
  // ORT writes f32 scales that f16 cannot hold (and block 16 is no Tessera group): every weight is
  // dequantized, and the manifest says so per tensor.
  EXPECT_EQ(rep.int4_exact + rep.int4_dequantized, 35);
  auto man = ReadJson(pkg + "/manifest.json");
  EXPECT_EQ(man["quant"]["algorithm"], "onnxruntime-matmulnbits");
  ASSERT_EQ(man["quant"]["import"]["tensors"].size(), 35u);
  for (const auto& t : man["quant"]["import"]["tensors"]) EXPECT_TRUE(t.contains("result"));
}
INSTANTIATE_TEST_SUITE_P(
    Fixtures, OnnxInt4,
    ::testing::Values(Int4Case{"b32_sym", "b32_sym", 1e-4, 1.0}, Int4Case{"b64_asym", "b64_asym", 1e-4, 1.0},
                      Int4Case{"b16_sym", "b16_sym", 1e-4, 1.0},
                      // fp32 activations: same tensors as b32_sym; against ORT's int8-activation run, loose.
                      Int4Case{"b32_sym_acc4", "b32_sym", 1e-4, 1.0}, Int4Case{"b32_sym_acc4", "b32_sym_acc4", 1.0, 0.98}),
    [](const auto& info) { return info.param.variant + "_vs_" + info.param.golden; });

// Rewrites a MatMulNBits model so Tessera's INT4 layout can hold it exactly: scales rounded to
// `mant_bits` significant bits (f16-exact, and -zp*scale too when few enough bits).
std::string MakeExactModel(const std::string& src, const std::string& dst, int mant_bits) {
  onnx::ModelProto mp;
  std::ifstream in(src, std::ios::binary);
  EXPECT_TRUE(mp.ParseFromIstream(&in));
  for (auto& t : *mp.mutable_graph()->mutable_initializer()) {
    if (t.name().find("_scales") == std::string::npos) continue;
    std::string raw = t.raw_data();
    for (size_t i = 0; i + 4 <= raw.size(); i += 4) {
      float f;
      std::memcpy(&f, raw.data() + i, 4);
      int e;
      const double m = std::frexp(static_cast<double>(f), &e);
      f = static_cast<float>(std::ldexp(std::round(std::ldexp(m, mant_bits)), e - mant_bits));
      EXPECT_EQ(F16ToF32(F32ToF16(f)), f);
      std::memcpy(raw.data() + i, &f, 4);
    }
    t.set_raw_data(raw);
  }
  std::ofstream out(dst, std::ios::binary);
  EXPECT_TRUE(mp.SerializeToOstream(&out));
  return dst;
}

// Dequantizes one MatMulNBits weight straight from the ONNX file: w[n][k] = (code - zp) * scale.
std::vector<float> OrtDequant(const onnx::ModelProto& mp, const std::string& base, int64_t N, int64_t K, int64_t bs) {
  std::map<std::string, const onnx::TensorProto*> init;
  for (const auto& t : mp.graph().initializer()) init[t.name()] = &t;
  const std::string& B = init.at(base + "_Q4")->raw_data();
  const std::string& S = init.at(base + "_scales")->raw_data();
  const onnx::TensorProto* Z = init.count(base + "_zero_points") ? init.at(base + "_zero_points") : nullptr;
  const int64_t nb = (K + bs - 1) / bs;
  std::vector<float> w(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t b = k / bs;
      const uint8_t byte = static_cast<uint8_t>(B[static_cast<size_t>(n * nb * bs / 2 + b * bs / 2 + (k % bs) / 2)]);
      const int q = (byte >> (4 * (k % 2))) & 0xF;
      int zp = 8;
      if (Z) zp = (static_cast<uint8_t>(Z->raw_data()[static_cast<size_t>(n * ((nb + 1) / 2) + b / 2)]) >> (4 * (b % 2))) & 0xF;
      float s;
      std::memcpy(&s, S.data() + (n * nb + b) * 4, 4);
      w[static_cast<size_t>(n * K + k)] = static_cast<float>(q - zp) * s;
    }
  return w;
}

TEST(OnnxInt4, ExactImportKeepsCodesWhenScalesFitF16) {
  TempDir tmp;
  struct V {
    const char* variant;
    int mant_bits;
    QType qt;
    uint32_t group;
  };
  for (const V& v : {V{"b32_sym", 11, QType::kI4Sym, 32}, V{"b64_asym", 6, QType::kI4Asym, 64}}) {
    const std::string src = Fixture(std::string("stories260K/onnx-int4/model_") + v.variant + ".onnx");
    const std::string dst = MakeExactModel(src, tmp / (std::string("exact_") + v.variant + ".onnx"), v.mant_bits);
    OnnxConvertReport rep;
    const std::string pkg = Convert(tmp, dst, "stories260K/hf", &rep);
    EXPECT_EQ(rep.int4_exact, 35) << v.variant;
    EXPECT_EQ(rep.int4_dequantized, 0) << v.variant;
    auto man = ReadJson(pkg + "/manifest.json");
    EXPECT_EQ(man["quant"]["recipe"], std::string("int4-g") + std::to_string(v.group) + (v.qt == QType::kI4Sym ? "-sym" : "-asym"));
    // Layer 0: q (val_93, 64x64) and down (val_198, K = 172: padded last block) equal ORT's dequantization bit for bit.
    onnx::ModelProto mp;
    std::ifstream in(dst, std::ios::binary);
    ASSERT_TRUE(mp.ParseFromIstream(&in));
    auto blk = TensorPack::Open(pkg + "/block_0.bin");
    ASSERT_TRUE(blk.ok()) << blk.status();
    for (auto [name, base, N, K] : {std::tuple<const char*, const char*, int64_t, int64_t>{"attn_q", "val_93", 64, 64},
                                    {"ffn_down", "val_198", 64, 172}}) {
      const PackTensor* t = (*blk)->Find(name);
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(t->qtype, v.qt) << name;
      EXPECT_EQ(t->group, v.group) << name;
      EXPECT_EQ(t->cols % v.group, 0u);
      EXPECT_EQ(t->shape, (std::vector<int64_t>{N, K}));
      EXPECT_EQ(t->ToF32(), OrtDequant(mp, base, N, K, v.group)) << v.variant << " " << name;
    }
    // And the package runs (INT4 kernels): logits of the rounded-scale model stay near ORT's on the original.
    const Cmp c = Compare(pkg, "stories260K", std::string("logits_ort_int4_") + v.variant + "_");
    EXPECT_LE(c.max_diff, 2.0) << v.variant;  // the scales were rounded: a different model
  }
}

// ---- errors: exit 1, one line ----

void ExpectOneLineError(const testing::CmdResult& r, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
}

void CopyPrefix(const std::string& src, const std::string& dst, size_t n) {
  std::ifstream in(src, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream out(dst, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(std::min(n, data.size())));
}

TEST(OnnxErrors, TruncatedModel) {
  TempDir tmp;
  CopyPrefix(Fixture("stories260K/onnx/model.onnx"), tmp / "model.onnx", 500000);
  ExpectOneLineError(RunTessera({"convert", tmp / "model.onnx", "--tokenizer", Fixture("stories260K/hf"), "-o", tmp / "out"}),
                     "model.onnx");
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(OnnxErrors, MissingAndShortExternalData) {
  TempDir tmp;
  fs::copy_file(Fixture("stories260K/onnx/model_ext.onnx"), tmp / "model_ext.onnx");
  const std::vector<std::string> args{"convert", tmp / "model_ext.onnx", "--tokenizer", Fixture("stories260K/hf"), "-o", tmp / "out"};
  ExpectOneLineError(RunTessera(args), "model_ext.onnx.data");
  CopyPrefix(Fixture("stories260K/onnx/model_ext.onnx.data"), tmp / "model_ext.onnx.data", 300000);
  auto r = RunTessera(args);
  ExpectOneLineError(r, "model_ext.onnx.data");
  EXPECT_NE(r.err.find("too short"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(OnnxErrors, ExternalDataMustStayInTheModelFolder) {
  TempDir tmp;
  onnx::ModelProto mp;
  std::ifstream in(Fixture("stories260K/onnx/model_ext.onnx"), std::ios::binary);
  ASSERT_TRUE(mp.ParseFromIstream(&in));
  for (auto& t : *mp.mutable_graph()->mutable_initializer())
    for (auto& kv : *t.mutable_external_data())
      if (kv.key() == "location") kv.set_value("../model_ext.onnx.data");
  fs::create_directory(tmp / "m");
  std::ofstream out(tmp / "m/model.onnx", std::ios::binary);
  ASSERT_TRUE(mp.SerializeToOstream(&out));
  out.close();
  ExpectOneLineError(RunTessera({"convert", tmp / "m/model.onnx", "--tokenizer", Fixture("stories260K/hf"), "-o", tmp / "out"}),
                     "must be a relative path inside the model's folder");
}

TEST(OnnxErrors, UnsupportedGraphNamesNodeAndOp) {
  TempDir tmp;
  onnx::ModelProto mp;
  std::ifstream in(Fixture("stories260K/onnx/model.onnx"), std::ios::binary);
  ASSERT_TRUE(mp.ParseFromIstream(&in));
  // SiLU's Sigmoid becomes a Relu in layer 0: not an activation Tessera computes.
  bool changed = false;
  for (auto& n : *mp.mutable_graph()->mutable_node())
    if (n.op_type() == "Sigmoid" && !changed) {
      n.set_op_type("Relu");
      changed = true;
    }
  ASSERT_TRUE(changed);
  std::ofstream out(tmp / "model.onnx", std::ios::binary);
  ASSERT_TRUE(mp.SerializeToOstream(&out));
  out.close();
  auto r = RunTessera({"convert", tmp / "model.onnx", "--tokenizer", Fixture("stories260K/hf"), "-o", tmp / "out"});
  ExpectOneLineError(r, "(Relu)");
  EXPECT_NE(r.err.find("node '"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(OnnxErrors, MissingTokenizerSaysWhatToPass) {
  TempDir tmp;
  ExpectOneLineError(RunTessera({"convert", Fixture("stories260K/onnx/model.onnx"), "-o", tmp / "out"}), "--tokenizer");
}

}  // namespace
}  // namespace tessera
