#include "quantizer/recipes.h"

#include <set>

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
    case QType::kI6Sym: return absl::StrCat("int6-g", s.group);
    case QType::kI4Nl: return absl::StrCat("int4nl-g", s.group);
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
    case QType::kI6Sym: return 6 + 16.0 / s.group;
    case QType::kI4Nl: return 4 + 16.0 / s.group;
  }
  return 0;
}

absl::StatusOr<TensorScheme> ParseScheme(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad scheme '", text, "'", why.empty() ? "" : ": ", why,
                     " (f32, f16, bf16, int8[-gG], int6[-gG], int4[-gG][-sym|-asym], int4nl[-gG])"));
  };
  std::vector<std::string> parts = absl::StrSplit(text, '-');
  TensorScheme s;
  if (parts.size() == 1 && (parts[0] == "f32" || parts[0] == "f16" || parts[0] == "bf16")) {
    QTypeFromName(parts[0], &s.type);
    return s;
  }
  if (parts[0] != "int4" && parts[0] != "int6" && parts[0] != "int8" && parts[0] != "int4nl") return bad("");
  const bool i4 = parts[0] == "int4";
  const bool i6 = parts[0] == "int6" || parts[0] == "int4nl";  // groups 32 / 64 / 128, no sym/asym part
  s.type = i4 ? QType::kI4Sym : (parts[0] == "int6" ? QType::kI6Sym : (parts[0] == "int4nl" ? QType::kI4Nl : QType::kI8));
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
  if (s.group == 0 || s.group % 32 != 0 || ((i4 || i6) && s.group != 32 && s.group != 64 && s.group != 128))
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

const char* kMixedSummary =
    "int4-g32-sym plus upgrades, each kept only while all matrices stay <= 4.9 bits/weight (or within --max-bytes / "
    "--max-bpw), in this order: the output matrix (lm/output, or embedding/token_embd when the embeddings are tied) -> "
    "int6-g32 (if that does not fit: int6-g64, then int4-g32-asym), every attn_v -> int6-g32, every attn_k -> int6-g32, "
    "ffn_down of llama.cpp's use_more_bits layers -> int6-g32; then one layer at a time: attn_v (use_more_bits layers "
    "first), ffn_down, attn_k, attn_output, attn_q, ffn_gate, ffn_up, an untied token_embd -> int6-g32; then the same order "
    "again -> int8-g32 (output first). An upgrade never lowers a matrix's bits";
const char* kNlMixedSummary =
    "int4nl-g32 with token_embd at int4nl-g64 (an input lookup, the least sensitive matrix), plus int4-mixed's upgrades "
    "within the same budgets, except the output matrix's fallbacks: int6-g32, then int6-g64, then int6-g128 (no "
    "uniform int4-g32-asym)";
// nl: the int4nl-mixed list (the output falls back to coarser int6 groups, never to uniform int4).
std::vector<QuantRule> MixedUpgrades(bool nl = false) {
  std::vector<QuantRule> u{R("{output}", "int6-g32"),       R("{output}", "int6-g64"),
                           nl ? R("{output}", "int6-g128") : R("{output}", "int4-g32-asym"),
                           R("block_*/attn_v", "int6-g32"),
                           R("block_*/attn_k", "int6-g32"), R("{more_bits}/ffn_down", "int6-g32")};
  // Per layer, for budgets a whole-model step does not fit (or that have room after it).
  for (const char* scheme : {"int6-g32", "int8-g32"}) {
    if (std::string(scheme) == "int8-g32") u.push_back(R("{output}", scheme));
    for (const char* pattern : {"{more_bits}/attn_v", "{layer}/attn_v", "{more_bits}/ffn_down", "{layer}/ffn_down",
                                "{layer}/attn_k", "{layer}/attn_output", "{layer}/attn_q", "{layer}/ffn_gate",
                                "{layer}/ffn_up", "embedding/token_embd"})
      u.push_back(R(pattern, scheme));
  }
  return u;
}

// "{output}": the matrix that produces the logits - lm/output, or embedding/token_embd when there
// is no lm/output (tied embeddings). "{more_bits}": each layer of llama.cpp's use_more_bits.
std::vector<QuantRule> Expand(const QuantRule& r, int64_t n_layers, const std::vector<MatrixShape>& matrices) {
  if (r.pattern == "{output}") {
    bool has_lm = false;
    for (const MatrixShape& m : matrices) has_lm = has_lm || m.key == "lm/output";
    QuantRule e = r;
    e.pattern = has_lm ? "lm/output" : "embedding/token_embd";
    e.text = absl::StrCat(e.pattern, "=", SchemeName(e.scheme));
    return {e};
  }
  const bool more_bits = r.pattern.find("{more_bits}") != std::string::npos;
  const std::string tag = more_bits ? "{more_bits}" : "{layer}";
  const size_t pos = r.pattern.find(tag);
  if (pos == std::string::npos) return {r};
  std::vector<QuantRule> out;
  for (int64_t i = 0; i < n_layers; ++i) {
    if (more_bits && !UseMoreBits(i, n_layers)) continue;
    QuantRule e = r;
    e.pattern = r.pattern.substr(0, pos) + absl::StrCat("block_", i) + r.pattern.substr(pos + tag.size());
    e.text = absl::StrCat(e.pattern, "=", SchemeName(e.scheme));
    out.push_back(e);
  }
  return out;
}
}  // namespace

uint64_t SchemeBytes(const TensorScheme& s, int64_t rows, int64_t cols) {
  const size_t r = static_cast<size_t>(rows);
  size_t k = static_cast<size_t>(cols);
  if (!IsQuantized(s.type)) return DataPlaneBytes(s.type, r, k);
  k = (k + s.group - 1) / s.group * s.group;
  const size_t sc = ScalePlaneBytes(s.type, r, k, s.group);
  return DataPlaneBytes(s.type, r, k) + sc * (s.type == QType::kI4Asym ? 2 : 1);
}

TensorScheme FitGroup(const TensorScheme& s, int64_t cols) {
  if (!IsQuantized(s.type) || cols <= 0) return s;
  TensorScheme best = s;
  auto padded = [&](uint32_t g) { return (static_cast<uint64_t>(cols) + g - 1) / g * g; };
  for (uint32_t g = s.group / 2; g >= 32 && g % 32 == 0; g /= 2)
    if (padded(g) < padded(best.group)) best.group = g;
  return best;
}

QuantPlan PlanQuantization(const TensorScheme& default_scheme, const std::vector<QuantRule>& rules,
                           const std::vector<QuantRule>& upgrades, double max_bits_per_weight,
                           const std::vector<QuantRule>& overrides, const std::vector<MatrixShape>& matrices,
                           int64_t n_layers) {
  QuantBudget b;
  b.max_bits_per_weight = max_bits_per_weight;
  // Without user budgets the plan cannot fail.
  return *PlanQuantizationWithBudget(default_scheme, rules, upgrades, b, overrides, matrices, n_layers);
}

absl::StatusOr<QuantPlan> PlanQuantizationWithBudget(const TensorScheme& default_scheme,
                                                     const std::vector<QuantRule>& rules,
                                                     const std::vector<QuantRule>& upgrades, const QuantBudget& budget,
                                                     const std::vector<QuantRule>& overrides,
                                                     const std::vector<MatrixShape>& matrices, int64_t n_layers) {
  if (budget.max_bytes > 0 && !budget.package_bytes)
    return absl::InvalidArgumentError("a byte budget needs the package's size function");
  QuantPlan p;
  // The plan as it will be stored: groups fitted, the fit noted in the reason.
  auto finish = [&](QuantPlan* q) {
    for (const MatrixShape& m : matrices) {
      const TensorScheme fit = FitGroup(q->scheme[m.key], m.cols);
      if (fit == q->scheme[m.key]) continue;
      std::string& why = q->reason[m.key];
      why = absl::StrCat(why, why.empty() ? "" : "; ", "group ", q->scheme[m.key].group, " -> ", fit.group,
                         " (K = ", m.cols, ")");
      q->scheme[m.key] = fit;
    }
  };
  auto fitted = [&](const QuantPlan& q) {
    QuantPlan f = q;
    finish(&f);
    return f;
  };
  auto matrix_bytes = [&](const QuantPlan& q) {
    uint64_t b = 0;
    for (const MatrixShape& m : matrices) b += SchemeBytes(FitGroup(q.scheme.at(m.key), m.cols), m.rows, m.cols);
    return b;
  };
  // Recipe rules may name "{output}" (and the per-layer tags) as upgrades do.
  std::vector<QuantRule> recipe_rules;
  for (const QuantRule& r : rules)
    for (const QuantRule& e : Expand(r, n_layers, matrices)) recipe_rules.push_back(e);
  std::set<std::string> forced;
  for (const MatrixShape& m : matrices) {
    std::string why;
    p.scheme[m.key] = ResolveScheme(default_scheme, recipe_rules, {}, m.key, &why);
    p.reason[m.key] = why;
    p.weights += static_cast<uint64_t>(m.rows * m.cols);
    for (const QuantRule& o : overrides)
      if (PatternMatchesKey(o.pattern, m.key)) forced.insert(m.key);
  }
  // Overrides first (they are fixed costs), then the upgrades in order while within budget.
  for (const MatrixShape& m : matrices) {
    std::string why;
    const TensorScheme s = ResolveScheme(p.scheme[m.key], {}, overrides, m.key, &why);
    if (!why.empty()) {
      p.scheme[m.key] = s;
      p.reason[m.key] = why;
    }
  }
  const double budget_bits = budget.max_bits_per_weight * static_cast<double>(p.weights);
  auto over_bits = [&](const QuantPlan& q) {
    return budget.max_bits_per_weight > 0 && 8.0 * static_cast<double>(matrix_bytes(q)) > budget_bits;
  };
  auto over_bytes = [&](const QuantPlan& q) {
    return budget.max_bytes > 0 && budget.package_bytes(fitted(q)) > budget.max_bytes;
  };
  std::vector<QuantRule> expanded;
  {
    QuantPlan all_skipped = p;  // for the manifest: every upgrade listed as skipped
    for (const QuantRule& u0 : upgrades)
      for (const QuantRule& u : Expand(u0, n_layers, matrices)) all_skipped.upgrades_skipped.push_back(u.text);
    const QuantPlan base = fitted(all_skipped);
    if (budget.user_bytes && over_bytes(all_skipped)) {
      const uint64_t total = budget.package_bytes(base), mb = matrix_bytes(p);
      return absl::InvalidArgumentError(absl::StrCat(
          "--max-bytes ", budget.max_bytes, " is smaller than the package without any upgrade: ", total,
          " bytes (matrices ", mb, " at ", 8.0 * static_cast<double>(mb) / static_cast<double>(p.weights),
          " bits/weight + ", total - mb, " bytes of tokenizer, norms, file headers and manifest)"));
    }
    if (budget.user_bpw && over_bits(p)) {
      const uint64_t mb = matrix_bytes(p);
      return absl::InvalidArgumentError(absl::StrCat(
          "--max-bpw ", budget.max_bits_per_weight, " is below the plan without any upgrade: ",
          8.0 * static_cast<double>(mb) / static_cast<double>(p.weights), " bits/weight (", mb, " bytes for ",
          p.weights, " weights, group padding included)"));
    }
  }
  for (const QuantRule& u0 : upgrades)
    for (const QuantRule& u : Expand(u0, n_layers, matrices)) expanded.push_back(u);
  for (size_t i = 0; i < expanded.size(); ++i) {
    const QuantRule& u = expanded[i];
    QuantPlan trial = p;
    std::vector<std::string> touched;
    for (const MatrixShape& m : matrices) {
      if (forced.count(m.key) || !PatternMatchesKey(u.pattern, m.key)) continue;
      // An upgrade never lowers a matrix's bits (a fallback after a kept upgrade is a no-op).
      if (SchemeBitsPerWeight(u.scheme) <= SchemeBitsPerWeight(p.scheme[m.key])) continue;
      trial.scheme[m.key] = u.scheme;
      trial.reason[m.key] = u.text;
      touched.push_back(m.key);
    }
    if (touched.empty()) continue;
    trial.upgrades_applied.push_back(u.text);
    // The byte budget sees every upgrade still to come as skipped (the manifest lists them), so
    // the plan's final manifest is never larger than the one checked here.
    for (size_t j = i + 1; j < expanded.size(); ++j) trial.upgrades_skipped.push_back(expanded[j].text);
    if (over_bits(trial) || over_bytes(trial)) {
      p.upgrades_skipped.push_back(u.text);
      continue;
    }
    trial.upgrades_skipped = p.upgrades_skipped;
    p = std::move(trial);
  }
  finish(&p);
  p.bytes = matrix_bytes(p);
  if (budget.package_bytes) p.package_bytes = budget.package_bytes(p);
  return p;
}

const std::vector<Recipe>& AllRecipes() {
  static const std::vector<Recipe> recipes = [] {
    std::vector<Recipe> v;
    auto plain = [&](const char* name, const char* summary, const char* scheme) {
      Recipe r;
      r.name = name;
      r.summary = summary;
      r.default_scheme = S(scheme);
      v.push_back(r);
    };
    plain("int4-g32", "int4 symmetric, groups of 32, f16 scales: 4.5 bits/weight everywhere (Q4_0's size)",
          "int4-g32-sym");
    plain("int4nl-g32",
          "int4 on IQ4_NL's 16 non-uniform levels (denser near 0), groups of 32, f16 scales: 4.5 bits/weight "
          "everywhere (Q4_0's and IQ4_NL's size)",
          "int4nl-g32");
    // llama.cpp's Q4_0 files keep the output matrix (or the tied token_embd) at Q6_K, 6.5625
    // bits/weight (Q8_0 when the width is not a multiple of 256): these recipes do the same with
    // int6-g32 (6.5 bits/weight) and are never larger than that layout.
    auto out6 = [&](const char* name, const char* summary, const char* scheme) {
      plain(name, summary, scheme);
      v.back().rules = {R("{output}", "int6-g32")};
    };
    out6("int4-g32-out6",
         "int4-g32 everywhere except the output matrix (lm/output, or token_embd when tied) at int6-g32: llama.cpp "
         "Q4_0's layout (its output is Q6_K), 4.5 bits/weight plus 2 on the output",
         "int4-g32-sym");
    out6("int4nl-g32-out6",
         "int4nl-g32 everywhere except the output matrix (lm/output, or token_embd when tied) at int6-g32: llama.cpp "
         "Q4_0's layout (its output is Q6_K) on IQ4_NL's levels, 4.5 bits/weight plus 2 on the output",
         "int4nl-g32");
    plain("int4-g64-asym", "int4 asymmetric, groups of 64, f16 scale + f16 min: 4.5 bits/weight everywhere",
          "int4-g64-asym");
    plain("int4-g128-asym", "int4 asymmetric, groups of 128, f16 scale + f16 min: 4.25 bits/weight everywhere",
          "int4-g128-asym");
    {
      Recipe r;
      r.name = "int4-mixed";
      r.summary = kMixedSummary;
      r.default_scheme = S("int4-g32-sym");
      r.max_bits_per_weight = 4.9;
      r.upgrades = MixedUpgrades();
      v.push_back(r);
    }
    {
      Recipe r;
      r.name = "int4nl-mixed";
      r.summary = kNlMixedSummary;
      r.default_scheme = S("int4nl-g32");
      r.rules = {R("embedding/token_embd", "int4nl-g64")};  // tied: the {output} upgrades still apply to it
      r.max_bits_per_weight = 4.9;
      r.upgrades = MixedUpgrades(true);
      v.push_back(r);
    }
    plain("int8", "int8 symmetric, groups of 32, f16 scales: 8.5 bits/weight everywhere (Q8_0's size)", "int8-g32");
    plain("f16", "IEEE half precision, 16 bits/weight", "f16");
    plain("bf16", "bfloat16, 16 bits/weight", "bf16");
    plain("f32", "float32, 32 bits/weight", "f32");
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
