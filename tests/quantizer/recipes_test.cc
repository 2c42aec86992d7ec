// Recipes, schemes, overrides and glob matching (quantizer/recipes.h).
#include <tuple>

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
                        Case{"bf16", "bf16"}, Case{"f32", "f32"}}) {
    auto s = ParseScheme(c.in);
    ASSERT_TRUE(s.ok()) << c.in << ": " << s.status();
    EXPECT_EQ(SchemeName(*s), c.name);
    EXPECT_EQ(*ParseScheme(SchemeName(*s)), *s);
  }
  for (const char* bad : {"", "int3", "int4-g48", "int4-g256", "int8-asym", "f16-g32", "int4-g32-sym-x", "int4-g",
                          "int6-asym", "int6-g256", "int6-g16", "int6-sym"}) {
    auto s = ParseScheme(bad);
    EXPECT_FALSE(s.ok()) << bad;
  }
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4-g32")), 4.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4-g64-asym")), 4.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4-g128-asym")), 4.25);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int8")), 8.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int6")), 6.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int6-g64")), 6.25);
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
  for (const char* n : {"int4-g32", "int4-g64-asym", "int4-g128-asym", "int4-mixed", "int8", "f16", "bf16"})
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
             {"attn_q", 256, 256}, {"attn_k", 64, 256}, {"attn_v", 64, 256}, {"attn_o", 256, 256},
             {"ffn_gate", 768, 256}, {"ffn_up", 768, 256}, {"ffn_down", 256, 768}})
      m.push_back({b + n, r, c});
  }
  if (!tied) m.push_back({"lm/output", 4096, 256});
  return m;
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
  // ffn_down (+393,216 bits each) no longer fits. The fallbacks for the output are no-ops.
  EXPECT_EQ(p.upgrades_applied,
            (std::vector<std::string>{"lm/output=int6-g32", "block_*/attn_v=int6-g32", "block_*/attn_k=int6-g32"}));
  EXPECT_EQ(p.upgrades_skipped, (std::vector<std::string>{"block_2/ffn_down=int6-g32", "block_5/ffn_down=int6-g32"}));
  EXPECT_EQ(SchemeName(p.scheme["lm/output"]), "int6-g32");
  EXPECT_EQ(p.reason["lm/output"], "lm/output=int6-g32");
  EXPECT_EQ(SchemeName(p.scheme["block_3/attn_k"]), "int6-g32");
  EXPECT_EQ(SchemeName(p.scheme["block_2/ffn_down"]), "int4-g32-sym");
  EXPECT_EQ(SchemeName(p.scheme["embedding/token_embd"]), "int4-g32-sym");  // untied: not the output
  // Exact bytes: 4.5 bits/weight everywhere + 2 bits for each int6-g32 weight.
  uint64_t weights = 0;
  for (const auto& x : m) weights += static_cast<uint64_t>(x.rows * x.cols);
  EXPECT_EQ(p.bytes, weights * 9 / 16 + (4096 * 256 + 12 * 64 * 256) * 2 / 8);
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

}  // namespace
}  // namespace tessera
