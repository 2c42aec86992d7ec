// verify: statistics against hand-computed values, and the HTML report's structure.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "verify/distortion.h"
#include "verify/perplexity.h"
#include "verify/report.h"

namespace tessera {
namespace {
using json = nlohmann::ordered_json;

TEST(Stats, MeanAndStderrByHand) {
  // xs = 1, 2, 3, 6: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5, SE = sqrt(3.5 / 3).
  auto [m, se] = MeanAndStderr({1, 2, 3, 6});
  EXPECT_DOUBLE_EQ(m, 3.0);
  EXPECT_NEAR(se, std::sqrt(3.5 / 3.0), 1e-15);
  auto [m1, se1] = MeanAndStderr({5});
  EXPECT_EQ(m1, 5.0);
  EXPECT_EQ(se1, 0.0);
  auto [m0, se0] = MeanAndStderr({});
  EXPECT_EQ(m0, 0.0);
  EXPECT_EQ(se0, 0.0);
}

TEST(Distortion, ByHand) {
  // a = (3, 4), b = (3, 5): err = (0, 1); rmse = sqrt(1/2); |a|^2 = 25, |b|^2 = 34;
  // SNR = 10 log10(25 / 1); cosine = 29 / sqrt(25 * 34); max abs 1; rel = sqrt(1 / 25).
  const float a[] = {3, 4}, b[] = {3, 5};
  DistortionSums s;
  s.Add(a, b, 2);
  const DistortionStats d = Finish(s);
  EXPECT_NEAR(d.rmse, std::sqrt(0.5), 1e-15);
  EXPECT_NEAR(d.rel_rmse, 0.2, 1e-15);
  EXPECT_NEAR(d.snr_db, 10.0 * std::log10(25.0), 1e-12);
  EXPECT_NEAR(d.cosine, 29.0 / std::sqrt(25.0 * 34.0), 1e-15);
  EXPECT_EQ(d.max_abs, 1.0);
  // Merging two halves equals adding everything at once.
  const float c[] = {-1, 0.5f, 2}, e[] = {-1.25f, 0.5f, 1};
  DistortionSums s2 = s, all;
  DistortionSums part;
  part.Add(c, e, 3);
  s2.Merge(part);
  const float ac[] = {3, 4, -1, 0.5f, 2}, be[] = {3, 5, -1.25f, 0.5f, 1};
  all.Add(ac, be, 5);
  EXPECT_DOUBLE_EQ(s2.err2, all.err2);
  EXPECT_DOUBLE_EQ(s2.dot, all.dot);
  EXPECT_EQ(s2.max_abs, 1.0);
  EXPECT_EQ(s2.n, 5.0);
  // Identical tensors: infinite SNR, cosine 1, zero error.
  DistortionSums same;
  same.Add(a, a, 2);
  const DistortionStats z = Finish(same);
  EXPECT_EQ(z.rmse, 0.0);
  EXPECT_TRUE(std::isinf(z.snr_db));
  EXPECT_DOUBLE_EQ(z.cosine, 1.0);
}

TEST(Report, KldHistogramCountsEveryValue) {
  const std::vector<double> k{0.0, 5e-7, 2e-6, 0.004, 0.004, 0.5, 9.0, 50.0};
  const json h = KldHistogramJson(k);
  const auto edges = h["edges"].get<std::vector<double>>();
  const auto counts = h["counts"].get<std::vector<int64_t>>();
  ASSERT_EQ(edges.size(), counts.size() + 1);
  int64_t total = 0;
  for (auto c : counts) total += c;
  EXPECT_EQ(total, 8);
  EXPECT_EQ(counts[0], 2);  // [0, 1e-6): 0 and 5e-7
  EXPECT_EQ(counts[1], 1);  // [1e-6, 3.16e-6): 2e-6
  // 0.004 lies in [10^-2.5, 10^-2) = bin 8 (edges[8] = 10^-2.5).
  EXPECT_LT(edges[8], 0.004);
  EXPECT_GT(edges[9], 0.004);
  EXPECT_EQ(counts[8], 2);
  EXPECT_EQ(counts.back(), 2);  // [10^1.5, ...) holds nothing but values >= 10 are clamped into the last bin
}

// Non-void elements must nest properly; returns "" or a description of the first problem.
std::string CheckTags(const std::string& html) {
  // HTML void elements; SVG elements must be self-closed (<line .../>) or closed.
  static const std::vector<std::string> kVoid{"meta", "br", "hr", "img", "input", "link"};
  std::vector<std::string> stack;
  size_t i = 0;
  while ((i = html.find('<', i)) != std::string::npos) {
    if (html.compare(i, 9, "<!DOCTYPE") == 0) {
      i = html.find('>', i);
      continue;
    }
    const size_t end = html.find('>', i);
    if (end == std::string::npos) return "unterminated tag";
    std::string tag = html.substr(i + 1, end - i - 1);
    i = end + 1;
    const bool closing = !tag.empty() && tag[0] == '/';
    const bool self = !tag.empty() && tag.back() == '/';
    std::string name = tag.substr(closing ? 1 : 0);
    name = name.substr(0, name.find_first_of(" /\n"));
    bool is_void = false;
    for (const auto& v : kVoid) is_void |= v == name;
    if (closing) {
      if (stack.empty() || stack.back() != name) return "unbalanced </" + name + ">";
      stack.pop_back();
    } else if (!self && !is_void) {
      stack.push_back(name);
    }
  }
  return stack.empty() ? "" : "unclosed <" + stack.back() + ">";
}

json FakeRun(const std::string& recipe, double bpw, double kld) {
  json r{{"package", "out/" + recipe}, {"recipe", recipe}, {"algorithm", "gptq"}, {"bits_per_weight", bpw},
         {"package_bytes", 1000000}, {"text", "eval <&> \"text\".txt"}, {"ctx", 256}, {"n_chunks", 4}, {"n_scored", 508},
         {"ppl", 10.0}, {"ppl_stderr", 0.1}, {"base", "out/f16"}, {"delta_ppl", 0.2}, {"delta_ppl_stderr", 0.01},
         {"ppl_ratio", 1.02}, {"ppl_ratio_stderr", 0.001}, {"kld_mean", kld}, {"kld_stderr", kld / 20}, {"kld_median", kld / 2},
         {"kld_p99", kld * 5}, {"kld_max", kld * 20}, {"top1", 0.9}, {"top1_stderr", 0.01}};
  r["kld_histogram"] = KldHistogramJson({kld, kld / 2, kld * 3});
  json ts = json::array();
  ts.push_back({{"key", "block_0/attn_q"}, {"scheme", "int4-g32-sym"}, {"layer", 0}, {"weights", 4096}, {"rmse", 0.01},
                {"rel_rmse", 0.1}, {"max_abs", 0.05}, {"snr_db", 20.0}, {"cosine", 0.995}});
  ts.push_back({{"key", "lm/output"}, {"scheme", "f16"}, {"layer", 1}, {"weights", 4096}, {"rmse", 0.0},
                {"rel_rmse", 0.0}, {"max_abs", 0.0}, {"snr_db", nullptr}, {"cosine", 1.0}});
  r["tensors"] = ts;
  r["layers"] = json::array({json{{"name", "block_0"}, {"layer", 0}, {"rel_rmse", 0.1}},
                             json{{"name", "lm"}, {"layer", 1}, {"rel_rmse", 0.0}}});
  return r;
}

TEST(Report, SelfContainedHtmlWithCharts) {
  const std::string html = RenderVerifyReport({FakeRun("int4-g32", 4.5, 0.015), FakeRun("int8", 8.5, 0.0001)});
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(CheckTags(html), "");
  // Four charts: size vs KLD, KLD histogram, per-layer error, per-tensor SNR.
  size_t svgs = 0;
  for (size_t p = 0; (p = html.find("<svg", p)) != std::string::npos; ++p) ++svgs;
  EXPECT_EQ(svgs, 4u);
  for (const char* s : {"Package size vs KL divergence", "Per-token KL divergence", "Weight error per layer", "Signal-to-noise ratio"})
    EXPECT_NE(html.find(s), std::string::npos) << s;
  // One point per run in the size-vs-KLD chart, labelled with the recipe.
  size_t circles = 0;
  for (size_t p = 0; (p = html.find("<circle", p)) != std::string::npos; ++p) ++circles;
  EXPECT_EQ(circles, 2u);
  EXPECT_NE(html.find(">int8 (gptq)</text>"), std::string::npos);
  // Self-contained: no scripts, no external resources; user text is escaped.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  EXPECT_NE(html.find("eval &lt;&amp;&gt; &quot;text&quot;.txt"), std::string::npos);
  EXPECT_EQ(html.find("eval <&>"), std::string::npos);
  // The identical tensor's SNR is shown as infinity, not as a number.
  EXPECT_NE(html.find("&infin;"), std::string::npos);
}

TEST(Report, WithoutBaseHasNoKldCharts) {
  json r{{"package", "p"}, {"recipe", "f16"}, {"ppl", 5.0}, {"ppl_stderr", 0.1}, {"ctx", 128}};
  const std::string html = RenderVerifyReport({r});
  EXPECT_EQ(CheckTags(html), "");
  EXPECT_EQ(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("<table>"), std::string::npos);
}

}  // namespace
}  // namespace tessera
