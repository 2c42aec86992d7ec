// Recipes, schemes, overrides and glob matching (quantizer/recipes.h).
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
                        Case{"int8", "int8-g32"}, Case{"int8-g256", "int8-g256"}, Case{"f16", "f16"},
                        Case{"bf16", "bf16"}, Case{"f32", "f32"}}) {
    auto s = ParseScheme(c.in);
    ASSERT_TRUE(s.ok()) << c.in << ": " << s.status();
    EXPECT_EQ(SchemeName(*s), c.name);
    EXPECT_EQ(*ParseScheme(SchemeName(*s)), *s);
  }
  for (const char* bad : {"", "int3", "int4-g48", "int4-g256", "int8-asym", "f16-g32", "int4-g32-sym-x", "int4-g"}) {
    auto s = ParseScheme(bad);
    EXPECT_FALSE(s.ok()) << bad;
  }
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4-g32")), 4.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4-g64-asym")), 4.5);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int4-g128-asym")), 4.25);
  EXPECT_DOUBLE_EQ(SchemeBitsPerWeight(*ParseScheme("int8")), 8.5);
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

TEST(Plan, BudgetedUpgradesStayWithinBudget) {
  std::vector<MatrixShape> m;
  for (int i = 0; i < 6; ++i) {
    const std::string b = "block_" + std::to_string(i) + "/";
    m.push_back({b + "attn_q", 256, 256});
    m.push_back({b + "attn_v", 64, 256});
    m.push_back({b + "ffn_down", 256, 768});
  }
  m.push_back({"lm/output", 4096, 256});
  const auto r = FindRecipe("int4-mixed");
  ASSERT_TRUE(r.ok());
  auto p = PlanQuantization(r->default_scheme, r->rules, r->upgrades, r->max_bits_per_weight, {}, m, 6);
  EXPECT_LE(p.bits_per_weight(), 4.9);
  EXPECT_GT(p.bits_per_weight(), 4.5);
  EXPECT_FALSE(p.upgrades_applied.empty());
  uint64_t bytes = 0;
  for (const auto& x : m) bytes += SchemeBytes(p.scheme[x.key], x.rows, x.cols);
  EXPECT_EQ(bytes, p.bytes);
  // An override decides its tensors; the upgrades do not touch them.
  auto p2 = PlanQuantization(r->default_scheme, r->rules, r->upgrades, r->max_bits_per_weight,
                             {*ParseOverride("lm/output=f16")}, m, 6);
  EXPECT_EQ(SchemeName(p2.scheme["lm/output"]), "f16");
  EXPECT_EQ(p2.reason["lm/output"], "lm/output=f16");
  // use_more_bits layers of 6: 2 and 5.
  bool saw2 = false;
  for (const auto& u : p.upgrades_applied) saw2 |= u == "block_2/ffn_down=int8-g32";
  for (const auto& u : p.upgrades_skipped) saw2 |= u == "block_2/ffn_down=int8-g32";
  EXPECT_TRUE(saw2);
  // The output matrix is upgraded first: lm/output when present ...
  EXPECT_EQ(p.upgrades_applied.front(), "lm/output=int4-g32-asym");
  EXPECT_EQ(SchemeName(p.scheme["lm/output"]), "int4-g32-asym");
  // ... and the token embedding when the embeddings are tied (no lm/output matrix).
  std::vector<MatrixShape> tied(m.begin(), m.end() - 1);
  tied.push_back({"embedding/token_embd", 4096, 256});
  auto p3 = PlanQuantization(r->default_scheme, r->rules, r->upgrades, r->max_bits_per_weight, {}, tied, 6);
  ASSERT_FALSE(p3.upgrades_applied.empty());
  EXPECT_EQ(p3.upgrades_applied.front(), "embedding/token_embd=int4-g32-asym");
  EXPECT_EQ(SchemeName(p3.scheme["embedding/token_embd"]), "int4-g32-asym");
  // An untied embedding is not the output: it keeps the default.
  std::vector<MatrixShape> untied = m;
  untied.push_back({"embedding/token_embd", 4096, 256});
  auto p4 = PlanQuantization(r->default_scheme, r->rules, r->upgrades, r->max_bits_per_weight, {}, untied, 6);
  EXPECT_EQ(SchemeName(p4.scheme["embedding/token_embd"]), "int4-g32-sym");
}

}  // namespace
}  // namespace tessera
