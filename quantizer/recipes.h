// Quantization recipes: which storage scheme every tensor of a package gets.
//
// A tensor is addressed by its key FILE_STEM/TENSOR_NAME, e.g. "embedding/token_embd",
// "block_3/ffn_down", "lm/output". A recipe is a default scheme plus ordered glob rules
// (the last matching rule wins); `--override PATTERN=SCHEME` rules are applied after the
// recipe's own (again, the last match wins). A pattern without '/' matches either the file
// stem or the tensor name ("lm=int8" or "ffn_down=int8"). Vectors (norms, biases) are
// always f32 and never matched.
//
// Schemes: f32 | f16 | bf16 | int8[-gG] | int6[-gG] | int4[-gG][-sym|-asym]   (G: 32, 64, 128;
// int8 any multiple of 32; int4 defaults to g32 sym, int6 and int8 to g32; int6 is symmetric).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "formats/tensor_pack.h"

namespace tessera {

struct TensorScheme {
  QType type = QType::kF32;
  uint32_t group = 0;  // 0 for float types
  bool operator==(const TensorScheme&) const = default;
};

// "int4-g32-sym", "int4-g64-asym", "int6-g32", "int8-g32", "f16", ...
std::string SchemeName(const TensorScheme& s);
// Bits per weight of the stored planes (codes + f16 scales [+ f16 mins]), padding excluded.
double SchemeBitsPerWeight(const TensorScheme& s);
absl::StatusOr<TensorScheme> ParseScheme(const std::string& text);

struct QuantRule {
  std::string pattern;  // glob over FILE_STEM/TENSOR_NAME ('*' and '?' ; '*' crosses '/')
  TensorScheme scheme;
  std::string text;  // as written, "pattern=scheme"
};

// "PATTERN=SCHEME". Errors name the override.
absl::StatusOr<QuantRule> ParseOverride(const std::string& text);

bool GlobMatch(const std::string& pattern, const std::string& text);
// Does `rule_pattern` select the tensor with this key (see the header comment)?
bool PatternMatchesKey(const std::string& pattern, const std::string& key);

struct Recipe {
  std::string name;
  std::string summary;  // one line: bits/weight, groups, which tensors get more bits
  TensorScheme default_scheme;
  std::vector<QuantRule> rules;  // always applied (last match wins)
  // Budgeted recipes: `upgrades` are tried in order and kept only while the matrices' total
  // stays within max_bits_per_weight (computed from the exact stored bytes, padding included).
  // An upgrade only touches matrices whose current scheme has fewer bits/weight than its own, so
  // a cheaper fallback listed after an upgrade that was kept changes nothing.
  // "{output}" is lm/output, or embedding/token_embd when tied (no lm/output).
  // "{more_bits}" in a pattern expands to each layer of llama.cpp's use_more_bits(i, n)
  // (first and last eighth of the layers and every third one between), one rule per layer;
  // "{layer}" to every layer in order, one rule per layer (a per-layer step after a whole-model
  // one that did not fit uses the budget that is left).
  double max_bits_per_weight = 0;
  std::vector<QuantRule> upgrades;
};

struct MatrixShape {
  std::string key;  // FILE_STEM/TENSOR_NAME
  int64_t rows = 0, cols = 0;
};
// Exact stored bytes (all planes) of a [rows, cols] matrix with scheme s.
uint64_t SchemeBytes(const TensorScheme& s, int64_t rows, int64_t cols);

// The group actually used for a matrix with `cols` inputs: the scheme's group, halved (down to
// 32) while that strictly reduces the zero padding (e.g. K = 64 with g128 -> g64; K = 172 with
// g128 -> g64), so a small matrix never pays for a group longer than its rows.
TensorScheme FitGroup(const TensorScheme& s, int64_t cols);

struct QuantPlan {
  std::map<std::string, TensorScheme> scheme;  // per matrix key
  std::map<std::string, std::string> reason;   // the rule that decided it ("" = recipe default)
  std::vector<std::string> upgrades_applied, upgrades_skipped;
  uint64_t bytes = 0, weights = 0;  // matrices only
  uint64_t package_bytes = 0;         // with QuantBudget::package_bytes: the whole package
  double bits_per_weight() const { return weights ? 8.0 * static_cast<double>(bytes) / static_cast<double>(weights) : 0.0; }
};
// Chooses every matrix's scheme: recipe default, recipe rules, the overrides, then budgeted
// upgrades (skipping keys an override decides); groups fitted with FitGroup.
QuantPlan PlanQuantization(const TensorScheme& default_scheme, const std::vector<QuantRule>& rules,
                           const std::vector<QuantRule>& upgrades, double max_bits_per_weight,
                           const std::vector<QuantRule>& overrides, const std::vector<MatrixShape>& matrices,
                           int64_t n_layers);

// The budgets of a budgeted plan; an upgrade is kept only while every given budget holds.
struct QuantBudget {
  double max_bits_per_weight = 0;  // over the matrices' stored bytes; 0: none
  uint64_t max_bytes = 0;          // the whole package (all files); 0: none; needs package_bytes
  // The whole package's bytes for a (tentative) plan: the matrices plus everything else (pack
  // headers, index and alignment, vectors, tokenizer, manifest).
  std::function<uint64_t(const QuantPlan&)> package_bytes;
  // Names the budgets in errors ("--max-bytes", "--max-bpw"); empty: the recipe's own.
  bool user_bytes = false, user_bpw = false;
};
// As above with both budgets. A budget given by the user (user_*) that even the plan without any
// upgrade exceeds is an error naming both numbers; the recipe's own bits/weight budget is not.
absl::StatusOr<QuantPlan> PlanQuantizationWithBudget(const TensorScheme& default_scheme,
                                                     const std::vector<QuantRule>& rules,
                                                     const std::vector<QuantRule>& upgrades, const QuantBudget& budget,
                                                     const std::vector<QuantRule>& overrides,
                                                     const std::vector<MatrixShape>& matrices, int64_t n_layers);

const std::vector<Recipe>& AllRecipes();
// Errors list the known recipe names.
absl::StatusOr<Recipe> FindRecipe(const std::string& name);

// The scheme for the matrix `key` given the recipe rules and the overrides (overrides win).
TensorScheme ResolveScheme(const TensorScheme& default_scheme, const std::vector<QuantRule>& recipe_rules,
                           const std::vector<QuantRule>& overrides, const std::string& key,
                           std::string* matched_rule = nullptr);

// Human-readable recipe list for --help.
std::string RecipeHelp();

}  // namespace tessera
