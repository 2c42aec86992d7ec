// quantize --rotate (quantizer/rotate.h) on the fixtures: the rotated unquantized package computes
// the same logits as the original (kjv6L, stories260K and the tiny RMSNorm families), what the
// manifest records, the LayerNorm (GPT-2) refusal, the CLI and verify's handling of a rotated package,
// and the quality of rotated int4 GPTQ on kjv6L.
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
#include "quantizer/quantize.h"
#include "runtime-lite/model.h"
#include "tests/model_test_util.h"
#include "tests/quantizer/quant_e2e_util.h"
#include "tests/testutil.h"
#include "verify/perplexity.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;
using testing::Fixture;
using testing::ReadJson;
using testing::RunTessera;
using testing::TempDir;

using quanttest::Converted;
using quanttest::Dir;
using quanttest::Quantize;
using testing::AllLogits;

// No leftover ".NAME.rotated-PID" directory beside an output.
bool NoRotatedLeftovers() {
  for (const auto& e : fs::directory_iterator(Dir().path()))
    if (e.path().filename().string().find(".rotated-") != std::string::npos) return false;
  return true;
}

// The rotated f32 package is the same function: logits over 64 tokens of text agree with the
// original's to 2e-4 relative to the largest logit (f32 arithmetic in a different basis; measured
// ~1e-6), and it records the rotation, unties a tied output, and sets every norm gain to 1.
class RotateSameLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(RotateSameLogits, RotatedF32PackageMatchesTheOriginal) {
  const std::string base = Converted(GetParam());
  for (bool heads : {false, true}) {
  SCOPED_TRACE(heads ? "--rotate-heads" : "--rotate");
  QuantizeOptions o;
  o.recipe = "f32";
  o.rotate = true;
  o.rotate_heads = heads;
  o.rotate_seed = 5;
  const std::string rot = Quantize(base, "rot-f32-" + std::to_string(std::hash<std::string>()(GetParam())) + (heads ? "h" : ""), o);
  EXPECT_TRUE(NoRotatedLeftovers());
  auto a = Model::Load(base), b = Model::Load(rot);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  auto text = ReadFileToString(Fixture("text/kjv_eval.txt"));
  ASSERT_TRUE(text.ok());
  std::vector<int32_t> ids = (*a)->tokenizer().Encode(text->substr(0, 2000), true);
  ids.resize(std::min<size_t>(ids.size(), 64));
  const std::vector<float> la = AllLogits(**a, ids), lb = AllLogits(**b, ids);
  ASSERT_EQ(la.size(), lb.size());
  double scale = 0, diff = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    scale = std::max(scale, std::fabs(double(la[i])));
    diff = std::max(diff, std::fabs(double(la[i]) - double(lb[i])));
  }
  EXPECT_GT(scale, 0.1);
  EXPECT_LE(diff, 2e-4 * scale) << GetParam() << ": max |logit diff| " << diff << " (max |logit| " << scale << ")";
  std::fprintf(stderr, "%s%s: max |logit diff| %.3g, max |logit| %.3g\n", GetParam().c_str(), heads ? " (heads)" : "", diff, scale);

  const auto m = ReadJson(rot + "/manifest.json"), mb = ReadJson(base + "/manifest.json");
  const int64_t hidden = m["arch"]["hidden"].get<int64_t>();
  EXPECT_EQ(m["rotation"]["width"], hidden);
  EXPECT_EQ(m["rotation"]["seed"], 5);
  EXPECT_EQ(m["rotation"]["method"], (hidden & (hidden - 1)) == 0 ? "randomized-hadamard" : "random-orthogonal-qr");
  EXPECT_EQ(m["rotation"]["untied_output"], mb["arch"]["tie_embeddings"]);
  EXPECT_EQ(m["arch"]["tie_embeddings"], false);
  EXPECT_EQ(m["quant"]["base"]["path"], fs::absolute(base).string());
  auto p = Package::Open(rot);
  ASSERT_TRUE(p.ok());
  EXPECT_NE((*p)->lm().Find("output"), nullptr);
  for (const TensorPack* pack : (*p)->all_packs())
    for (const auto& t : pack->tensors())
      if (t.name == "attn_norm" || t.name == "ffn_norm" || t.name == "output_norm") {
        const std::vector<float> v = t.ToF32();
        for (float x : v) ASSERT_EQ(x, 1.0f) << t.name;
      }
  EXPECT_EQ(m["rotation"]["value_heads"], heads ? nlohmann::json("randomized-hadamard") : nlohmann::json(false));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RotateSameLogits,
                         ::testing::Values("kjv6L/hf", "stories260K/hf", "tiny/llama", "tiny/mistral", "tiny/qwen2",
                                           "tiny/qwen3", "tiny/gemma", "tiny/phi3"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

TEST(Rotate, RefusesLayerNormModels) {
  const std::string base = Converted("tiny/gpt2");
  QuantizeOptions o;
  o.recipe = "int4-g32";
  o.rotate = true;
  const std::string out = Dir() / "gpt2-rot";
  auto st = QuantizePackage(base, out, o);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("RMSNorm"), std::string::npos) << st;
  EXPECT_NE(st.message().find("'layer'"), std::string::npos) << st;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(NoRotatedLeftovers());
  // The CLI: one error line, exit 1.
  const auto r = RunTessera({"quantize", base, "-o", out, "--recipe", "int4-g32", "--rotate"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("needs an RMSNorm model"), std::string::npos) << r.err;
}

// The CLI end to end on stories260K (tied: the rotated package stores the output separately), and
// verify against the unrotated base: KLD is computed, per-tensor distortion skipped with a note.
TEST(Rotate, CliAndVerify) {
  const std::string base = Converted("stories260K/hf");
  const std::string out = Dir() / "s-rot-cli";
  const auto r = RunTessera({"quantize", base, "-o", out, "--recipe", "int4-g32", "--algorithm", "rtn", "--rotate",
                             "--rotate-seed", "3", "--force"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto m = ReadJson(out + "/manifest.json");
  EXPECT_EQ(m["rotation"]["seed"], 3);
  EXPECT_EQ(m["rotation"]["untied_output"], true);
  EXPECT_EQ(m["quant"]["tensors"]["lm/output"]["scheme"], "int4-g32-sym");
  EXPECT_EQ(m["quant"]["base"]["path"], fs::absolute(base).string());
  EXPECT_TRUE(NoRotatedLeftovers());
  const auto v = RunTessera({"verify", out, "--base", base, "--text", Fixture("text/tinystories_valid_sample.txt"),
                             "--ctx", "128", "--chunks", "2", "--json"});
  ASSERT_EQ(v.exit_code, 0) << v.err;
  EXPECT_NE(v.err.find("per-tensor distortion skipped"), std::string::npos) << v.err;
  const auto j = nlohmann::json::parse(v.out);
  EXPECT_GT(j["kld_mean"].get<double>(), 0.0);
  EXPECT_LT(j["kld_mean"].get<double>(), 0.5);
  EXPECT_FALSE(j.contains("tensors"));
  // Against the rotated f32 package with the same seed the matrices are comparable again.
  const std::string rf = Dir() / "s-rot-cli-f32";
  ASSERT_EQ(RunTessera({"quantize", base, "-o", rf, "--recipe", "f32", "--rotate", "--rotate-seed", "3", "--force"})
                .exit_code,
            0);
  const auto v2 = RunTessera({"verify", out, "--base", rf, "--text", Fixture("text/tinystories_valid_sample.txt"),
                              "--ctx", "128", "--chunks", "2", "--json"});
  ASSERT_EQ(v2.exit_code, 0) << v2.err;
  const auto j2 = nlohmann::json::parse(v2.out);
  ASSERT_TRUE(j2.contains("tensors"));
  EXPECT_FALSE(j2["tensors"].empty());
  EXPECT_NEAR(j2["kld_mean"].get<double>(), j["kld_mean"].get<double>(), 1e-5);
}

PerplexityResult Quality(const std::string& base_dir, const std::string& q_dir) {
  auto base = Model::Load(base_dir);
  auto q = Model::Load(q_dir);
  EXPECT_TRUE(base.ok() && q.ok());
  if (!base.ok() || !q.ok()) return {};
  auto text = ReadFileToString(Fixture("text/kjv_eval.txt"));
  EXPECT_TRUE(text.ok());
  PerplexityOptions o;
  o.ctx = 256;
  auto r = Perplexity(**q, (*base)->tokenizer().Encode(*text, true), o, base->get());
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : PerplexityResult{};
}

// kjv6L int4-g32, calibrated on kjv_calib.txt, evaluated on kjv_eval.txt. Rotation was expected to
// make GPTQ better; measured, it does not on this model (its weights are Gaussian: kurtosis ~3,
// group max/rms ~2.3, nothing for a rotation to spread; folding the norm gains costs a little):
// KLD 0.01587 rotated vs 0.01536 unrotated (quantizer/README.md "Rotation"). What must hold:
// calibration runs on the rotated model, so rotated GPTQ beats rotated RTN by far (statistics of
// the unrotated model would be in the wrong basis), and the rotated package stays within 10 % of
// the unrotated one's KLD (an inexact rotation would cost far more).
TEST(Rotate, Kjv6LGptqOnTheRotatedModel) {
  const std::string base = Converted("kjv6L/hf");
  QuantizeOptions o;
  o.recipe = "int4-g32";
  o.calib_text = Fixture("text/kjv_calib.txt");
  o.calib_ctx = 512;
  o.algorithm = QuantAlgorithm::kGptq;
  const std::string plain = Quantize(base, "kjv-gptq", o);
  o.rotate = true;
  const std::string rot = Quantize(base, "kjv-gptq-rot", o);
  QuantizeOptions r = o;
  r.calib_text.clear();
  r.calib_ctx = 0;
  r.algorithm = QuantAlgorithm::kRtn;
  const std::string rot_rtn = Quantize(base, "kjv-rtn-rot", r);
  const auto qp = Quality(base, plain), qr = Quality(base, rot), qn = Quality(base, rot_rtn);
  std::fprintf(stderr, "kjv6L int4-g32 KLD: gptq %.6f, gptq --rotate %.6f, rtn --rotate %.6f\n", qp.kld_mean,
               qr.kld_mean, qn.kld_mean);
  EXPECT_LT(qr.kld_mean, 0.75 * qn.kld_mean);
  EXPECT_LT(qr.kld_mean, 1.10 * qp.kld_mean);
  EXPECT_GT(qr.kld_mean, 0.0);
  EXPECT_EQ(ReadJson(rot + "/manifest.json")["quant"]["calibration"]["file"], "kjv_calib.txt");
}

}  // namespace
}  // namespace tessera
