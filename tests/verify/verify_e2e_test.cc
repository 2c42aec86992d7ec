// verify end to end: Perplexity()'s KLD / top-1 / uncertainties against an independent
// computation from the two models' logits on a small case; per-tensor distortion against the
// dequantized tensors; `tessera verify --json / --report / --compare`.
#include <cmath>
#include <fstream>
#include <sstream>

#include "converter/hf_converter.h"
#include "core/mapped_file.h"
#include "formats/package.h"
#include "gtest/gtest.h"
#include "quantizer/quantize.h"
#include "runtime-lite/model.h"
#include "tests/testutil.h"
#include "verify/distortion.h"
#include "verify/perplexity.h"

namespace tessera {
namespace {
using testing::Fixture;
using testing::RunTessera;
using testing::TempDir;

struct Pair {
  TempDir dir;
  std::string base, q;
};

// stories260K converted (f32) and quantized to int4-g32 RTN, once per process.
Pair& Stories() {
  static Pair* p = [] {
    auto* x = new Pair;
    x->base = x->dir / "f32";
    x->q = x->dir / "q4";
    EXPECT_TRUE(ConvertHuggingFace(Fixture("stories260K/hf"), x->base, ConvertOptions()).ok());
    QuantizeOptions o;
    o.recipe = "int4-g32";
    o.algorithm = QuantAlgorithm::kRtn;
    EXPECT_TRUE(QuantizePackage(x->base, x->q, o).ok());
    return x;
  }();
  return *p;
}

TEST(VerifyNumbers, KldTop1AndErrorsMatchAnIndependentComputation) {
  auto& s = Stories();
  auto base = Model::Load(s.base);
  auto q = Model::Load(s.q);
  ASSERT_TRUE(base.ok() && q.ok());
  auto text = ReadFileToString(Fixture("text/tinystories_valid_sample.txt"));
  ASSERT_TRUE(text.ok());
  auto tokens = (*base)->tokenizer().Encode(*text, true);
  const int64_t ctx = 32, chunks = 3;
  PerplexityOptions o;
  o.ctx = ctx;
  o.max_chunks = chunks;
  auto r = Perplexity(**q, tokens, o, base->get());
  ASSERT_TRUE(r.ok()) << r.status();

  // By hand: each chunk with BOS first, positions ctx/2 .. ctx-2 scored.
  const int64_t V = (*base)->vocab();
  std::vector<double> kl, dn;
  double nll = 0, bnll = 0;
  int64_t same = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    std::vector<int32_t> ids(tokens.begin() + c * ctx, tokens.begin() + (c + 1) * ctx);
    ids[0] = (*base)->tokenizer().bos_id();
    std::vector<float> lq(static_cast<size_t>(ctx * V)), lb(lq.size());
    KVCache cq((*q)->config(), ctx), cb((*base)->config(), ctx);
    ASSERT_TRUE((*q)->Forward(cq, ids.data(), ids.size(), 0, lq.data(), true).ok());
    ASSERT_TRUE((*base)->Forward(cb, ids.data(), ids.size(), 0, lb.data(), true).ok());
    for (int64_t j = ctx / 2; j < ctx - 1; ++j) {
      const float* a = lq.data() + j * V;
      const float* b = lb.data() + j * V;
      double za = 0, zb = 0, ma = a[0], mb = b[0];
      int64_t ia = 0, ib = 0;
      for (int64_t i = 0; i < V; ++i) {
        if (a[i] > ma) ma = a[i], ia = i;
        if (b[i] > mb) mb = b[i], ib = i;
      }
      for (int64_t i = 0; i < V; ++i) za += std::exp(a[i] - ma), zb += std::exp(b[i] - mb);
      double k = 0;
      for (int64_t i = 0; i < V; ++i) {
        const double pa = a[i] - ma - std::log(za), pb = b[i] - mb - std::log(zb);
        k += std::exp(pb) * (pb - pa);
      }
      kl.push_back(k);
      const int32_t t = tokens[static_cast<size_t>(c * ctx + j + 1)];
      const double la = -(a[t] - ma - std::log(za)), lbb = -(b[t] - mb - std::log(zb));
      nll += la;
      bnll += lbb;
      dn.push_back(la - lbb);
      same += ia == ib;
    }
  }
  const double n = static_cast<double>(kl.size());
  ASSERT_EQ(r->n_scored, static_cast<int64_t>(kl.size()));
  double km = 0;
  for (double k : kl) km += k;
  km /= n;
  double kv = 0, dm = 0, dv = 0;
  for (double k : kl) kv += (k - km) * (k - km);
  for (double d : dn) dm += d;
  dm /= n;
  for (double d : dn) dv += (d - dm) * (d - dm);
  EXPECT_GT(km, 0.0);
  EXPECT_NEAR(r->kld_mean, km, 1e-9 + 1e-9 * km);
  EXPECT_NEAR(r->kld_stderr, std::sqrt(kv / n / (n - 1)), 1e-9);
  EXPECT_NEAR(r->ppl, std::exp(nll / n), 1e-9 * r->ppl);
  EXPECT_NEAR(r->base_ppl, std::exp(bnll / n), 1e-9 * r->base_ppl);
  EXPECT_NEAR(r->ln_ppl_ratio, dm, 1e-9);
  EXPECT_NEAR(r->ln_ppl_ratio_stderr, std::sqrt(dv / n / (n - 1)), 1e-9);
  const double p = static_cast<double>(same) / n;
  EXPECT_NEAR(r->top1, p, 1e-12);
  EXPECT_NEAR(r->top1_stderr, std::sqrt(p * (1 - p) / (n - 1)), 1e-12);
  ASSERT_EQ(r->kld.size(), kl.size());
  std::vector<double> sorted = kl;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_NEAR(r->kld_max, sorted.back(), 1e-9);
}

TEST(VerifyNumbers, TensorDistortionMatchesTheDequantizedWeights) {
  auto& s = Stories();
  auto q = Package::Open(s.q);
  auto b = Package::Open(s.base);
  ASSERT_TRUE(q.ok() && b.ok());
  auto rep = ComparePackages(**q, **b);
  ASSERT_TRUE(rep.ok()) << rep.status();
  // 5 blocks x 7 matrices + token_embd (tied: no lm/output matrix).
  EXPECT_EQ(rep->tensors.size(), 36u);
  EXPECT_EQ(rep->layers.size(), 6u);
  for (const auto& t : rep->tensors) {
    if (t.key != "block_2/ffn_down") continue;
    const auto x = (*b)->block(2).Find("ffn_down")->ToF32();
    const auto y = (*q)->block(2).Find("ffn_down")->ToF32();
    double e2 = 0, r2 = 0, mx = 0, dot = 0, y2 = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double e = double(y[i]) - double(x[i]);
      e2 += e * e, r2 += double(x[i]) * x[i], y2 += double(y[i]) * y[i], dot += double(x[i]) * y[i];
      mx = std::max(mx, std::fabs(e));
    }
    EXPECT_EQ(t.scheme, "int4-g32-sym");
    EXPECT_EQ(t.weights, x.size());
    EXPECT_NEAR(t.stats.rmse, std::sqrt(e2 / double(x.size())), 1e-12);
    EXPECT_NEAR(t.stats.snr_db, 10 * std::log10(r2 / e2), 1e-9);
    EXPECT_NEAR(t.stats.cosine, dot / std::sqrt(r2 * y2), 1e-12);
    EXPECT_EQ(t.stats.max_abs, mx);
    // int4-g32: each weight within half a step of its group's scale; the step is at most max|w| / 7.5.
    EXPECT_GT(t.stats.snr_db, 10.0);
    EXPECT_LT(t.stats.snr_db, 40.0);
  }
  // The base against itself: zero error everywhere.
  auto self = ComparePackages(**b, **b);
  ASSERT_TRUE(self.ok());
  EXPECT_EQ(self->total.rmse, 0.0);
  EXPECT_TRUE(std::isinf(self->total.snr_db));
}

TEST(VerifyCli, JsonReportAndCompare) {
  auto& s = Stories();
  TempDir out;
  const std::string text = Fixture("text/tinystories_valid_sample.txt");
  auto r8 = RunTessera({"verify", s.base, "--text", text, "--ctx", "64", "--chunks", "4", "--base", s.base, "--json", "--quiet"});
  ASSERT_EQ(r8.exit_code, 0) << r8.err;
  const std::string saved = out / "base.json";
  std::ofstream(saved) << r8.out;
  auto j0 = nlohmann::json::parse(r8.out);
  EXPECT_EQ(j0["kld_mean"].get<double>(), 0.0);
  EXPECT_EQ(j0["top1"].get<double>(), 1.0);
  EXPECT_TRUE(j0["weights_total"]["snr_db"].is_null());  // identical: +inf written as null

  const std::string html = out / "r.html";
  auto r = RunTessera({"verify", s.q, "--text", text, "--ctx", "64", "--chunks", "4", "--base", s.base, "--json", "--quiet",
                       "--report", html, "--compare", saved});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  for (const char* k : {"kld_stderr", "top1_stderr", "ln_ppl_ratio_stderr", "delta_ppl", "package_bytes", "bits_per_weight",
                        "tensors", "layers", "kld_histogram"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_GT(j["kld_stderr"].get<double>(), 0.0);
  EXPECT_LT(j["kld_stderr"].get<double>(), j["kld_mean"].get<double>());
  EXPECT_EQ(j["tensors"].size(), 36u);
  EXPECT_NEAR(j["bits_per_weight"].get<double>(), 4.611, 0.01);
  auto h = ReadFileToString(html);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(h->find("</html>"), std::string::npos);
  size_t circles = 0;  // both runs in the size-vs-KLD chart? the base has KLD 0: only the quantized one
  for (size_t p = 0; (p = h->find("<circle", p)) != std::string::npos; ++p) ++circles;
  EXPECT_EQ(circles, 1u);
  EXPECT_NE(h->find("block_2/ffn_down"), std::string::npos);
  EXPECT_NE(h->find("Weight error per layer"), std::string::npos);

  // Text output carries the uncertainties and the per-tensor table.
  auto t = RunTessera({"verify", s.q, "--text", text, "--ctx", "64", "--chunks", "2", "--base", s.base, "--quiet"});
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_NE(t.out.find("KLD         mean "), std::string::npos);
  EXPECT_NE(t.out.find(" +/- "), std::string::npos);
  EXPECT_NE(t.out.find("block_4/ffn_up"), std::string::npos);

  // --compare without --report, and a bad --compare file, fail with a message naming the file.
  auto bad = RunTessera({"verify", s.q, "--text", text, "--report", html, "--compare", text});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("tinystories_valid_sample.txt"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace tessera
