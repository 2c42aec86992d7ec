// Recipes, schemes, overrides and glob matching (quantizer/recipes.h).
#include <algorithm>
#include <filesystem>
#include <map>
#include <tuple>

#include <unistd.h>

#include "formats/tensor_pack.h"
#include "gtest/gtest.h"
#include "quantizer/recipes.h"

namespace tessera {
namespace {

TEST(Scheme, ParsesAndNames) {
  struct Case {
    const char* in;
    const char* name;
  };
  for (const Case& c : {Case{"int4", "int4-g32-sym"}, Case{"int4-g64", "int4-g64-sym"},
                        Case{"int4-g128-asym", "int4-g128-asym"}, Case{"int4-asym", "int4-g32-asym"},
                        Case{"int8", "int8-g32"}, Case{"int8-g256", "int8-g256"}, Case{"int6", "int6-g32"},
                        Case{"int6-g64", "int6-g64"}, Case{"int6-g128", "int6-g128"}, Case{"f16", "f16"},
                        Case{"bf16", "bf16"}, Case{"f32", "f32"}, Case{"int4nl", "int4nl-g32"},
                        Case{"int4nl-g64", "int4nl-g64"}, Case{"int4nl-g128", "int4nl-g128"}}) {
    auto s = ParseScheme(c.in);
    ASSERT_TRUE(s.ok()) << c.in << ": " << s.status();
    EXPECT_EQ(SchemeName(*s), c.name);
    EXPECT_EQ(*ParseScheme(SchemeName(*s)), *s);
  }
  for (const char* bad : {"", "int3", "int4-g48", "int4-g256", "int8-asym", "f16-g32", "int4-g32-sym-x", "int4-g",
                          "int6-asym", "int6-g256", "int6-g16", "int6-sym", "int4nl-asym", "int4nl-sym",
                          "int4nl-g16", "int4nl-g256", "int4-nl"}) {
    auto s = ParseScheme(bad);
    EXPECT_FALSE(s.ok()) << bad;
  }
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4-g32")), 4.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4-g64-asym")), 4.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4-g128-asym")), 4.25);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int8")), 8.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int6")), 6.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int6-g64")), 6.25);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4nl")), 4.5);
  EXPECT_EQ(ParseScheme("int4nl-g64")->type, QType::kI4Nl);
  EXPECT_EQ(SchemeBytes(*ParseScheme("int4nl-g32"), 4, 80), 4u * 96 / 2 + 4u * 3 * 2);
  EXPECT_EQ(FindRecipe("int4nl-g32")->default_scheme, *ParseScheme("int4nl-g32"));
  EXPECT_EQ(SchemeBytes(*ParseScheme("int6-g32"), 4, 80), 4u * 96 * 3 / 4 + 4u * 3 * 2);  // padded to 96
}

TEST(Glob, Matches) {
  EXPECT_TRUE(GlobMatch("block_*/ffn_down", "block_12/ffn_down"));
  EXPECT_FALSE(GlobMatch("block_*/ffn_down", "block_12/ffn_up"));
  EXPECT_TRUE(GlobMatch("block_?/attn_*", "block_3/attn_v"));
  EXPECT_FALSE(GlobMatch("block_?/attn_*", "block_13/attn_v"));
  EXPECT_TRUE(GlobMatch("*", "lm/output"));
  EXPECT_TRUE(GlobMatch("*a*b*c", "xaxxbxxc"));
  EXPECT_FALSE(GlobMatch("*a*b*c", "xaxxbxxcd"));
  EXPECT_TRUE(PatternMatchesKey("lm", "lm/output"));
  EXPECT_TRUE(PatternMatchesKey("ffn_down", "block_0/ffn_down"));
  EXPECT_TRUE(PatternMatchesKey("block_1", "block_1/attn_q"));
  EXPECT_FALSE(PatternMatchesKey("block_1", "block_11/attn_q"));
  EXPECT_TRUE(PatternMatchesKey("embedding/token_embd", "embedding/token_embd"));
  EXPECT_FALSE(PatternMatchesKey("embedding/output", "lm/output"));
}

TEST(Override, ParsesAndErrorsNameTheOverride) {
  auto r = ParseOverride("block_*/ffn_down=int8");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->pattern, "block_*/ffn_down");
  EXPECT_EQ(SchemeName(r->scheme), "int8-g32");
  for (const char* bad : {"block_*/ffn_down", "=int8", "lm=", "lm=int5", "lm=int8=f16", "lm=int4-g96"}) {
    auto b = ParseOverride(bad);
    ASSERT_FALSE(b.ok()) << bad;
    EXPECT_NE(std::string(b.status().message()).find(std::string("'") + bad + "'"), std::string::npos)
        << b.status().message();
    EXPECT_EQ(std::string(b.status().message()).find('\n'), std::string::npos);
  }
}

TEST(Resolve, LastMatchWinsOverridesAfterRecipe) {
  const TensorScheme def = *ParseScheme("int4-g32");
  std::vector<QuantRule> recipe{*ParseOverride("lm/output=int8"), *ParseOverride("ffn_*=int4-g64-asym")};
  std::vector<QuantRule> ov{*ParseOverride("block_*/ffn_down=f16"), *ParseOverride("block_2/*=bf16")};
  std::string why;
  EXPECT_EQ(SchemeName(ResolveScheme(def, recipe, ov, "lm/output", &why)), "int8-g32");
  EXPECT_EQ(why, "lm/output=int8");
  EXPECT_EQ(SchemeName(ResolveScheme(def, recipe, ov, "block_1/ffn_up")), "int4-g64-asym");
  EXPECT_EQ(SchemeName(ResolveScheme(def, recipe, ov, "block_1/ffn_down")), "f16");
  EXPECT_EQ(SchemeName(ResolveScheme(def, recipe, ov, "block_2/ffn_down")), "bf16");
  EXPECT_EQ(SchemeName(ResolveScheme(def, recipe, ov, "block_1/attn_q", &why)), "int4-g32-sym");
  EXPECT_EQ(why, "");
}

TEST(Recipes, KnownAndUnknown) {
  for (const char* n : {"int4-g32", "int4-g32-out6", "int4nl-g32-out6", "int4-g64-asym", "int4-g128-asym", "int4-mixed", "int8", "f16", "bf16"})
    EXPECT_TRUE(FindRecipe(n).ok()) << n;
  auto r = FindRecipe("int3");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("int4-mixed"), std::string::npos);
  EXPECT_EQ(SchemeName(FindRecipe("int4-g32")->default_scheme), "int4-g32-sym");
  EXPECT_EQ(SchemeName(FindRecipe("int4-g64-asym")->default_scheme), "int4-g64-asym");
  EXPECT_EQ(SchemeName(FindRecipe("int4-g128-asym")->default_scheme), "int4-g128-asym");
  EXPECT_EQ(SchemeName(FindRecipe("int8")->default_scheme), "int8-g32");
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

TEST(Plan, FitGroupAvoidsPadding) {
  EXPECT_EQ(FitGroup(*ParseScheme("int4-g128-asym"), 64).group, 64u);
  EXPECT_EQ(FitGroup(*ParseScheme("int4-g128-asym"), 172).group, 64u);
  EXPECT_EQ(FitGroup(*ParseScheme("int4-g128-asym"), 256).group, 128u);
  EXPECT_EQ(FitGroup(*ParseScheme("int4-g32"), 172).group, 32u);
  EXPECT_EQ(FitGroup(*ParseScheme("int8-g256"), 96).group, 32u);
  EXPECT_EQ(FitGroup(*ParseScheme("f16"), 7).type, QType::kF16);
}

// kjv6L's matrix shapes (6 layers, 256 wide, kv 64, ffn 768, vocab 4096, untied).
std::vector<MatrixShape> Kjv6LShapes(bool tied) {
  std::vector<MatrixShape> m{{"embedding/token_embd", 4096, 256}};
  for (int i = 0; i < 6; ++i) {
    const std::string b = "block_" + std::to_string(i) + "/";
    for (const auto& [n, r, c] : std::vector<std::tuple<const char*, int64_t, int64_t>>{
             {"attn_q", 256, 256}, {"attn_k", 64, 256}, {"attn_v", 64, 256}, {"attn_output", 256, 256},
             {"ffn_gate", 768, 256}, {"ffn_up", 768, 256}, {"ffn_down", 256, 768}})
      m.push_back({b + n, r, c});
  }
  if (!tied) m.push_back({"lm/output", 4096, 256});
  return m;
}

// int4nl-mixed: the int4nl-g32 base with token_embd at int4nl-g64, and where int6-g32 / int6-g64
// for the output do not fit, int6-g128 does (never a uniform int4 scheme).
TEST(Plan, Int4NlMixedFallsBackToCoarserInt6ForTheOutput) {
  const auto r = FindRecipe("int4nl-mixed");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->default_scheme, *ParseScheme("int4nl-g32"));
  const std::vector<MatrixShape> m = Kjv6LShapes(false);
  uint64_t weights = 0, base_bytes = 0;
  for (const auto& x : m) {
    weights += static_cast<uint64_t>(x.rows * x.cols);
    base_bytes += SchemeBytes(*ParseScheme(x.key == "embedding/token_embd" ? "int4nl-g64" : "int4nl-g32"), x.rows, x.cols);
  }
  // Room for 1.69 extra bits on the 4096 x 256 output: more than int6-g128's 1.625, less than g64's 1.75.
  const double bpw = (8.0 * static_cast<double>(base_bytes) + 1.69 * 4096 * 256) / static_cast<double>(weights);
  auto p = PlanQuantization(r->default_scheme, r->rules, r->upgrades, bpw, {}, m, 6);
  EXPECT_LE(p.bits_per_weight(), bpw);
  EXPECT_EQ(SchemeName(p.scheme["lm/output"]), "int6-g128");
  EXPECT_EQ(p.upgrades_applied.front(), "lm/output=int6-g128");
  for (const auto& x : m) {
    const QType t = p.scheme[x.key].type;
    EXPECT_TRUE(t == QType::kI4Nl || t == QType::kI6Sym) << x.key;
  }
  EXPECT_EQ(SchemeName(p.scheme["embedding/token_embd"]), "int4nl-g64");
  EXPECT_EQ(p.reason["embedding/token_embd"], "embedding/token_embd=int4nl-g64");
}

// The *-out6 recipes (llama.cpp Q4_0's layout): the output matrix at int6-g32 -- lm/output when
// untied, token_embd when tied -- everything else at the 4-bit default; an override still wins, and
// the matrices never take more bytes than Q4_0's (Q6_K output at 6.5625 bits/weight, Q4_0 elsewhere).
TEST(Plan, Out6RecipesPutTheOutputMatrixAtInt6) {
  for (const char* name : {"int4-g32-out6", "int4nl-g32-out6"}) {
    const auto r = FindRecipe(name);
    ASSERT_TRUE(r.ok()) << name;
    EXPECT_TRUE(r->upgrades.empty());
    EXPECT_EQ(r->max_bits_per_weight, 0.0);
    for (bool tied : {false, true}) {
      const std::vector<MatrixShape> m = Kjv6LShapes(tied);
      const std::string out = tied ? "embedding/token_embd" : "lm/output";
      auto p = PlanQuantization(r->default_scheme, r->rules, r->upgrades, 0, {}, m, 6);
      uint64_t q4_0 = 0;
      for (const auto& x : m) {
        const bool is_out = x.key == out;
        EXPECT_EQ(p.scheme[x.key], is_out ? *ParseScheme("int6-g32") : r->default_scheme) << name << " " << x.key;
        EXPECT_EQ(p.reason[x.key], is_out ? out + "=int6-g32" : "") << name << " " << x.key;
        q4_0 += static_cast<uint64_t>(x.rows * x.cols) * (is_out ? 210 : 144) / 256;  // Q6_K / Q4_0 bytes per 256
      }
      EXPECT_LE(p.bytes, q4_0) << name;
      auto o = PlanQuantization(r->default_scheme, r->rules, r->upgrades, 0, {*ParseOverride(out + "=int8")}, m, 6);
      EXPECT_EQ(SchemeName(o.scheme[out]), "int8-g32");
    }
  }
}

TEST(Plan, BudgetedUpgradesStayWithinBudget) {
  const auto r = FindRecipe("int4-mixed");
  ASSERT_TRUE(r.ok());
  const std::vector<MatrixShape> m = Kjv6LShapes(false);
  auto p = PlanQuantization(r->default_scheme, r->rules, r->upgrades, r->max_bits_per_weight, {}, m, 6);
  EXPECT_LE(p.bits_per_weight(), 4.9);
  EXPECT_GT(p.bits_per_weight(), 4.5);
  uint64_t bytes = 0;
  for (const auto& x : m) bytes += SchemeBytes(p.scheme[x.key], x.rows, x.cols);
  EXPECT_EQ(bytes, p.bytes);
  // kjv6L: the output matrix, then every attn_v and attn_k go to int6-g32; a use_more_bits
  // ffn_down (+393,216 bits each) no longer fits, but one layer's attn_output (+131,072) does.
  // The fallbacks for the output are no-ops.
  EXPECT_EQ(p.upgrades_applied, (std::vector<std::string>{"lm/output=int6-g32", "block_*/attn_v=int6-g32",
                                                          "block_*/attn_k=int6-g32", "block_0/attn_output=int6-g32"}));
  ASSERT_GE(p.upgrades_skipped.size(), 3u);
  EXPECT_EQ(p.upgrades_skipped[0], "block_2/ffn_down=int6-g32");
  EXPECT_EQ(p.upgrades_skipped[1], "block_5/ffn_down=int6-g32");
  EXPECT_EQ(SchemeName(p.scheme["block_0/attn_output"]), "int6-g32");
  EXPECT_EQ(SchemeName(p.scheme["block_1/attn_output"]), "int4-g32-sym");
  EXPECT_EQ(SchemeName(p.scheme["lm/output"]), "int6-g32");
  EXPECT_EQ(p.reason["lm/output"], "lm/output=int6-g32");
  EXPECT_EQ(SchemeName(p.scheme["block_3/attn_k"]), "int6-g32");
  EXPECT_EQ(SchemeName(p.scheme["block_2/ffn_down"]), "int4-g32-sym");
  EXPECT_EQ(SchemeName(p.scheme["embedding/token_embd"]), "int4-g32-sym");  // untied: not the output
  // Exact bytes: 4.5 bits/weight everywhere + 2 bits for each int6-g32 weight.
  uint64_t weights = 0;
  for (const auto& x : m) weights += static_cast<uint64_t>(x.rows * x.cols);
  EXPECT_EQ(p.bytes, weights * 9 / 16 + (4096 * 256 + 12 * 64 * 256 + 256 * 256) * 2 / 8);
  // An override decides its tensors; the upgrades do not touch them.
  auto p2 = PlanQuantization(r->default_scheme, r->rules, r->upgrades, r->max_bits_per_weight,
                             {*ParseOverride("lm/output=f16")}, m, 6);
  EXPECT_EQ(SchemeName(p2.scheme["lm/output"]), "f16");
  EXPECT_EQ(p2.reason["lm/output"], "lm/output=f16");
  // Tied embeddings: the output is token_embd.
  auto p3 = PlanQuantization(r->default_scheme, r->rules, r->upgrades, r->max_bits_per_weight, {}, Kjv6LShapes(true), 6);
  ASSERT_FALSE(p3.upgrades_applied.empty());
  EXPECT_EQ(p3.upgrades_applied.front(), "embedding/token_embd=int6-g32");
  EXPECT_EQ(SchemeName(p3.scheme["embedding/token_embd"]), "int6-g32");
  EXPECT_LE(p3.bits_per_weight(), 4.9);
}

// When the output matrix is too large a share for int6 (+2 bits on it > the 0.4-bit budget), the
// recipe falls back to int6-g64, then int4-g32-asym; a fallback never lowers an upgraded matrix.
TEST(Plan, OutputFallsBackWhenInt6DoesNotFit) {
  const auto r = FindRecipe("int4-mixed");
  ASSERT_TRUE(r.ok());
  std::vector<MatrixShape> m;
  for (int i = 0; i < 6; ++i) {
    const std::string b = "block_" + std::to_string(i) + "/";
    m.push_back({b + "attn_q", 256, 256});
    m.push_back({b + "attn_v", 64, 256});
    m.push_back({b + "ffn_down", 256, 768});
  }
  m.push_back({"lm/output", 4096, 256});  // 1M of 2.7M weights
  auto p = PlanQuantization(r->default_scheme, r->rules, r->upgrades, r->max_bits_per_weight, {}, m, 6);
  EXPECT_LE(p.bits_per_weight(), 4.9);
  ASSERT_GE(p.upgrades_skipped.size(), 2u);
  EXPECT_EQ(p.upgrades_skipped[0], "lm/output=int6-g32");
  EXPECT_EQ(p.upgrades_skipped[1], "lm/output=int6-g64");
  ASSERT_FALSE(p.upgrades_applied.empty());
  EXPECT_EQ(p.upgrades_applied.front(), "lm/output=int4-g32-asym");
  EXPECT_EQ(SchemeName(p.scheme["lm/output"]), "int4-g32-asym");
  // A recipe whose fallback comes after a kept upgrade leaves the matrix alone.
  const std::vector<QuantRule> ups{*ParseOverride("lm/output=int6-g32"), *ParseOverride("lm/output=int4-g32-asym")};
  auto q = PlanQuantization(r->default_scheme, {}, ups, 0, {}, m, 6);
  EXPECT_EQ(SchemeName(q.scheme["lm/output"]), "int6-g32");
  EXPECT_EQ(q.upgrades_applied, std::vector<std::string>{"lm/output=int6-g32"});
}

// stories260K's matrix shapes (5 layers, 64 wide, kv 32, ffn 172, vocab 512, tied).
std::vector<MatrixShape> Stories260KShapes() {
  std::vector<MatrixShape> m{{"embedding/token_embd", 512, 64}};
  for (int i = 0; i < 5; ++i) {
    const std::string b = "block_" + std::to_string(i) + "/";
    for (const auto& [n, r, c] : std::vector<std::tuple<const char*, int64_t, int64_t>>{
             {"attn_q", 64, 64}, {"attn_k", 32, 64}, {"attn_v", 32, 64}, {"attn_output", 64, 64},
             {"ffn_gate", 172, 64}, {"ffn_up", 172, 64}, {"ffn_down", 64, 172}})
      m.push_back({b + n, r, c});
  }
  return m;
}

// A package size model for the planner: the matrices' exact bytes plus a fixed cost and a cost per
// upgrade text (the manifest lists them), as QuantizePackage's is.
QuantBudget ByteBudget(uint64_t max_bytes, const std::vector<MatrixShape>& m) {
  QuantBudget b;
  b.max_bytes = max_bytes;
  b.user_bytes = true;
  b.package_bytes = [m](const QuantPlan& p) {
    uint64_t bytes = 50000;
    for (const auto& x : m) bytes += SchemeBytes(p.scheme.at(x.key), x.rows, x.cols);
    for (const auto* list : {&p.upgrades_applied, &p.upgrades_skipped})
      for (const std::string& t : *list) bytes += t.size() + 8;
    return bytes;
  };
  return b;
}

TEST(Plan, ByteBudgetIsExactMonotonicAndDeterministic) {
  const auto r = FindRecipe("int4-mixed");
  ASSERT_TRUE(r.ok());
  const std::vector<MatrixShape> m = Stories260KShapes();
  auto matrix_bytes = [&](const QuantPlan& p) {
    uint64_t b = 0;
    for (const auto& x : m) b += SchemeBytes(p.scheme.at(x.key), x.rows, x.cols);
    return b;
  };
  auto sized = [&](uint64_t max_bytes) { return ByteBudget(max_bytes, m); };
  const QuantPlan base = PlanQuantization(r->default_scheme, r->rules, {}, 0, {}, m, 5);
  uint64_t prev_bytes = 0;
  std::map<std::string, double> prev_bits;
  int changes = 0;
  // From just above the plan without upgrades to int8 everywhere, in steps of 512 bytes.
  for (uint64_t max = 50000 + base.bytes + 4096; max < 50000 + 300000; max += 512) {
    auto p = PlanQuantizationWithBudget(r->default_scheme, r->rules, r->upgrades, sized(max), {}, m, 5);
    ASSERT_TRUE(p.ok()) << max << ": " << p.status();
    EXPECT_LE(p->package_bytes, max);
    EXPECT_EQ(p->bytes, matrix_bytes(*p));
    // Never below the base plan; the package grows with the budget.
    for (const auto& x : m)
      EXPECT_GE(SchemeBitsPerWeight(p->scheme.at(x.key)), SchemeBitsPerWeight(base.scheme.at(x.key))) << x.key;
    EXPECT_GE(p->bytes, prev_bytes) << max;
    if (p->bytes != prev_bytes) ++changes;
    prev_bytes = p->bytes;
    // Deterministic: the same budget gives the same plan.
    auto again = PlanQuantizationWithBudget(r->default_scheme, r->rules, r->upgrades, sized(max), {}, m, 5);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->scheme, p->scheme);
    EXPECT_EQ(again->upgrades_applied, p->upgrades_applied);
    EXPECT_EQ(again->package_bytes, p->package_bytes);
  }
  EXPECT_GT(changes, 20);  // per-layer steps: the budget is used in small increments
  // At llama.cpp Q4_K_M's file size (281,632 bytes with ~50 KB of fixed costs) every matrix is at
  // least int6 and the output (tied token_embd) goes to int8 first.
  auto q = PlanQuantizationWithBudget(r->default_scheme, r->rules, r->upgrades, sized(281632), {}, m, 5);
  ASSERT_TRUE(q.ok());
  for (const auto& x : m) EXPECT_GE(SchemeBitsPerWeight(q->scheme.at(x.key)), 6.5) << x.key;
  EXPECT_EQ(SchemeName(q->scheme.at("embedding/token_embd")), "int8-g32");
  EXPECT_LE(q->package_bytes, 281632u);
}

TEST(Plan, PerLayerStepsUseWhatAWholeModelStepLeaves) {
  const auto r = FindRecipe("int4-mixed");
  ASSERT_TRUE(r.ok());
  // stories260K at 4.9 bits/weight: token_embd -> int6 leaves room for some attn_v layers but not
  // all of them at once; the use_more_bits layers (0, 2, 4 of 5... here 2 and 4) come first.
  auto p = PlanQuantization(r->default_scheme, r->rules, r->upgrades, r->max_bits_per_weight, {}, Stories260KShapes(), 5);
  EXPECT_LE(p.bits_per_weight(), 4.9);
  ASSERT_GE(p.upgrades_applied.size(), 2u);
  EXPECT_EQ(p.upgrades_applied[0], "embedding/token_embd=int6-g32");
  EXPECT_EQ(p.upgrades_applied[1], "block_2/attn_v=int6-g32");
  EXPECT_EQ(SchemeName(p.scheme.at("block_2/attn_v")), "int6-g32");
  EXPECT_EQ(std::count(p.upgrades_skipped.begin(), p.upgrades_skipped.end(), "block_*/attn_v=int6-g32"), 1);
  EXPECT_EQ(p.upgrades_applied[2], "block_4/attn_v=int6-g32");
}

TEST(Plan, ImpossibleBudgetsNameTheNumbers) {
  const auto r = FindRecipe("int4-mixed");
  ASSERT_TRUE(r.ok());
  const std::vector<MatrixShape> m = Stories260KShapes();
  QuantBudget b = ByteBudget(60000, m);
  auto p = PlanQuantizationWithBudget(r->default_scheme, r->rules, r->upgrades, b, {}, m, 5);
  ASSERT_FALSE(p.ok());
  const std::string msg(p.status().message());
  EXPECT_NE(msg.find("--max-bytes 60000 is smaller than the package without any upgrade"), std::string::npos) << msg;
  QuantBudget c;
  c.max_bits_per_weight = 4.5;
  c.user_bpw = true;
  auto q = PlanQuantizationWithBudget(r->default_scheme, r->rules, r->upgrades, c, {}, m, 5);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(std::string(q.status().message()).find("--max-bpw 4.5 is below the plan without any upgrade: 4.61106"),
            std::string::npos)
      << q.status();
  // The recipe's own 4.9 is not an error even when an override already exceeds it.
  c.user_bpw = false;
  c.max_bits_per_weight = 4.9;
  EXPECT_TRUE(PlanQuantizationWithBudget(r->default_scheme, r->rules, r->upgrades, c, {*ParseOverride("ffn_up=f16")},
                                         m, 5)
                  .ok());
}

// The planner's pack size is the size WriteTensorPack writes (every plane type, odd sizes).
TEST(Plan, TensorPackFileBytesMatchesTheWriter) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("tessera-packbytes-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::vector<TensorData> ts(4);
  ts[0] = {"attn_norm", QType::kF32, {64}, 0, 64, std::vector<uint8_t>(256), {}, {}};
  ts[1] = {"ffn_down", QType::kI4Asym, {64, 172}, 32, 192, std::vector<uint8_t>(64 * 96), std::vector<uint8_t>(64 * 12),
           std::vector<uint8_t>(64 * 12)};
  ts[2] = {"attn_v", QType::kI6Sym, {32, 64}, 32, 64, std::vector<uint8_t>(32 * 48), std::vector<uint8_t>(32 * 4), {}};
  ts[3] = {"x", QType::kF16, {3, 5}, 0, 5, std::vector<uint8_t>(30), {}, {}};
  for (size_t n = 1; n <= ts.size(); ++n) {
    std::vector<TensorData> sub(ts.begin(), ts.begin() + static_cast<long>(n));
    std::vector<TensorPackEntry> e;
    for (const TensorData& t : sub) {
      TensorPackEntry x{t.name.size(), t.shape.size(), {t.data.size()}};
      if (!t.scales.empty()) x.planes.push_back(t.scales.size());
      if (!t.mins.empty()) x.planes.push_back(t.mins.size());
      e.push_back(x);
    }
    const std::string path = (dir / ("p" + std::to_string(n) + ".bin")).string();
    ASSERT_TRUE(WriteTensorPack(path, sub).ok());
    EXPECT_EQ(TensorPackFileBytes(e), std::filesystem::file_size(path)) << n;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tessera
