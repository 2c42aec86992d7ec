// End-to-end tests against the golden fixtures: convert -> quantize -> run -> verify.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>

#include "converter/hf_converter.h"
#include "core/half.h"
#include "core/mapped_file.h"
#include "core/npy.h"
#include "formats/package.h"
#include "gtest/gtest.h"
#include "quantizer/quantize.h"
#include "runtime-lite/chat.h"
#include "runtime-lite/generate.h"
#include "runtime-lite/model.h"
#include "tests/model_test_util.h"
#include "tests/testutil.h"
#include "verify/perplexity.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;
using testing::Fixture;
using testing::ReadJson;
using testing::RunTessera;
using testing::TempDir;
using testing::TesseraBin;

// Packages are built once per test process and shared.
class Packages {
 public:
  static Packages& Get() {
    static Packages* p = new Packages();
    return *p;
  }
  // Converted HF directory (relative to the fixtures dir).
  std::string Converted(const std::string& hf_rel) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = conv_.find(hf_rel);
    if (it != conv_.end()) return it->second;
    std::string out = dir_ / ("conv" + std::to_string(conv_.size()));
    ConvertOptions o;
    auto st = ConvertHuggingFace(Fixture(hf_rel), out, o);
    EXPECT_TRUE(st.ok()) << st;
    conv_[hf_rel] = out;
    return out;
  }
  std::string Quantized(const std::string& hf_rel, QType type, uint32_t group) {
    const std::string base = Converted(hf_rel);
    std::lock_guard<std::mutex> lock(mu_);
    const std::string key = hf_rel + "|" + std::to_string(static_cast<int>(type)) + "|" + std::to_string(group);
    auto it = quant_.find(key);
    if (it != quant_.end()) return it->second;
    std::string out = dir_ / ("q" + std::to_string(quant_.size()));
    QuantizeOptions o;
    o.type = type;
    o.group = group;
    auto st = QuantizePackage(base, out, o);
    EXPECT_TRUE(st.ok()) << st;
    quant_[key] = out;
    return out;
  }

 private:
  TempDir dir_;
  std::mutex mu_;
  std::map<std::string, std::string> conv_, quant_;
};

std::vector<int32_t> Inputs(const std::string& model, const std::string& key) {
  return ReadJson(Fixture(model + "/golden/inputs.json"))[key].get<std::vector<int32_t>>();
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

std::unique_ptr<Model> LoadModel(const std::string& dir) {
  auto m = Model::Load(dir);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

void CheckGoldenLogits(const std::string& model_rel, const std::string& hf_rel, const std::string& golden_prefix,
                       double tol) {
  auto m = LoadModel(Packages::Get().Converted(hf_rel));
  ASSERT_NE(m, nullptr);
  for (const char* key : {"L1", "L7", "L64", "L256"}) {
    auto ids = Inputs(model_rel, key);
    auto gold = ReadNpyF32(Fixture(model_rel + "/golden/" + golden_prefix + key + ".npy"));
    ASSERT_TRUE(gold.ok()) << gold.status();
    ASSERT_EQ(gold->shape[0], static_cast<int64_t>(ids.size()));
    auto got = testing::AllLogits(*m, ids);
    const double d = MaxAbsDiff(got, gold->data);
    EXPECT_LE(d, tol) << model_rel << " " << key;
    // Greedy choice identical on every row.
    const int64_t V = m->vocab();
    for (size_t t = 0; t < ids.size() && tol <= 1e-3; ++t) {
      auto a = std::max_element(got.begin() + t * V, got.begin() + (t + 1) * V) - (got.begin() + t * V);
      auto b = std::max_element(gold->data.begin() + t * V, gold->data.begin() + (t + 1) * V) - (gold->data.begin() + t * V);
      EXPECT_EQ(a, b) << key << " row " << t;
    }
  }
}

TEST(Stories260K, F32LogitsMatchTransformers) {
  CheckGoldenLogits("stories260K", "stories260K/hf", "logits_hf_fp32_", 1e-4);
}

TEST(Stories260K, F16AndBF16SourcesWithinFixtureSpread) {
  // The fixture's own spread: F16 vs F32 logits <= 0.07, BF16 vs F32 <= 0.63.
  CheckGoldenLogits("stories260K", "stories260K/hf-fp16", "logits_hf_fp32_", 0.07);
  CheckGoldenLogits("stories260K", "stories260K/hf-bf16", "logits_hf_fp32_", 0.63);
  // And the stored precision is kept.
  auto pkg = Package::Open(Packages::Get().Converted("stories260K/hf-bf16"));
  ASSERT_TRUE(pkg.ok());
  EXPECT_EQ((*pkg)->block(0).Find("attn_q")->qtype, QType::kBF16);
  EXPECT_EQ((*pkg)->block(0).Find("attn_norm")->qtype, QType::kF32);
}

TEST(Stories260K, ShardedEqualsSingleFile) {
  auto a = LoadModel(Packages::Get().Converted("stories260K/hf"));
  auto b = LoadModel(Packages::Get().Converted("stories260K/hf-sharded"));
  ASSERT_TRUE(a && b);
  auto ids = Inputs("stories260K", "L64");
  EXPECT_EQ(testing::AllLogits(*a, ids), testing::AllLogits(*b, ids));
}

TEST(Stories260K, PerplexityMatchesLlamaCppMethod) {
  auto m = LoadModel(Packages::Get().Converted("stories260K/hf"));
  ASSERT_NE(m, nullptr);
  auto text = ReadFileToString(Fixture("text/tinystories_valid_sample.txt"));
  ASSERT_TRUE(text.ok());
  auto tokens = m->tokenizer().Encode(*text, true);
  EXPECT_EQ(tokens, ReadJson(Fixture("stories260K/golden/eval_token_ids.json")).get<std::vector<int32_t>>());
  PerplexityOptions o;
  o.ctx = 128;
  auto r = Perplexity(*m, tokens, o);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto gold = ReadJson(Fixture("stories260K/golden/ppl.json"))["B_llamacpp_ctx128"];
  EXPECT_EQ(r->n_chunks, gold["n_chunk"].get<int64_t>());
  EXPECT_EQ(r->n_scored, gold["n_scored"].get<int64_t>());
  const double want = gold["ppl"].get<double>();
  EXPECT_LE(std::fabs(r->ppl - want) / want, 5e-4) << r->ppl << " vs " << want;
}

TEST(Stories260K, GreedyTextMatchesLlama2c) {
  const std::string pkg = Packages::Get().Converted("stories260K/hf");
  auto r = RunTessera({"run", pkg, "-p", "Once upon a time", "-n", "252", "--temp", "0", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto want = ReadFileToString(Fixture("stories260K/llama2c/run_c_greedy_t0.txt"));
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(r.out, *want);
}

TEST(Stories260K, GreedyIdsMatchTransformersGenerate) {
  auto m = LoadModel(Packages::Get().Converted("stories260K/hf"));
  ASSERT_NE(m, nullptr);
  const auto g = ReadJson(Fixture("stories260K/golden/generate_greedy.json"))["from_bos"];
  std::vector<int32_t> prompt = g["prompt_ids"].get<std::vector<int32_t>>();
  std::vector<int32_t> want = g["ids"].get<std::vector<int32_t>>();
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_new_tokens = static_cast<int>(want.size() - prompt.size());
  auto res = Generate(*m, prompt, o, [](int32_t) { return true; });
  ASSERT_TRUE(res.ok()) << res.status();
  std::vector<int32_t> got = prompt;
  got.insert(got.end(), res->tokens.begin(), res->tokens.end());
  EXPECT_EQ(got, want);
}

TEST(Stories260K, LogitsCommandWritesNpy) {
  TempDir tmp;
  const std::string pkg = Packages::Get().Converted("stories260K/hf");
  auto ids = Inputs("stories260K", "L7");
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  auto r = RunTessera({"logits", pkg, "--ids", s, "-o", tmp / "l.npy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto got = ReadNpyF32(tmp / "l.npy");
  auto gold = ReadNpyF32(Fixture("stories260K/golden/logits_hf_fp32_L7.npy"));
  ASSERT_TRUE(got.ok() && gold.ok());
  EXPECT_EQ(got->shape, gold->shape);
  EXPECT_LE(MaxAbsDiff(got->data, gold->data), 1e-4);
}

TEST(Stories260K, TokenizeAndDetokenizeCommands) {
  const std::string pkg = Packages::Get().Converted("stories260K/hf");
  const auto cases = ReadJson(Fixture("stories260K/golden/tokenizer_cases.json"))["cases"];
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    if (text.empty()) continue;
    auto r = RunTessera({"tokenize", pkg, "--json", "--", text});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["ids"], c["ids"]) << text;
  }
  auto r = RunTessera({"detokenize", pkg, "--ids", "1,403,407,261,378"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "<s> Once upon a time\n");
}

TEST(KJV6L, LogitsMatchTransformers) {
  CheckGoldenLogits("kjv6L", "kjv6L/hf", "logits_hf_fp32_", 1e-4);
}

TEST(KJV6L, PerplexityMatchesLlamaCppMethod) {
  auto m = LoadModel(Packages::Get().Converted("kjv6L/hf"));
  ASSERT_NE(m, nullptr);
  auto text = ReadFileToString(Fixture("text/kjv_eval.txt"));
  ASSERT_TRUE(text.ok());
  auto tokens = m->tokenizer().Encode(*text, true);
  ASSERT_EQ(tokens.size(), 14692u);
  PerplexityOptions o;
  o.ctx = 256;
  auto r = Perplexity(*m, tokens, o);
  ASSERT_TRUE(r.ok()) << r.status();
  const double want = ReadJson(Fixture("kjv6L/golden/ppl.json"))["B_llamacpp_ctx256"]["ppl"].get<double>();
  EXPECT_EQ(r->n_scored, 7239);
  EXPECT_LE(std::fabs(r->ppl - want) / want, 5e-4) << r->ppl << " vs " << want;
}

// Quantized packages: int8 within 1 % of f32; int4 runs and its quality is reported.
struct QualityCase {
  const char* model;
  const char* hf;
  const char* text;
  int64_t ctx;
};
const QualityCase kKjv{"kjv6L", "kjv6L/hf", "text/kjv_eval.txt", 256};

PerplexityResult Quality(const QualityCase& qc, QType type, uint32_t group) {
  auto base = LoadModel(Packages::Get().Converted(qc.hf));
  auto q = LoadModel(Packages::Get().Quantized(qc.hf, type, group));
  EXPECT_TRUE(base && q);
  if (!base || !q) return {};
  auto text = ReadFileToString(Fixture(qc.text));
  auto tokens = base->tokenizer().Encode(*text, true);
  PerplexityOptions o;
  o.ctx = qc.ctx;
  auto r = Perplexity(*q, tokens, o, base.get());
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : PerplexityResult{};
}

TEST(Quantized, Int8WithinOnePercentOfF32) {
  auto r = Quality(kKjv, QType::kI8, 32);
  EXPECT_LT(std::fabs(r.ppl_ratio - 1.0), 0.01) << r.ppl << " vs " << r.base_ppl;
  EXPECT_GT(r.top1, 0.95);
  EXPECT_LT(r.kld_mean, 0.01);
}

TEST(Quantized, Int4SymAndAsymRunWithSaneQuality) {
  for (QType t : {QType::kI4Sym, QType::kI4Asym}) {
    auto r = Quality(kKjv, t, 32);
    // Loose sanity bounds (measured figures are in the closing note): 4-bit must stay close.
    EXPECT_LT(r.ppl_ratio, 1.10) << QTypeName(t);
    EXPECT_GT(r.top1, 0.80) << QTypeName(t);
    EXPECT_LT(r.kld_mean, 0.1) << QTypeName(t);
    EXPECT_GT(r.kld_mean, 0.0) << QTypeName(t);
  }
}

// int6 end to end (quantize -> load -> the int6 kernels): 4x finer steps than int4-g32,
// so the KLD is far below int4's (measured on kjv6L: 0.0012 vs 0.0204 with search).
TEST(Quantized, Int6RunsCloserToTheBaseThanInt4) {
  const auto r6 = Quality(kKjv, QType::kI6Sym, 32);
  const auto r4 = Quality(kKjv, QType::kI4Sym, 32);
  EXPECT_GT(r6.kld_mean, 0.0);
  EXPECT_LT(r6.kld_mean, 0.004);
  EXPECT_LT(r6.kld_mean, 0.25 * r4.kld_mean);
  EXPECT_GT(r6.top1, r4.top1);
  EXPECT_LT(r6.ppl_ratio, 1.01);
}

// int4-nl end to end (quantize with the scale search -> load -> the level-lookup kernels): the same
// 4.5 bits/weight as int4-g32, a lower KLD (measured on kjv6L: 0.0168 vs 0.0204 with search).
TEST(Quantized, Int4NlRunsCloserToTheBaseThanInt4AtTheSameSize) {
  const auto rn = Quality(kKjv, QType::kI4Nl, 32);
  const auto r4 = Quality(kKjv, QType::kI4Sym, 32);
  EXPECT_GT(rn.kld_mean, 0.0);
  EXPECT_LT(rn.kld_mean, 0.018);
  EXPECT_LT(rn.kld_mean, 0.9 * r4.kld_mean);
  EXPECT_GT(rn.top1, 0.9);
  EXPECT_LT(rn.ppl_ratio, 1.01);
}

TEST(Quantized, StoriesInt4GeneratesText) {
  const std::string pkg = Packages::Get().Quantized("stories260K/hf", QType::kI4Sym, 32);
  auto r = RunTessera({"run", pkg, "-p", "Once upon a time", "-n", "40", "--temp", "0.7", "--seed", "7", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u);
  EXPECT_GT(r.out.size(), 60u);
  // Same seed, same text.
  auto r2 = RunTessera({"run", pkg, "-p", "Once upon a time", "-n", "40", "--temp", "0.7", "--seed", "7", "--quiet"});
  EXPECT_EQ(r.out, r2.out);
}

TEST(Quantized, BF16AndF16AreBitExactRoundings) {
  const std::string f32 = Packages::Get().Converted("kjv6L/hf");
  // kjv6L is stored in F16; quantize the f32 conversion of stories260K instead for exactness checks.
  const std::string s32 = Packages::Get().Converted("stories260K/hf");
  const std::string sbf = Packages::Get().Quantized("stories260K/hf", QType::kBF16, 0);
  const std::string sf16 = Packages::Get().Quantized("stories260K/hf", QType::kF16, 0);
  auto a = Package::Open(s32);
  auto b = Package::Open(sbf);
  auto c = Package::Open(sf16);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const PackTensor* ta = (*a)->block(2).Find("ffn_down");
  const PackTensor* tb = (*b)->block(2).Find("ffn_down");
  const PackTensor* tc = (*c)->block(2).Find("ffn_down");
  ASSERT_TRUE(ta && tb && tc);
  ASSERT_EQ(tb->qtype, QType::kBF16);
  ASSERT_EQ(tc->qtype, QType::kF16);
  const float* src = reinterpret_cast<const float*>(ta->data);
  const uint16_t* bb = reinterpret_cast<const uint16_t*>(tb->data);
  const uint16_t* cc = reinterpret_cast<const uint16_t*>(tc->data);
  for (size_t i = 0; i < ta->numel(); ++i) {
    ASSERT_EQ(bb[i], F32ToBF16(src[i])) << i;
    ASSERT_EQ(cc[i], F32ToF16(src[i])) << i;
  }
  (void)f32;
}

TEST(Cli, VerifyJsonReportsQualityAgainstBase) {
  const std::string base = Packages::Get().Converted("stories260K/hf");
  const std::string q = Packages::Get().Quantized("stories260K/hf", QType::kI4Asym, 32);
  auto r = RunTessera({"verify", q, "--text", Fixture("text/tinystories_valid_sample.txt"), "--ctx", "128",
                       "--base", base, "--json", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  for (const char* k : {"ppl", "kld_mean", "kld_p99", "top1", "ppl_ratio", "base_ppl"}) ASSERT_TRUE(j.contains(k)) << k;
  const double want = ReadJson(Fixture("stories260K/golden/ppl.json"))["B_llamacpp_ctx128"]["ppl"].get<double>();
  EXPECT_NEAR(j["base_ppl"].get<double>(), want, want * 5e-4);
  EXPECT_GT(j["top1"].get<double>(), 0.5);
  EXPECT_LE(j["top1"].get<double>(), 1.0);
  EXPECT_NEAR(j["ppl_ratio"].get<double>(), j["ppl"].get<double>() / j["base_ppl"].get<double>(), 1e-9);
}

TEST(Cli, InspectListsTensors) {
  const std::string q = Packages::Get().Quantized("stories260K/hf", QType::kI4Sym, 32);
  auto r = RunTessera({"inspect", q, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["quant"]["recipe"], "int4-g32-sym");
  EXPECT_EQ(j["arch"]["layers"], 5);
  EXPECT_EQ(j["arch"]["rope"]["convention"], "rotate_half");
  bool found = false;
  for (const auto& t : j["tensors"])
    if (t["file"] == "block_0.bin" && t["name"] == "ffn_down") {
      found = true;
      EXPECT_EQ(t["dtype"], "int4-sym");
      EXPECT_EQ(t["shape"], nlohmann::json::array({64, 172}));
    }
  EXPECT_TRUE(found);
}

// ---- failure handling: exit 1, one line naming the file, nothing half-written ----
std::string CopyPackage(const std::string& src, const std::string& dst) {
  fs::copy(src, dst, fs::copy_options::recursive);
  return dst;
}

void ExpectOneLineError(const testing::CmdResult& r, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
}

TEST(Failures, TruncatedBlockFile) {
  TempDir tmp;
  const std::string p = CopyPackage(Packages::Get().Converted("stories260K/hf"), tmp / "pkg");
  fs::resize_file(p + "/block_3.bin", fs::file_size(p + "/block_3.bin") / 2);
  ExpectOneLineError(RunTessera({"run", p, "-p", "hi", "-n", "2"}), "block_3.bin");
}

TEST(Failures, CorruptTensorBytesDetectedByChecksum) {
  TempDir tmp;
  const std::string p = CopyPackage(Packages::Get().Converted("stories260K/hf"), tmp / "pkg");
  {
    std::fstream f(p + "/block_1.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(p + "/block_1.bin") - 100));
    f.put('\x7f');
  }
  ExpectOneLineError(RunTessera({"inspect", p}), "block_1.bin");
}

TEST(Failures, CorruptPackHeaderAndIndex) {
  TempDir tmp;
  const std::string p = CopyPackage(Packages::Get().Converted("stories260K/hf"), tmp / "pkg");
  // Rewrite the manifest hashes away so the pack's own checks are what fires.
  auto m = ReadJson(p + "/manifest.json");
  for (auto& f : m["files"]) f.erase("xxh3_64");
  std::ofstream(p + "/manifest.json") << m.dump();
  for (std::streamoff off : {std::streamoff(8), std::streamoff(70)}) {
    TempDir t2;
    const std::string q = CopyPackage(p, t2 / "pkg");
    std::fstream f(q + "/lm.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(off);
    f.put('\x55');
    f.close();
    ExpectOneLineError(RunTessera({"logits", q, "--ids", "1", "-o", t2 / "x.npy"}), "lm.bin");
    EXPECT_FALSE(fs::exists(t2 / "x.npy"));
  }
}

TEST(Failures, BadManifest) {
  TempDir tmp;
  const std::string p = CopyPackage(Packages::Get().Converted("stories260K/hf"), tmp / "pkg");
  std::ofstream(p + "/manifest.json") << "{\"format\": \"tessera-package\", ";
  ExpectOneLineError(RunTessera({"inspect", p}), "manifest.json");
  fs::remove(p + "/manifest.json");
  ExpectOneLineError(RunTessera({"inspect", p}), "manifest.json");
}

TEST(Failures, CorruptSafetensorsLeavesNothingBehind) {
  TempDir tmp;
  const std::string src = tmp / "hf";
  fs::create_directories(src);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"})
    fs::copy(Fixture(std::string("stories260K/hf/") + f), src + "/" + f);
  auto bytes = ReadFileToString(Fixture("stories260K/hf/model.safetensors"));
  ASSERT_TRUE(bytes.ok());
  // 1. Truncated data region.
  std::ofstream(src + "/model.safetensors", std::ios::binary) << bytes->substr(0, bytes->size() / 2);
  ExpectOneLineError(RunTessera({"convert", src, "-o", tmp / "out"}), "model.safetensors");
  // 2. Header length beyond the file.
  std::string bad = *bytes;
  bad[7] = '\x7f';
  std::ofstream(src + "/model.safetensors", std::ios::binary) << bad;
  ExpectOneLineError(RunTessera({"convert", src, "-o", tmp / "out"}), "model.safetensors");
  // 3. Garbage JSON header.
  bad = *bytes;
  bad[9] = '#';
  std::ofstream(src + "/model.safetensors", std::ios::binary) << bad;
  ExpectOneLineError(RunTessera({"convert", src, "-o", tmp / "out"}), "model.safetensors");
  // 4. Tiny file.
  std::ofstream(src + "/model.safetensors", std::ios::binary) << "abc";
  ExpectOneLineError(RunTessera({"convert", src, "-o", tmp / "out"}), "model.safetensors");
  EXPECT_FALSE(fs::exists(tmp / "out"));
  // Nothing half-written: no temporary directories left either.
  for (auto& e : fs::directory_iterator(tmp.path())) EXPECT_EQ(e.path().filename().string().find(".out"), std::string::npos);
}

TEST(Failures, ExistingOutputNeedsForce) {
  TempDir tmp;
  fs::create_directories(tmp / "out");
  std::ofstream(tmp / "out/keep.txt") << "mine";
  ExpectOneLineError(RunTessera({"convert", Fixture("stories260K/hf"), "-o", tmp / "out"}), "--force");
  EXPECT_TRUE(fs::exists(tmp / "out/keep.txt"));
  auto r = RunTessera({"convert", Fixture("stories260K/hf"), "-o", tmp / "out", "--force", "--quiet"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out/keep.txt"));
  EXPECT_TRUE(fs::exists(tmp / "out/manifest.json"));
}

TEST(Failures, OutOfRangeTokenIds) {
  const std::string pkg = Packages::Get().Converted("stories260K/hf");
  TempDir tmp;
  ExpectOneLineError(RunTessera({"logits", pkg, "--ids", "1,999", "-o", tmp / "x.npy"}), "999");
}

// ---- every architecture in fixtures/tiny ----
namespace tiny {
class TinyModel : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyModel, LogitsMatchTransformers) {
  const std::string m = "tiny/" + GetParam();
  auto model = LoadModel(Packages::Get().Converted(m));
  ASSERT_NE(model, nullptr);
  for (const char* key : {"L1", "L7", "L64"}) {
    auto ids = Inputs(m, key);
    auto gold = ReadNpyF32(Fixture(m + "/golden/logits_hf_fp32_" + key + ".npy"));
    ASSERT_TRUE(gold.ok()) << gold.status();
    auto got = testing::AllLogits(*model, ids);
    EXPECT_LE(MaxAbsDiff(got, gold->data), 1e-4) << m << " " << key;
  }
}

TEST_P(TinyModel, ManifestRecordsTheArchitecture) {
  const std::string m = "tiny/" + GetParam();
  auto pkg = Package::Open(Packages::Get().Converted(m));
  ASSERT_TRUE(pkg.ok()) << pkg.status();
  const auto cfg = ReadJson(Fixture(m + "/config.json"));
  const nlohmann::json a = (*pkg)->manifest()["arch"];  // plain json: clang finds ordered_json == json ambiguous
  EXPECT_EQ(a["source_arch"], cfg["architectures"][0]);
  EXPECT_EQ(a["tie_embeddings"], cfg.value("tie_word_embeddings", GetParam() == "gpt2" || GetParam() == "gemma"));
  EXPECT_EQ(a["vocab"], cfg["vocab_size"]);
  const std::string fam = GetParam();
  EXPECT_EQ(a["family"], fam);
  EXPECT_EQ(a["qkv_bias"], fam == "qwen2" || fam == "gpt2");
  EXPECT_EQ(a["qk_norm"], fam == "qwen3");
  EXPECT_EQ(a["norm"], fam == "gpt2" ? "layer" : "rms");
  EXPECT_EQ(a["positions"], fam == "gpt2" ? "learned" : "rope");
  EXPECT_EQ(a["activation"], fam == "gemma" || fam == "gpt2" ? "gelu_tanh" : "silu");
  EXPECT_EQ(a["norm_weight_offset"], fam == "gemma" ? 1.0 : 0.0);
  EXPECT_EQ(a["embed_scale"], fam == "gemma" ? 8.0 : 1.0);
  if (cfg.contains("head_dim")) {
    EXPECT_EQ(a["head_dim"], cfg["head_dim"]);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TinyModel,
                         ::testing::Values("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gpt2"),
                         [](const auto& info) { return info.param; });

TEST(TinyModel, UnsupportedConfigNamesTheField) {
  TempDir tmp;
  const std::string src = tmp / "hf";
  fs::copy(Fixture("tiny/mistral"), src, fs::copy_options::recursive);
  auto cfg = ReadJson(src + "/config.json");
  cfg["sliding_window"] = 4096;
  std::ofstream(src + "/config.json") << cfg.dump();
  ExpectOneLineError(RunTessera({"convert", src, "-o", tmp / "o"}), "sliding_window");
  cfg["sliding_window"] = nullptr;
  cfg["architectures"] = {"MambaForCausalLM"};
  cfg["model_type"] = "mamba";
  std::ofstream(src + "/config.json") << cfg.dump();
  ExpectOneLineError(RunTessera({"convert", src, "-o", tmp / "o"}), "MambaForCausalLM");
  cfg["architectures"] = {"MistralForCausalLM"};
  cfg["model_type"] = "mistral";
  cfg["rope_parameters"]["rope_type"] = "yarn";
  std::ofstream(src + "/config.json") << cfg.dump();
  ExpectOneLineError(RunTessera({"convert", src, "-o", tmp / "o"}), "rope_type");
  EXPECT_FALSE(fs::exists(tmp / "o"));
}
}  // namespace tiny


// ---- continuous batching: a sequence's logits do not depend on its batch mates ----
TEST(Batching, BatchedForwardEqualsSolo) {
  for (const std::string& pkg : {Packages::Get().Quantized("stories260K/hf", QType::kI4Sym, 32),
                                 Packages::Get().Quantized("stories260K/hf", QType::kI6Sym, 32),
                                 Packages::Get().Quantized("stories260K/hf", QType::kI4Nl, 32),
                                 Packages::Get().Converted("kjv6L/hf")}) {
    auto m = LoadModel(pkg);
    ASSERT_NE(m, nullptr);
    const size_t V = static_cast<size_t>(m->vocab());
    const std::vector<std::vector<int32_t>> prompts = {{1, 403, 407, 261}, {1, 300, 301}, {1, 50, 60, 70, 80, 90}};
    // Solo: prefill, then 5 greedy decode steps each.
    std::vector<std::vector<float>> solo;
    std::vector<std::vector<int32_t>> solo_ids(prompts.size());
    for (size_t s = 0; s < prompts.size(); ++s) {
      KVCache cache(m->config(), 64);
      std::vector<float> lg(V);
      ASSERT_TRUE(m->Forward(cache, prompts[s].data(), prompts[s].size(), 0, lg.data(), false).ok());
      int64_t pos = static_cast<int64_t>(prompts[s].size());
      for (int step = 0; step < 5; ++step) {
        int32_t id = static_cast<int32_t>(std::max_element(lg.begin(), lg.end()) - lg.begin());
        solo_ids[s].push_back(id);
        ASSERT_TRUE(m->Forward(cache, &id, 1, pos++, lg.data(), false).ok());
        solo.push_back(lg);
      }
    }
    // Batched: same prefills, then decode steps for all three in one ForwardBatch each.
    std::vector<std::unique_ptr<KVCache>> caches;
    std::vector<std::vector<float>> lgs(prompts.size(), std::vector<float>(V));
    for (size_t s = 0; s < prompts.size(); ++s) {
      caches.push_back(std::make_unique<KVCache>(m->config(), 64));
      ASSERT_TRUE(m->Forward(*caches[s], prompts[s].data(), prompts[s].size(), 0, lgs[s].data(), false).ok());
    }
    for (int step = 0; step < 5; ++step) {
      std::vector<int32_t> ids(prompts.size());
      std::vector<Model::SeqInput> in(prompts.size());
      for (size_t s = 0; s < prompts.size(); ++s) {
        ids[s] = static_cast<int32_t>(std::max_element(lgs[s].begin(), lgs[s].end()) - lgs[s].begin());
        EXPECT_EQ(ids[s], solo_ids[s][static_cast<size_t>(step)]);
        in[s].cache = caches[s].get();
        in[s].ids = &ids[s];
        in[s].n = 1;
        in[s].pos0 = static_cast<int64_t>(prompts[s].size()) + step;
        in[s].logits = lgs[s].data();
      }
      ASSERT_TRUE(m->ForwardBatch(in).ok());
      for (size_t s = 0; s < prompts.size(); ++s)
        ASSERT_EQ(lgs[s], solo[s * 5 + static_cast<size_t>(step)]) << pkg << " seq " << s << " step " << step;
    }
  }
}


// ---- memory modes: full / mmap / stream give bit-identical logits ----
TEST(MemoryModes, StreamAndFullEqualMmap) {
  std::vector<std::string> pkgs = {Packages::Get().Converted("stories260K/hf"),
                                   Packages::Get().Quantized("stories260K/hf", QType::kI4Asym, 32),
                                   // int4 sym / int4 nl / int6 / int8 use the repacked int8-activation
                                   // path where the CPU has VNNI (stream mode repacks each block as it
                                   // loads it)
                                   Packages::Get().Quantized("stories260K/hf", QType::kI4Sym, 32),
                                   Packages::Get().Quantized("stories260K/hf", QType::kI4Nl, 32),
                                   Packages::Get().Quantized("stories260K/hf", QType::kI6Sym, 32),
                                   Packages::Get().Quantized("stories260K/hf", QType::kI8, 32)};
  for (const char* m : {"llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gpt2"})
    pkgs.push_back(Packages::Get().Converted(std::string("tiny/") + m));
  const std::vector<int32_t> ids = {1, 20, 30, 40, 50, 60, 70, 80};
  for (const auto& dir : pkgs) {
    std::vector<float> ref;
    for (auto mem : {Package::Memory::kMmap, Package::Memory::kFull, Package::Memory::kStream}) {
      Package::Options o;
      o.memory = mem;
      auto m = Model::Load(dir, o);
      ASSERT_TRUE(m.ok()) << m.status();
      // Two forwards (prefill + decode) so the streamer wraps around and reuses its prefetch.
      KVCache cache((*m)->config(), 16);
      const size_t V = static_cast<size_t>((*m)->vocab());
      std::vector<float> a(ids.size() * V), b(V);
      ASSERT_TRUE((*m)->Forward(cache, ids.data(), ids.size(), 0, a.data(), true).ok());
      const int32_t next = 5;
      ASSERT_TRUE((*m)->Forward(cache, &next, 1, static_cast<int64_t>(ids.size()), b.data(), false).ok());
      a.insert(a.end(), b.begin(), b.end());
      if (mem == Package::Memory::kMmap) {
        ref = a;
      } else {
        EXPECT_EQ(a, ref) << dir << " mode " << static_cast<int>(mem);
      }
      if (mem == Package::Memory::kStream) {
        EXPECT_GT((*m)->stream_stats().bytes_read, 0u);
        EXPECT_EQ((*m)->stream_stats().stage_loads, 2u * static_cast<uint64_t>((*m)->config().layers + 1));
      }
    }
  }
}

TEST(MemoryModes, StreamReportsCorruptBlockWhenLoaded) {
  TempDir tmp;
  const std::string p = CopyPackage(Packages::Get().Converted("stories260K/hf"), tmp / "pkg");
  {
    std::fstream f(p + "/block_2.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(p + "/block_2.bin") - 64));
    f.put('\x11');
  }
  ExpectOneLineError(RunTessera({"run", p, "-p", "Once", "-n", "2", "--memory", "stream"}), "block_2.bin");
}


// ---- chat templates: `tessera template` is byte-exact with transformers' apply_chat_template ----
TEST(ChatTemplates, TemplateCommandMatchesTransformers) {
  for (const char* m : {"llama", "qwen2", "qwen3", "mistral", "phi3", "gemma"}) {
    const std::string pkg = Packages::Get().Converted(std::string("tiny/") + m);
    const auto cases = ReadJson(Fixture(std::string("tiny/") + m + "/golden/chat_template_cases.json"));
    ASSERT_FALSE(cases.empty());
    for (size_t i = 0; i < cases.size(); ++i) {
      TempDir tmp;
      std::ofstream(tmp / "m.json") << cases[i]["messages"].dump();
      std::vector<std::string> args = {"template", pkg, "--messages", tmp / "m.json"};
      if (!cases[i].value("add_generation_prompt", true)) args.push_back("--no-generation-prompt");
      auto r = RunTessera(args);
      ASSERT_EQ(r.exit_code, 0) << m << ": " << r.err;
      EXPECT_EQ(r.out, cases[i]["text"].get<std::string>()) << m << " case " << i;
      // And as ids: the rendered text encoded without added specials.
      auto tok = Tokenizer::Load(pkg + "/tokenizer.txt");
      ASSERT_TRUE(tok.ok());
      EXPECT_EQ(tok->Encode(r.out, false), cases[i]["ids"].get<std::vector<int32_t>>()) << m << " case " << i;
    }
  }
}

TEST(ChatTemplates, ModelWithoutTemplateNeedsOne) {
  const std::string pkg = Packages::Get().Converted("stories260K/hf");
  TempDir tmp;
  std::ofstream(tmp / "m.json") << R"([{"role":"user","content":"hi"}])";
  ExpectOneLineError(RunTessera({"template", pkg, "--messages", tmp / "m.json"}), "--chat-template");
  std::ofstream(tmp / "t.jinja") << "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}";
  auto r = RunTessera({"template", pkg, "--messages", tmp / "m.json", "--chat-template", tmp / "t.jinja"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "[user] hi\n");
  std::ofstream(tmp / "bad.jinja") << "{% for m in messages %}";
  ExpectOneLineError(RunTessera({"template", pkg, "--messages", tmp / "m.json", "--chat-template", tmp / "bad.jinja"}),
                     "bad.jinja");
}

TEST(ChatTemplates, ChatSessionReusesTheKvCache) {
  auto m = LoadModel(Packages::Get().Converted("tiny/qwen2"));
  ASSERT_NE(m, nullptr);
  auto tpl = LoadChatTemplate(m->tokenizer(), "");
  ASSERT_TRUE(tpl.ok()) << tpl.status();
  SamplingParams sp;
  sp.temperature = 0;
  ChatSession chat(*m, *tpl, 256, sp);
  chat.AddMessage("system", "Be brief.");
  auto nop = [](const std::string&) { return true; };
  auto r1 = chat.Reply("Hello there", 8, nop);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(chat.last_reused(), 0u);
  auto r2 = chat.Reply("And again?", 8, nop);
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_GT(chat.last_reused(), 10u);  // the first turn's prompt was not recomputed
  // A fresh session on the same conversation (no reuse) gives the same second reply.
  ChatSession fresh(*m, *tpl, 256, sp);
  fresh.AddMessage("system", "Be brief.");
  fresh.AddMessage("user", "Hello there");
  fresh.AddMessage("assistant", *r1);
  auto r2b = fresh.Reply("And again?", 8, nop);
  ASSERT_TRUE(r2b.ok());
  EXPECT_EQ(*r2b, *r2);
  EXPECT_EQ(fresh.last_reused(), 0u);
}

TEST(ChatTemplates, RunChatCommand) {
  const std::string pkg = Packages::Get().Converted("tiny/qwen2");
  TempDir tmp;
  std::ofstream(tmp / "in.txt") << "Hello there\nAnd again?\n";
  // stdin from a file through a tiny shell wrapper.
  const std::string cmd = TesseraBin() + " run " + pkg + " --chat -n 6 --temp 0 --quiet < " + (tmp / "in.txt") +
                          " > " + (tmp / "out.txt");
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto out = ReadFileToString(tmp / "out.txt");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(std::count(out->begin(), out->end(), '\n'), 2) << *out;  // one line per reply
}

}  // namespace
}  // namespace tessera
