#include "quantizer/recipes.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace tessera {

std::string SchemeName(const TensorScheme& s) {
  switch (s.type) {
    case QType::kI4Sym: return absl::StrCat("int4-g", s.group, "-sym");
    case QType::kI4Asym: return absl::StrCat("int4-g", s.group, "-asym");
    case QType::kI8: return absl::StrCat("int8-g", s.group);
    default: return QTypeName(s.type);
  }
}

double SchemeBitsPerWeight(const TensorScheme& s) {
  switch (s.type) {
    case QType::kF32: return 32;
    case QType::kF16:
    case QType::kBF16: return 16;
    case QType::kI8: return 8 + 16.0 / s.group;
    case QType::kI4Sym: return 4 + 16.0 / s.group;
    case QType::kI4Asym: return 4 + 32.0 / s.group;
  }
  return 0;
}

absl::StatusOr<TensorScheme> ParseScheme(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad scheme '", text, "'", why.empty() ? "" : ": ", why,
                     " (f32, f16, bf16, int8[-gG], int4[-gG][-sym|-asym])"));
  };
  std::vector<std::string> parts = absl::StrSplit(text, '-');
  TensorScheme s;
  if (parts.size() == 1 && (parts[0] == "f32" || parts[0] == "f16" || parts[0] == "bf16")) {
    QTypeFromName(parts[0], &s.type);
    return s;
  }
  if (parts[0] != "int4" && parts[0] != "int8") return bad("");
  const bool i4 = parts[0] == "int4";
  s.type = i4 ? QType::kI4Sym : QType::kI8;
  s.group = 32;
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    uint32_t g = 0;
    if (p.size() > 1 && p[0] == 'g' && absl::SimpleAtoi(p.substr(1), &g)) {
      s.group = g;
    } else if (i4 && p == "sym") {
      s.type = QType::kI4Sym;
    } else if (i4 && p == "asym") {
      s.type = QType::kI4Asym;
    } else {
      return bad(absl::StrCat("unknown part '", p, "'"));
    }
  }
  if (s.group == 0 || s.group % 32 != 0 || (i4 && s.group != 32 && s.group != 64 && s.group != 128))
    return bad(absl::StrCat("group ", s.group, " not supported"));
  return s;
}

absl::StatusOr<QuantRule> ParseOverride(const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size() || text.find('=', eq + 1) != std::string::npos)
    return absl::InvalidArgumentError(absl::StrCat("bad --override '", text, "': expected PATTERN=SCHEME, e.g. 'block_*/ffn_down=int8'"));
  QuantRule r;
  r.pattern = text.substr(0, eq);
  r.text = text;
  auto s = ParseScheme(text.substr(eq + 1));
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("bad --override '", text, "': ", s.status().message()));
  r.scheme = *s;
  return r;
}

bool GlobMatch(const std::string& p, const std::string& t) {
  // Iterative wildcard match with single-star backtracking.
  size_t pi = 0, ti = 0, star = std::string::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == t[ti])) {
      ++pi;
      ++ti;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (star != std::string::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

bool PatternMatchesKey(const std::string& pattern, const std::string& key) {
  if (pattern.find('/') != std::string::npos) return GlobMatch(pattern, key);
  const size_t slash = key.find('/');
  if (slash == std::string::npos) return GlobMatch(pattern, key);
  return GlobMatch(pattern, key.substr(0, slash)) || GlobMatch(pattern, key.substr(slash + 1));
}

namespace {
TensorScheme S(const char* name) { return *ParseScheme(name); }
QuantRule R(const char* pattern, const char* scheme) {
  return QuantRule{pattern, S(scheme), absl::StrCat(pattern, "=", scheme)};
}
// llama.cpp's use_more_bits(i, n) (Q4_K_M gives these layers' attn_v / ffn_down more bits).
bool UseMoreBits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }
}  // namespace

std::vector<QuantRule> Recipe::Rules(int64_t n_layers) const {
  std::vector<QuantRule> r = fixed_rules;
  if (more_bits_layers) {
    for (int64_t i = 0; i < n_layers; ++i) {
      if (!UseMoreBits(i, n_layers)) continue;
      r.push_back(R(absl::StrCat("block_", i, "/ffn_down").c_str(), "int8-g32"));
    }
  }
  return r;
}

const std::vector<Recipe>& AllRecipes() {
  static const std::vector<Recipe> recipes = [] {
    std::vector<Recipe> v;
    v.push_back({"int4-g32", "int4 symmetric, groups of 32, f16 scales: 4.5 bits/weight everywhere (Q4_0's size)",
                 S("int4-g32-sym"), true, {}, false});
    v.push_back({"int4-g64-asym", "int4 asymmetric, groups of 64, f16 scale + f16 min: 4.5 bits/weight everywhere",
                 S("int4-g64-asym"), true, {}, false});
    v.push_back({"int4-g128-asym", "int4 asymmetric, groups of 128, f16 scale + f16 min: 4.25 bits/weight everywhere",
                 S("int4-g128-asym"), true, {}, false});
    v.push_back({"int4-mixed",
                 "<= 4.9 bits/weight overall: int4-g32-sym, with output at int8-g32 and token_embd at "
                 "int4-g128-asym, attn_v and the first/last layers' ffn_down (llama.cpp's use_more_bits) at int4-g32-asym",
                 S("int4-g32-sym"), true, {R("lm/output", "int8-g32")}, true});
    v.push_back({"int8", "int8 symmetric, groups of 32, f16 scales: 8.5 bits/weight everywhere (Q8_0's size)",
                 S("int8-g32"), false, {}, false});
    v.push_back({"f16", "IEEE half precision, 16 bits/weight", S("f16"), false, {}, false});
    v.push_back({"bf16", "bfloat16, 16 bits/weight", S("bf16"), false, {}, false});
    v.push_back({"f32", "float32, 32 bits/weight", S("f32"), false, {}, false});
    return v;
  }();
  return recipes;
}

absl::StatusOr<Recipe> FindRecipe(const std::string& name) {
  std::vector<std::string> names;
  for (const Recipe& r : AllRecipes()) {
    if (r.name == name) return r;
    names.push_back(r.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown --recipe '", name, "' (", absl::StrJoin(names, ", "), ")"));
}

TensorScheme ResolveScheme(const TensorScheme& default_scheme, const std::vector<QuantRule>& recipe_rules,
                           const std::vector<QuantRule>& overrides, const std::string& key,
                           std::string* matched_rule) {
  TensorScheme s = default_scheme;
  if (matched_rule) matched_rule->clear();
  for (const auto* rules : {&recipe_rules, &overrides}) {
    for (const QuantRule& r : *rules) {
      if (PatternMatchesKey(r.pattern, key)) {
        s = r.scheme;
        if (matched_rule) *matched_rule = r.text;
      }
    }
  }
  return s;
}

std::string RecipeHelp() {
  std::string s;
  for (const Recipe& r : AllRecipes()) absl::StrAppend(&s, "  ", r.name, ": ", r.summary, "\n");
  return s;
}

}  // namespace tessera
