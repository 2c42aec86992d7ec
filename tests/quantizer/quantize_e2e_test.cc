// Recipes, overrides, calibration and the quantize CLI on the fixtures (kjv6L, stories260K).
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>

#include "converter/hf_converter.h"
#include "core/mapped_file.h"
#include "formats/package.h"
#include "gtest/gtest.h"
#include "quantizer/allocate.h"
#include "quantizer/kernels/gemm.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/quantize.h"
#include "runtime-lite/model.h"
#include "tests/quantizer/quant_e2e_util.h"
#include "tests/testutil.h"
#include "verify/distortion.h"
#include "verify/perplexity.h"

namespace tessera {
namespace {
using testing::Fixture;
using testing::ReadJson;
using testing::RunTessera;
using testing::TempDir;

using quanttest::Converted;
using quanttest::Dir;
using quanttest::Quantize;

// Bits per weight of the matrices, from the stored tensors.
double MatrixBitsPerWeight(const std::string& pkg_dir, uint64_t* bytes_out = nullptr) {
  auto pkg = Package::Open(pkg_dir);
  EXPECT_TRUE(pkg.ok()) << pkg.status();
  if (!pkg.ok()) return 0;
  uint64_t bytes = 0, weights = 0;
  for (const TensorPack* p : (*pkg)->all_packs())
    for (const auto& t : p->tensors())
      if (t.shape.size() == 2) {
        bytes += t.total_bytes;
        weights += t.numel();
      }
  if (bytes_out) *bytes_out = bytes;
  return 8.0 * static_cast<double>(bytes) / static_cast<double>(weights);
}

PerplexityResult Quality(const std::string& base_dir, const std::string& q_dir, const std::string& text_file,
                         int64_t ctx) {
  auto base = Model::Load(base_dir);
  auto q = Model::Load(q_dir);
  EXPECT_TRUE(base.ok() && q.ok());
  if (!base.ok() || !q.ok()) return {};
  auto text = ReadFileToString(text_file);
  EXPECT_TRUE(text.ok());
  auto tokens = (*base)->tokenizer().Encode(*text, true);
  PerplexityOptions o;
  o.ctx = ctx;
  auto r = Perplexity(**q, tokens, o, base->get());
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : PerplexityResult{};
}

// Every recipe's bits/weight (from the stored bytes) matches the manifest and its stated bound.
TEST(Recipes, BitsPerWeightOnKjv6L) {
  const std::string base = Converted("kjv6L/hf");
  const std::map<std::string, std::pair<double, double>> bounds = {
      {"int4-g32", {4.5, 4.5}}, {"int4-g64-asym", {4.5, 4.5}}, {"int4-g128-asym", {4.25, 4.25}},
      {"int4-mixed", {4.5, 4.9}}, {"int8", {8.5, 8.5}}, {"f16", {16, 16}}, {"bf16", {16, 16}}};
  for (const auto& [recipe, b] : bounds) {
    QuantizeOptions o;
    o.recipe = recipe;
    const std::string out = Quantize(base, "kjv-" + recipe, o);
    const double bpw = MatrixBitsPerWeight(out);
    EXPECT_GE(bpw, b.first - 1e-9) << recipe;
    EXPECT_LE(bpw, b.second + 1e-9) << recipe;
    auto m = ReadJson(out + "/manifest.json");
    EXPECT_EQ(m["quant"]["recipe"], recipe);
    EXPECT_NEAR(m["quant"]["bits_per_weight"].get<double>(), bpw, 1e-9) << recipe;
    EXPECT_EQ(m["quant"]["tensors"].size(), 2u + 7u * 6u) << recipe;
  }
  // int4-mixed spends its bits on the output first (and stays a valid package).
  auto m = ReadJson(Dir() / "kjv-int4-mixed/manifest.json");
  EXPECT_NE(m["quant"]["tensors"]["lm/output"]["scheme"], "int4-g32-sym");
  EXPECT_EQ(m["quant"]["tensors"]["block_0/attn_q"]["scheme"], "int4-g32-sym");
  EXPECT_EQ(m["quant"]["tensors"]["lm/output"]["scheme"], "int6-g32");
  EXPECT_EQ(m["quant"]["tensors"]["block_5/attn_v"]["scheme"], "int6-g32");
  EXPECT_EQ(m["quant"]["tensors"]["block_5/attn_k"]["scheme"], "int6-g32");
  EXPECT_EQ(m["quant"]["tensors"]["block_0/attn_output"]["scheme"], "int6-g32");  // a per-layer step
  EXPECT_EQ(m["quant"]["tensors"]["block_1/attn_output"]["scheme"], "int4-g32-sym");
  auto model = Model::Load(Dir() / "kjv-int4-mixed");
  ASSERT_TRUE(model.ok()) << model.status();
  // int6 matrices are repacked for the int8-activation path like the int4 ones: where that path is
  // on (VNNI, TESSERA_INT8_ACT not 0) every row is computed independently of the batch, unless
  // AMX-BF16 tiles take the batches of more than 16 rows (gemm.h).
  const char* int8_act = std::getenv("TESSERA_INT8_ACT");
  const bool q8 = kernels::Q8Fast() && !(int8_act != nullptr && std::string(int8_act) == "0");
  EXPECT_EQ((*model)->RowsIndependent(), q8 && !kernels::GemmAmxBf16Available());
  if ((*model)->RowsIndependent()) {
    // One decode token batched with another sequence's 20-token prefill (21 rows: more than the
    // 16 the other kernels keep row-independent) gives the same bits as alone.
    const Model& mm = **model;
    const size_t V = static_cast<size_t>(mm.vocab());
    std::vector<int32_t> pa(20), pb = {1, 50, 60};
    for (size_t i = 0; i < pa.size(); ++i) pa[i] = static_cast<int32_t>(i == 0 ? 1 : 30 + 7 * i);
    KVCache ca(mm.config(), 64), cb(mm.config(), 64), cb2(mm.config(), 64);
    std::vector<float> solo(V), la(V), lb(V);
    ASSERT_TRUE(mm.Forward(cb, pb.data(), pb.size(), 0, solo.data(), false).ok());
    ASSERT_TRUE(mm.Forward(cb2, pb.data(), pb.size(), 0, lb.data(), false).ok());
    const int32_t next = 77;
    ASSERT_TRUE(mm.Forward(cb, &next, 1, 3, solo.data(), false).ok());
    std::vector<Model::SeqInput> in(2);
    in[0] = {&ca, pa.data(), pa.size(), 0, la.data(), false};
    in[1] = {&cb2, &next, 1, 3, lb.data(), false};
    ASSERT_TRUE(mm.ForwardBatch(in).ok());
    EXPECT_EQ(lb, solo);
  }
  // verify's per-tensor distortion decodes int6: about a quarter of int4-g32's relative RMSE.
  auto pq = Package::Open(Dir() / "kjv-int4-mixed");
  auto pb = Package::Open(base);
  ASSERT_TRUE(pq.ok() && pb.ok());
  auto d = ComparePackages(**pq, **pb);
  ASSERT_TRUE(d.ok()) << d.status();
  int n6 = 0;
  for (const auto& t : d->tensors) {
    if (t.scheme == "int6-g32") {
      ++n6;
      EXPECT_LT(t.stats.rel_rmse, 0.04) << t.key;
      EXPECT_GT(t.stats.rel_rmse, 0.005) << t.key;
    } else {
      EXPECT_EQ(t.scheme, "int4-g32-sym") << t.key;
      EXPECT_GT(t.stats.rel_rmse, 0.06) << t.key;
    }
  }
  EXPECT_EQ(n6, 1 + 2 * 6 + 1);  // lm/output, attn_k and attn_v of 6 layers, block_0/attn_output
}

uint64_t PackageBytes(const std::string& dir) {
  uint64_t bytes = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) bytes += e.file_size();
  return bytes;
}

// --max-bytes: the whole package (every file, manifest included) fits llama.cpp's Q4_K_M file of
// the same weights and uses it (less than one per-layer step is left over).
TEST(Recipes, MaxBytesIsTheWholePackage) {
  struct Case {
    const char* hf;
    uint64_t max_bytes;
    uint64_t slack;  // at most this much of the budget is left unused
  };
  for (const Case& c : {Case{"stories260K/hf", 281632, 3000}, Case{"kjv6L/hf", 4214336, 20000}}) {
    const std::string base = Converted(c.hf);
    QuantizeOptions o;
    o.recipe = "int4-mixed";
    o.algorithm = QuantAlgorithm::kRtn;
    o.max_bytes = c.max_bytes;
    const std::string out = Quantize(base, std::string("mb-") + (c.max_bytes < 1000000 ? "s" : "kjv"), o);
    const uint64_t bytes = PackageBytes(out);
    EXPECT_LE(bytes, c.max_bytes) << c.hf;
    EXPECT_GT(bytes + c.slack, c.max_bytes) << c.hf;
    auto m = ReadJson(out + "/manifest.json");
    EXPECT_EQ(m["quant"]["max_bytes"], c.max_bytes);
    EXPECT_FALSE(m["quant"].contains("max_bits_per_weight"));  // the byte budget replaces 4.9
    auto model = Model::Load(out);
    EXPECT_TRUE(model.ok()) << model.status();
  }
  // stories260K: llama.cpp's Q4_K_M file pays for int6 everywhere and int8 on the tied embedding.
  auto m = ReadJson(Dir() / "mb-s/manifest.json");
  for (const auto& [key, t] : m["quant"]["tensors"].items())
    EXPECT_TRUE(t["scheme"] == "int6-g32" || t["scheme"] == "int8-g32") << key << " " << t["scheme"];
  EXPECT_EQ(m["quant"]["tensors"]["embedding/token_embd"]["scheme"], "int8-g32");
  // kjv6L: the same upgrades as 4.9 bits/weight but block_0/attn_output, which does not fit.
  auto k = ReadJson(Dir() / "mb-kjv/manifest.json");
  EXPECT_EQ(k["quant"]["tensors"]["lm/output"]["scheme"], "int6-g32");
  EXPECT_EQ(k["quant"]["tensors"]["block_5/attn_k"]["scheme"], "int6-g32");
  EXPECT_EQ(k["quant"]["tensors"]["block_0/attn_output"]["scheme"], "int4-g32-sym");
}

TEST(Recipes, SearchBeatsRtnOnKjv6L) {
  const std::string base = Converted("kjv6L/hf");
  QuantizeOptions o;
  o.recipe = "int4-g32";
  o.algorithm = QuantAlgorithm::kRtn;
  const std::string rtn = Quantize(base, "kjv-rtn", o);
  o.algorithm = QuantAlgorithm::kSearch;
  const std::string search = Quantize(base, "kjv-search", o);
  const std::string eval = Fixture("text/kjv_eval.txt");
  const auto r = Quality(base, rtn, eval, 256), s = Quality(base, search, eval, 256);
  EXPECT_LT(s.kld_mean, r.kld_mean);
  EXPECT_GT(s.kld_mean, 0.0);
  EXPECT_EQ(ReadJson(search + "/manifest.json")["quant"]["algorithm"], "search");
  EXPECT_EQ(ReadJson(rtn + "/manifest.json")["quant"]["algorithm"], "rtn");
}

// stories260K quantized with `recipe` twice: RTN (TAG-rtn) and calibrated on the first part of the
// TinyStories sample (TAG-cal; `o` as given, plus the calibration text at ctx 128), evaluated on the rest.
struct RtnAndCalibrated {
  std::string base, rtn, cal, eval;
  QuantizeOptions o;  // the calibrated run's options
};
RtnAndCalibrated QuantizeRtnAndCalibrated(const std::string& recipe, const std::string& tag, QuantizeOptions o = {}) {
  RtnAndCalibrated r;
  r.base = Converted("stories260K/hf");
  const auto split = quanttest::TinyStoriesSplit(tag + "-calib.txt", tag + "-eval.txt");
  r.eval = split.eval;
  o.recipe = recipe;
  o.algorithm = QuantAlgorithm::kRtn;
  r.rtn = Quantize(r.base, tag + "-rtn", o);
  o.algorithm = QuantAlgorithm::kDefault;
  o.calib_text = split.calib;
  o.calib_ctx = 128;
  r.cal = Quantize(r.base, tag + "-cal", o);
  r.o = o;
  return r;
}

TEST(Calibration, Stories260KGptqBeatsRtnAndIsRecorded) {
  const auto [base, rtn, cal, eval, o] = QuantizeRtnAndCalibrated("int4-g32", "s");
  const auto m = ReadJson(cal + "/manifest.json");
  EXPECT_EQ(m["quant"]["algorithm"], "gptq");
  EXPECT_EQ(m["quant"]["calibration"]["file"], "s-calib.txt");
  EXPECT_EQ(m["quant"]["calibration"]["xxh3_64"].get<std::string>().size(), 16u);
  EXPECT_GT(m["quant"]["calibration"]["tokens"].get<int64_t>(), 1000);
  EXPECT_EQ(m["quant"]["calibration"]["ctx"], 128);
  const auto r = Quality(base, rtn, eval, 128), c = Quality(base, cal, eval, 128);
  EXPECT_LT(c.kld_mean, r.kld_mean);
  // Deterministic: the same command gives the same bytes.
  const std::string cal2 = Quantize(base, "s-cal2", o);
  quanttest::ExpectSameTensors(cal, cal2);
}

// Sequential GPTQ (--sequential): each stage calibrated on the model with the earlier stages
// quantized, aiming at the source model's outputs. On stories260K int4nl-g32 it lowers GPTQ's
// KLD (measured 0.066 -> 0.056 with the README's split); recorded in the manifest, the scratch
// package is removed, and the result is deterministic: the same bytes as the reference
// implementation (a scratch package and a full forward pass of both models per stage).
TEST(Calibration, Stories260KSequentialGptqBeatsGptq) {
  const std::string base = Converted("stories260K/hf");
  const auto [calib, eval] = quanttest::TinyStoriesSplit("seq-calib.txt", "seq-eval.txt");
  QuantizeOptions o;
  o.recipe = "int4nl-g32";
  o.calib_text = calib;
  o.calib_ctx = 128;
  const std::string plain = Quantize(base, "s-nl-gptq", o);
  o.sequential = true;
  const std::string seq = Quantize(base, "s-nl-seq", o);
  EXPECT_FALSE(std::filesystem::exists(seq + ".sequential-tmp"));
  const auto m = ReadJson(seq + "/manifest.json");
  EXPECT_EQ(m["quant"]["algorithm"], "gptq");
  EXPECT_EQ(m["quant"]["calibration"]["sequential"], true);
  EXPECT_FALSE(ReadJson(plain + "/manifest.json")["quant"]["calibration"].contains("sequential"));
  const auto p = Quality(base, plain, eval, 128), s = Quality(base, seq, eval, 128);
  EXPECT_LT(s.kld_mean, p.kld_mean);
  o.sequential_reference = true;
  const std::string ref = Quantize(base, "s-nl-seq-ref", o);
  EXPECT_FALSE(std::filesystem::exists(ref + ".sequential-tmp"));
  quanttest::ExpectSameTensors(seq, ref);
}

// Sequential calibration layer by layer gives the reference implementation's bytes on the other
// layer types too: an untied output matrix (its own stage, on the head's input), LayerNorm with
// biases, learned positions and a plain GELU MLP (gpt2), qkv biases (qwen2), int6 / int4 / int4-nl.
TEST(Calibration, SequentialEqualsReferenceOnTinyModels) {
  const auto [calib, eval] = quanttest::TinyStoriesSplit("seqref-calib.txt", "seqref-eval.txt");
  for (const char* model : {"tiny/llama", "tiny/gpt2", "tiny/qwen2"}) {
    const std::string base = Converted(model);
    for (const char* recipe : {"int4nl-g32-out6", "int4-g32"}) {
      QuantizeOptions o;
      o.recipe = recipe;
      o.calib_text = calib;
      o.calib_ctx = 64;
      o.sequential = true;
      const std::string name = std::string("seqref-") + (model + 5) + "-" + recipe;
      const std::string seq = Quantize(base, name, o);
      o.sequential_reference = true;
      const std::string ref = Quantize(base, name + "-ref", o);
      SCOPED_TRACE(name);
      quanttest::ExpectSameTensors(seq, ref);
      EXPECT_EQ(ReadJson(seq + "/manifest.json")["quant"]["calibration"]["sequential"], true);
    }
  }
}

// int4nl-g32-out6 (llama.cpp Q4_0's layout: the tied token_embd, stories260K's output matrix, at
// int6-g32) with sequential GPTQ: below RTN of the same layout, and at most half the KLD of
// llama.cpp's Q4_0 file on this split (0.090210, measured with ../shared/bench's llpeer;
// quantizer/README.md), which is the quantization issue's target (measured here: 0.0389).
TEST(Calibration, Stories260KOut6SequentialHalvesQ4_0) {
  QuantizeOptions seq_opts;
  seq_opts.sequential = true;
  const auto [base, rtn, seq, eval, o] = QuantizeRtnAndCalibrated("int4nl-g32-out6", "s-o6", seq_opts);
  const auto m = ReadJson(seq + "/manifest.json");
  EXPECT_EQ(m["quant"]["recipe"], "int4nl-g32-out6");
  EXPECT_EQ(m["quant"]["tensors"]["embedding/token_embd"]["scheme"], "int6-g32");
  EXPECT_EQ(m["quant"]["tensors"]["embedding/token_embd"]["rule"], "embedding/token_embd=int6-g32");
  EXPECT_EQ(m["quant"]["tensors"]["block_2/ffn_down"]["scheme"], "int4nl-g32");
  auto pkg = Package::Open(seq);
  ASSERT_TRUE(pkg.ok());
  EXPECT_EQ((*pkg)->embedding().Find("token_embd")->qtype, QType::kI6Sym);
  const auto r = Quality(base, rtn, eval, 128), s = Quality(base, seq, eval, 128);
  EXPECT_LT(s.kld_mean, r.kld_mean);
  EXPECT_LE(s.kld_mean, 0.5 * 0.090210);
}

// --awq: scales folded into the norms; the float model is unchanged, so the weights verify compares
// (quantized columns times g' / g) stay as close to the base as without scaling, and the model
// quality is in the same range.
TEST(Calibration, Stories260KAwqFoldsScalesIntoTheNorms) {
  const std::string base = Converted("stories260K/hf");
  const auto [calib, eval] = quanttest::TinyStoriesSplit("awq_calib.txt", "awq_eval.txt");
  QuantizeOptions o;
  o.recipe = "int4-g32";
  o.algorithm = QuantAlgorithm::kSearch;
  o.calib_text = calib;
  o.calib_ctx = 128;
  const std::string plain = Quantize(base, "s-imx", o);
  o.awq = true;
  const std::string awq = Quantize(base, "s-awq", o);
  const auto m = ReadJson(awq + "/manifest.json");
  EXPECT_EQ(m["quant"]["awq"], true);
  ASSERT_TRUE(m["quant"]["tensors"]["block_0/attn_q"].contains("awq_alpha"));
  EXPECT_FALSE(m["quant"]["tensors"]["embedding/token_embd"].contains("awq_alpha"));  // tied: output not scaled
  auto pa = Package::Open(awq), pp = Package::Open(plain), pb = Package::Open(base);
  ASSERT_TRUE(pa.ok() && pp.ok() && pb.ok());
  int scaled = 0;
  for (int64_t i = 0; i < (*pa)->config().layers; ++i) {
    const double alpha = m["quant"]["tensors"]["block_" + std::to_string(i) + "/ffn_gate"]["awq_alpha"].get<double>();
    const auto ga = (*pa)->block(i).Find("ffn_norm")->ToF32(), gb = (*pb)->block(i).Find("ffn_norm")->ToF32();
    EXPECT_EQ(ga != gb, alpha > 0) << i;
    scaled += alpha > 0;
  }
  EXPECT_GT(scaled, 0);
  auto da = ComparePackages(**pa, **pb), dp = ComparePackages(**pp, **pb);
  ASSERT_TRUE(da.ok() && dp.ok());
  EXPECT_GT(da->total.snr_db, dp->total.snr_db - 3.0);
  const auto ra = Quality(base, awq, eval, 128), rp = Quality(base, plain, eval, 128);
  EXPECT_GT(ra.kld_mean, 0.0);
  EXPECT_LT(ra.kld_mean, 1.5 * rp.kld_mean);
}

TEST(QuantizeCli, OverridesAndRecipes) {
  const std::string base = Converted("stories260K/hf");
  const std::string out = Dir() / "cli-ov";
  auto r = RunTessera({"quantize", base, "-o", out, "--recipe", "int4-g64-asym", "--override", "block_*/ffn_down=int8",
                       "--override", "lm=f16", "--override", "embedding/token_embd=bf16", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto m = ReadJson(out + "/manifest.json");
  EXPECT_EQ(m["quant"]["recipe"], "int4-g64-asym");
  EXPECT_EQ(m["quant"]["overrides"].size(), 3u);
  EXPECT_EQ(m["quant"]["tensors"]["block_3/ffn_down"]["scheme"], "int8-g32");
  EXPECT_EQ(m["quant"]["tensors"]["block_3/ffn_down"]["rule"], "block_*/ffn_down=int8");
  EXPECT_EQ(m["quant"]["tensors"]["block_3/ffn_up"]["scheme"], "int4-g64-asym");
  EXPECT_EQ(m["quant"]["tensors"]["embedding/token_embd"]["scheme"], "bf16");
  auto pkg = Package::Open(out);
  ASSERT_TRUE(pkg.ok());
  EXPECT_EQ((*pkg)->block(3).Find("ffn_down")->qtype, QType::kI8);
  EXPECT_EQ((*pkg)->embedding().Find("token_embd")->qtype, QType::kBF16);
}

TEST(QuantizeCli, BadArgumentsFailWithOneLine) {
  const std::string base = Converted("stories260K/hf");
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{"--recipe", "int4-g32", "--override", "block_*/ffn_down=int5"}, "'block_*/ffn_down=int5'"},
      {{"--recipe", "int4-g32", "--override", "ffn_down"}, "'ffn_down'"},
      {{"--recipe", "int4-g32", "--override", "lm=int4-g96"}, "'lm=int4-g96'"},
      {{"--recipe", "int3"}, "unknown --recipe 'int3'"},
      {{"--recipe", "int4-g32", "--type", "int8"}, "--recipe cannot be combined"},
      {{"--recipe", "int4-g32", "--algorithm", "magic"}, "unknown --algorithm 'magic'"},
      {{"--recipe", "int4-g32", "--algorithm", "gptq"}, "--algorithm gptq needs --calib"},
      {{"--recipe", "int4nl-g32", "--sequential"}, "--sequential needs --calib"},
      {{"--recipe", "int4nl-g32", "--calib", "x.txt", "--sequential", "--rotate"}, "--sequential cannot be combined with --rotate"},
      {{"--recipe", "int4-mixed", "--max-bytes", "150000"},
       "--max-bytes 150000 is smaller than the package without any upgrade: "},
      {{"--recipe", "int4-mixed", "--max-bpw", "4.5"}, "--max-bpw 4.5 is below the plan without any upgrade: 4.61"},
      {{"--recipe", "int4-g32", "--max-bytes", "300000"}, "need a budgeted recipe (int4-mixed, int4nl-mixed)"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args{"quantize", base, "-o", Dir() / "bad"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = RunTessera(args);
    EXPECT_EQ(r.exit_code, 1) << c.needle;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(std::filesystem::exists(Dir() / "bad"));
  }
}


// --allocate measured: the greedy knapsack on a hand-made case (best KLD drop per byte first, any
// step up a matrix's ladder, never over the budget).
TEST(MeasuredAllocation, GreedyKnapsack) {
  using C = AllocationCandidate;
  const std::vector<std::vector<C>> options{
      {C{"a", "int4nl-g32", 0, 0}, C{"a", "int6-g64", -0.010, 100}, C{"a", "int6-g32", -0.011, 120}},
      {C{"b", "int4nl-g32", 0, 0}, C{"b", "int6-g64", -0.004, 100}, C{"b", "int8-g32", -0.012, 200}},
      {C{"c", "int4nl-g32", 0, 0}, C{"c", "int6-g64", +0.001, 50}}};  // an upgrade that hurts: never taken
  EXPECT_EQ(SolveAllocation(options, 0), (std::vector<size_t>{0, 0, 0}));
  EXPECT_EQ(SolveAllocation(options, 100), (std::vector<size_t>{1, 0, 0}));  // 1e-4 per byte
  // Then b -> int8 (6e-5 per byte) before a's last step (5e-5 per byte), which no longer fits.
  EXPECT_EQ(SolveAllocation(options, 310), (std::vector<size_t>{1, 2, 0}));
  EXPECT_EQ(SolveAllocation(options, 320), (std::vector<size_t>{2, 2, 0}));
  // The exact solver agrees here (a then b at 310 is also the best sum: -0.022)...
  EXPECT_EQ(SolveAllocationExact(options, 0), (std::vector<size_t>{0, 0, 0}));
  EXPECT_EQ(SolveAllocationExact(options, 100), (std::vector<size_t>{1, 0, 0}));
  EXPECT_EQ(SolveAllocationExact(options, 310), (std::vector<size_t>{1, 2, 0}));
  EXPECT_EQ(SolveAllocationExact(options, 320), (std::vector<size_t>{2, 2, 0}));
  // ... but not where a large step with a good ratio is crowded out by a small one with a better
  // ratio (kjv6L's output matrix): greedy buys d (2e-4 per byte), then e no longer fits.
  const std::vector<std::vector<C>> big{{C{"d", "int4nl-g32", 0, 0}, C{"d", "int6-g64", -0.002, 10}},
                                        {C{"e", "int4nl-g32", 0, 0}, C{"e", "int6-g64", -0.010, 100}}};
  EXPECT_EQ(SolveAllocation(big, 100), (std::vector<size_t>{1, 0}));
  EXPECT_EQ(SolveAllocationExact(big, 100), (std::vector<size_t>{0, 1}));
  EXPECT_EQ(SolveAllocationExact(big, 110), (std::vector<size_t>{1, 1}));
  // Large budgets are solved in steps of bytes rounded up: never over the budget.
  const std::vector<std::vector<C>> wide{{C{"f", "a", 0, 0}, C{"f", "b", -0.5, 50001}},
                                         {C{"g", "a", 0, 0}, C{"g", "b", -0.4, 49999}},
                                         {C{"h", "a", 0, 0}, C{"h", "b", -0.3, 30000}}};
  const std::vector<size_t> w = SolveAllocationExact(wide, 100000);
  int64_t spent = 0;
  for (size_t i = 0; i < w.size(); ++i) spent += wide[i][w[i]].dbytes;
  EXPECT_LE(spent, 100000);
  EXPECT_EQ(w, (std::vector<size_t>{1, 0, 1}));  // -0.8 (f + h): f + g, exactly 100,000 bytes, is 25,001 steps of 4
}

// stories260K at llama.cpp Q4_0's file size, calibrated on the first 13,367 bytes of the TinyStories
// sample: the measured plan is within --max-bytes and not worse on the calibration text than the
// recipe's fixed upgrade order (measured: 0.0077 vs 0.0130 there, and 0.0081 vs 0.0135 on the rest).
TEST(MeasuredAllocation, Stories260KWithinBudgetAndNotWorseThanTheFixedOrder) {
  const std::string base = Converted("stories260K/hf");
  const std::string calib = quanttest::TinyStoriesSplit("alloc-calib.txt", "alloc-eval.txt").calib;
  QuantizeOptions o;
  o.recipe = "int4nl-mixed";
  o.max_bytes = 258656;
  o.calib_text = calib;
  o.calib_ctx = 128;
  const std::string fixed = Quantize(base, "alloc-fixed", o);
  const std::string out = Dir() / "alloc-measured";
  std::vector<std::string> lines;
  auto r = QuantizeMeasuredAllocation(base, out, o, [&](const std::string& l) { lines.push_back(l); });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LE(PackageBytes(out), o.max_bytes);
  EXPECT_EQ(PackageBytes(out), r->bytes);
  // 36 matrices; token_embd starts at int4nl-g64 (the recipe's rule), so it has 3 candidates, as all.
  EXPECT_EQ(r->candidates.size(), 36u * 3u);
  EXPECT_FALSE(r->overrides.empty());
  EXPECT_TRUE(r->solver == "greedy" || r->solver == "exact") << r->solver;
  const auto fq = Quality(base, fixed, calib, 128), mq = Quality(base, out, calib, 128);
  EXPECT_NEAR(mq.kld_mean, r->kld, 1e-12);
  EXPECT_LT(r->kld, r->base_kld);
  EXPECT_LE(mq.kld_mean, fq.kld_mean);
  // The plan is stored as overrides on the recipe's base scheme.
  const auto m = ReadJson(out + "/manifest.json");
  for (const std::string& ov : r->overrides) {
    const size_t eq = ov.find('=');
    EXPECT_EQ(m["quant"]["tensors"][ov.substr(0, eq)]["scheme"], ov.substr(eq + 1)) << ov;
  }
  // Errors: a recipe without upgrades, no --max-bytes, no --calib.
  QuantizeOptions bad = o;
  bad.recipe = "int4nl-g32";
  EXPECT_FALSE(QuantizeMeasuredAllocation(base, Dir() / "alloc-bad", bad, {}).ok());
  bad = o;
  bad.max_bytes = 0;
  EXPECT_FALSE(QuantizeMeasuredAllocation(base, Dir() / "alloc-bad", bad, {}).ok());
  bad = o;
  bad.calib_text.clear();
  EXPECT_FALSE(QuantizeMeasuredAllocation(base, Dir() / "alloc-bad", bad, {}).ok());
}

// What --allocate measured reuses across its candidates gives what a fresh run gives: a cached
// (tensor, scheme) and the cached calibration statistics the same tensors and manifest as an
// uncached QuantizePackage, and the base model's logits computed once the same KLD per token.
TEST(MeasuredAllocation, CachedQuantizationAndBaseLogitsMatchTheUncachedPath) {
  const std::string base = Converted("stories260K/hf");
  const std::string calib = quanttest::TinyStoriesSplit("cache-calib.txt", "cache-eval.txt").calib;
  QuantizeOptions o;
  o.recipe = "int4nl-g32";
  o.overrides = {"embedding/token_embd=int4nl-g64"};
  o.calib_text = calib;
  o.calib_ctx = 128;
  o.force = true;
  QuantizeCache cache;
  ASSERT_TRUE(QuantizePackage(base, Dir() / "cache-base", o, &cache).ok());
  ASSERT_TRUE(cache.have_stats);
  const size_t n = cache.misses;  // every tensor of the model, quantized once
  EXPECT_EQ(cache.hits, 0u);
  EXPECT_GT(n, 36u);
  // One matrix moved to int6-g64: only it is quantized; the rest comes from the cache.
  QuantizeOptions c = o;
  c.overrides.push_back("block_1/attn_k=int6-g64");
  const std::string cached = Dir() / "cache-cand";
  ASSERT_TRUE(QuantizePackage(base, cached, c, &cache).ok());
  EXPECT_EQ(cache.misses, n + 1);
  EXPECT_EQ(cache.hits, n - 1);
  const std::string fresh = Quantize(base, "cache-cand-ref", c);
  quanttest::ExpectSameTensors(fresh, cached);
  auto mf = ReadJson(fresh + "/manifest.json"), mc = ReadJson(cached + "/manifest.json");
  EXPECT_EQ(mf["quant"], mc["quant"]);
  EXPECT_EQ(mc["quant"]["tensors"]["block_1/attn_k"]["scheme"], "int6-g64");
  EXPECT_EQ(mc["quant"]["tensors"]["block_1/attn_k"]["algorithm"], "gptq");
  // A cache filled with other calibration options is refused, not silently reused.
  QuantizeOptions other = c;
  other.calib_ctx = 64;
  EXPECT_EQ(QuantizePackage(base, Dir() / "cache-other", other, &cache).code(), absl::StatusCode::kInternal);
  // --sequential does not use it (its statistics depend on the plan).
  QuantizeCache unused;
  QuantizeOptions seq = c;
  seq.sequential = true;
  ASSERT_TRUE(QuantizePackage(base, Dir() / "cache-seq", seq, &unused).ok());
  EXPECT_FALSE(unused.have_stats);
  EXPECT_EQ(unused.misses + unused.hits, 0u);

  // The base model's logits, once, give bit-identical KLD / PPL / top-1 to running the base alongside.
  auto src = Model::Load(base);
  auto q = Model::Load(cached);
  ASSERT_TRUE(src.ok() && q.ok());
  auto text = ReadFileToString(calib);
  ASSERT_TRUE(text.ok());
  const auto tokens = (*src)->tokenizer().Encode(*text, true);
  PerplexityOptions po;
  po.ctx = 128;
  auto ref = Perplexity(**q, tokens, po, src->get());
  auto bl = ComputeBaseLogits(**src, tokens, po);
  ASSERT_TRUE(ref.ok() && bl.ok());
  EXPECT_EQ(bl->logits.size(), static_cast<size_t>(bl->n_chunks * (128 / 2 - 1) * bl->vocab));
  auto got = Perplexity(**q, tokens, po, *bl);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_GT(ref->kld_mean, 0);
  EXPECT_EQ(got->kld, ref->kld);
  EXPECT_EQ(got->kld_mean, ref->kld_mean);
  EXPECT_EQ(got->ppl, ref->ppl);
  EXPECT_EQ(got->base_ppl, ref->base_ppl);
  EXPECT_EQ(got->top1, ref->top1);
  // Logits of other options are refused.
  PerplexityOptions po2 = po;
  po2.ctx = 64;
  EXPECT_FALSE(Perplexity(**q, tokens, po2, *bl).ok());
}

}  // namespace
}  // namespace tessera
