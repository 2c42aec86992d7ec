#include "quantizer/allocate.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"
#include "core/status.h"
#include "formats/package.h"
#include "nlohmann/json.hpp"
#include "quantizer/recipes.h"
#include "runtime-lite/model.h"
#include "verify/perplexity.h"

namespace tessera {
namespace fs = std::filesystem;

std::vector<std::string> AllocationLadder() { return {"int6-g64", "int6-g32", "int8-g32"}; }

std::vector<size_t> SolveAllocationExact(const std::vector<std::vector<AllocationCandidate>>& options,
                                         int64_t budget) {
  std::vector<size_t> pick(options.size(), 0);
  if (budget <= 0 || options.empty()) return pick;
  // Costs in units of `unit` bytes, rounded up (a plan within the units is within the budget).
  constexpr int64_t kCells = 1 << 15;
  const int64_t unit = std::max<int64_t>(1, (budget + kCells - 1) / kCells);
  const size_t cap = static_cast<size_t>(budget / unit);
  auto cost = [&](const AllocationCandidate& c) -> int64_t {
    return c.dbytes <= 0 ? 0 : (c.dbytes + unit - 1) / unit;
  };
  // best[b]: the lowest sum of dKLD of the matrices so far within b units; from[i][b]: the option
  // of matrix i in it.
  const double kNone = std::numeric_limits<double>::infinity();
  std::vector<double> best(cap + 1, 0.0), next(cap + 1);
  std::vector<std::vector<uint8_t>> from(options.size(), std::vector<uint8_t>(cap + 1, 0));
  for (size_t i = 0; i < options.size(); ++i) {
    std::fill(next.begin(), next.end(), kNone);
    for (size_t j = 0; j < options[i].size() && j < 256; ++j) {
      const int64_t cj = cost(options[i][j]);
      if (cj > static_cast<int64_t>(cap)) continue;
      for (size_t b = static_cast<size_t>(cj); b <= cap; ++b) {
        const double v = best[b - static_cast<size_t>(cj)] + options[i][j].dkld;
        if (v < next[b]) next[b] = v, from[i][b] = static_cast<uint8_t>(j);
      }
    }
    best.swap(next);
  }
  size_t b = cap;
  for (size_t i = options.size(); i-- > 0;) {
    pick[i] = from[i][b];
    b -= static_cast<size_t>(cost(options[i][pick[i]]));
  }
  return pick;
}

std::vector<size_t> SolveAllocation(const std::vector<std::vector<AllocationCandidate>>& options, int64_t budget) {
  std::vector<size_t> cur(options.size(), 0);
  int64_t spent = 0;
  for (;;) {
    double best_ratio = 0;
    size_t best_i = 0, best_j = 0;
    int64_t best_db = 0;
    for (size_t i = 0; i < options.size(); ++i) {
      const AllocationCandidate& c = options[i][cur[i]];
      for (size_t j = 0; j < options[i].size(); ++j) {
        const double dk = options[i][j].dkld - c.dkld;
        const int64_t db = options[i][j].dbytes - c.dbytes;
        if (db <= 0 || dk >= 0 || spent + db > budget) continue;
        const double ratio = -dk / static_cast<double>(db);
        if (ratio > best_ratio) best_ratio = ratio, best_i = i, best_j = j, best_db = db;
      }
    }
    if (best_db == 0) return cur;
    cur[best_i] = best_j;
    spent += best_db;
  }
}

absl::StatusOr<AllocationResult> QuantizeMeasuredAllocation(const std::string& src_dir, const std::string& out_dir,
                                                            const QuantizeOptions& o,
                                                            const std::function<void(const std::string&)>& log) {
  TESSERA_ASSIGN_OR_RETURN(const Recipe recipe, FindRecipe(o.recipe));
  if (recipe.upgrades.empty())
    return absl::InvalidArgumentError(
        absl::StrCat("--allocate measured needs a budgeted recipe (int4-mixed, int4nl-mixed), not ", o.recipe));
  if (o.max_bytes == 0) return absl::InvalidArgumentError("--allocate measured needs --max-bytes N");
  if (o.calib_text.empty()) return absl::InvalidArgumentError("--allocate measured needs --calib TEXT");
  if (o.rotate) return absl::InvalidArgumentError("--allocate measured cannot be combined with --rotate");
  std::error_code ec;
  if (!o.force && fs::exists(out_dir, ec))
    return absl::AlreadyExistsError(absl::StrCat(out_dir, ": already exists (use --force to replace it)"));
  // The base plan: the recipe's default scheme and rules (no upgrades), then the user's overrides.
  QuantizeOptions b = o;
  b.recipe.clear();
  b.type = recipe.default_scheme.type;
  b.group = recipe.default_scheme.group;
  b.max_bytes = 0;
  b.max_bpw = 0;
  b.force = true;
  b.overrides.clear();
  for (const QuantRule& r : recipe.rules) b.overrides.push_back(r.text);
  for (const std::string& s : o.overrides) b.overrides.push_back(s);
  // Candidates go beside the output.
  fs::path out_abs = fs::absolute(out_dir).lexically_normal();
  if (out_abs.filename().empty()) out_abs = out_abs.parent_path();
  const std::string tmp = (out_abs.parent_path() / absl::StrCat(".", out_abs.filename().string(), ".alloc-", ::getpid())).string();

  TESSERA_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(o.calib_text));
  PerplexityOptions po;
  po.ctx = o.calib_ctx > 0 ? o.calib_ctx : 512;
  std::vector<int32_t> tokens;
  // The source model's logits on the calibration text: the reference of every candidate's KLD.
  BaseLogits base_logits;
  {
    TESSERA_ASSIGN_OR_RETURN(auto base_model, Model::Load(src_dir));
    tokens = base_model->tokenizer().Encode(text, true);
    TESSERA_ASSIGN_OR_RETURN(base_logits, ComputeBaseLogits(*base_model, tokens, po));
  }
  // Calibration statistics and each (matrix, scheme)'s quantized tensor, shared by the candidates.
  QuantizeCache cache;
  struct Measured {
    double kld;
    uint64_t bytes;
    nlohmann::json tensors;
  };
  auto measure = [&](const std::vector<std::string>& extra, const std::string& dir) -> absl::StatusOr<Measured> {
    QuantizeOptions c = b;
    for (const std::string& s : extra) c.overrides.push_back(s);
    TESSERA_RETURN_IF_ERROR(QuantizePackage(src_dir, dir, c, &cache));
    TESSERA_ASSIGN_OR_RETURN(auto q, Model::Load(dir));
    TESSERA_ASSIGN_OR_RETURN(const PerplexityResult r, Perplexity(*q, tokens, po, base_logits));
    TESSERA_ASSIGN_OR_RETURN(const std::string mtext, ReadFileToString(dir + "/manifest.json"));
    const nlohmann::json m = nlohmann::json::parse(mtext, nullptr, /*allow_exceptions=*/false);
    if (m.is_discarded()) return absl::DataLossError(absl::StrCat(dir, "/manifest.json: not JSON"));
    return Measured{r.kld_mean, PackageDirBytes(dir), m["quant"]["tensors"]};
  };
  auto run = [&]() -> absl::StatusOr<AllocationResult> {
    AllocationResult res;
    TESSERA_ASSIGN_OR_RETURN(const Measured base, measure({}, tmp));
    res.base_kld = base.kld;
    res.base_bytes = base.bytes;
    if (base.bytes > o.max_bytes)
      return absl::InvalidArgumentError(absl::StrCat("--max-bytes ", o.max_bytes, " is smaller than the base plan of ",
                                                     o.recipe, " without any upgrade: ", base.bytes, " bytes"));
    if (log) log(absl::StrCat("base plan: ", base.bytes, " bytes, calibration KLD ", base.kld));
    std::vector<std::string> keys;
    std::vector<std::vector<AllocationCandidate>> options;
    for (const auto& [key, t] : base.tensors.items()) {
      const std::string scheme = t["scheme"].get<std::string>();
      bool forced = false;  // a matrix the user's overrides decide is not reallocated
      for (const std::string& s : o.overrides) {
        TESSERA_ASSIGN_OR_RETURN(const QuantRule r, ParseOverride(s));
        forced = forced || PatternMatchesKey(r.pattern, key);
      }
      keys.push_back(key);
      options.push_back({AllocationCandidate{key, scheme, 0, 0}});
      if (forced) continue;
      TESSERA_ASSIGN_OR_RETURN(const TensorScheme cur, ParseScheme(scheme));
      for (const std::string& s : AllocationLadder()) {
        TESSERA_ASSIGN_OR_RETURN(const TensorScheme up, ParseScheme(s));
        if (SchemeBitsPerWeight(up) <= SchemeBitsPerWeight(cur)) continue;
        TESSERA_ASSIGN_OR_RETURN(const Measured m, measure({absl::StrCat(key, "=", s)}, tmp));
        AllocationCandidate c{key, s, m.kld - base.kld,
                              static_cast<int64_t>(m.bytes) - static_cast<int64_t>(base.bytes)};
        if (log) log(absl::StrCat(key, " -> ", s, ": dKLD ", c.dkld, ", dbytes ", c.dbytes));
        res.candidates.push_back(c);
        options.back().push_back(c);
      }
    }
    // Both solvers' plans (the greedy one can leave a large matrix with a good ratio out for many
    // small ones, e.g. kjv6L's output matrix), each re-measured; the lower calibration KLD is kept.
    struct Plan {
      std::vector<std::string> overrides;
      Measured m;
    };
    auto solve = [&](bool exact, const std::string& dir) -> absl::StatusOr<Plan> {
      int64_t budget = static_cast<int64_t>(o.max_bytes - base.bytes);
      for (int attempt = 0; attempt < 8; ++attempt) {
        const std::vector<size_t> pick = exact ? SolveAllocationExact(options, budget) : SolveAllocation(options, budget);
        Plan p;
        for (size_t i = 0; i < keys.size(); ++i)
          if (pick[i] != 0) p.overrides.push_back(absl::StrCat(keys[i], "=", options[i][pick[i]].scheme));
        TESSERA_ASSIGN_OR_RETURN(p.m, measure(p.overrides, dir));
        if (log)
          log(absl::StrCat(exact ? "exact" : "greedy", " plan: ", p.overrides.size(), " upgrades, ", p.m.bytes,
                           " bytes, calibration KLD ", p.m.kld));
        if (p.m.bytes <= o.max_bytes) return p;
        budget -= static_cast<int64_t>(p.m.bytes - o.max_bytes);
        if (log) log(absl::StrCat("plan of ", p.m.bytes, " bytes is over --max-bytes: solving again with ", budget));
      }
      return absl::InternalError(absl::StrCat("--allocate measured: no plan within --max-bytes ", o.max_bytes));
    };
    TESSERA_ASSIGN_OR_RETURN(const Plan greedy, solve(false, out_dir));
    Plan best = greedy;
    res.solver = "greedy";
    if (SolveAllocationExact(options, static_cast<int64_t>(o.max_bytes - base.bytes)) !=
        SolveAllocation(options, static_cast<int64_t>(o.max_bytes - base.bytes))) {
      TESSERA_ASSIGN_OR_RETURN(const Plan exact, solve(true, tmp));
      if (exact.m.kld < greedy.m.kld) {
        best = exact;
        res.solver = "exact";
        fs::remove_all(out_dir, ec);  // --force was checked above; both are beside each other
        fs::rename(tmp, out_dir, ec);
        if (ec) return absl::InternalError(absl::StrCat("cannot move ", tmp, " to ", out_dir, ": ", ec.message()));
      }
    }
    res.overrides = best.overrides;
    res.kld = best.m.kld;
    res.bytes = best.m.bytes;
    return res;
  };
  auto res = run();
  fs::remove_all(tmp, ec);
  if (!res.ok()) fs::remove_all(out_dir, ec);
  return res;
}

}  // namespace tessera
