#include "quantizer/quantize.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "core/progress.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "formats/package.h"
#include "quantizer/awq.h"
#include "quantizer/gptq.h"
#include "quantizer/imatrix.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/nl4.h"
#include "quantizer/rotate.h"
#include "quantizer/search.h"

namespace tessera {
namespace fs = std::filesystem;

const char* QuantAlgorithmName(QuantAlgorithm a) {
  switch (a) {
    case QuantAlgorithm::kDefault: return "default";
    case QuantAlgorithm::kRtn: return "rtn";
    case QuantAlgorithm::kSearch: return "search";
    case QuantAlgorithm::kGptq: return "gptq";
  }
  return "?";
}

bool QuantAlgorithmFromName(const std::string& name, QuantAlgorithm* out) {
  for (QuantAlgorithm a : {QuantAlgorithm::kDefault, QuantAlgorithm::kRtn, QuantAlgorithm::kSearch, QuantAlgorithm::kGptq}) {
    if (name == QuantAlgorithmName(a)) {
      *out = a;
      return true;
    }
  }
  return false;
}

namespace {
TensorScheme LegacyScheme(const QuantizeOptions& o) {
  TensorScheme s;
  s.type = o.type;
  s.group = IsQuantized(o.type) ? o.group : 0;
  return s;
}

// The algorithm actually used for a scheme (kGptq only where a covariance is available).
QuantAlgorithm Effective(QuantAlgorithm a, const TensorScheme& s, bool have_cov) {
  const bool searchable =
      s.type == QType::kI4Sym || s.type == QType::kI4Asym || s.type == QType::kI6Sym || s.type == QType::kI4Nl;
  if (!searchable) return IsQuantized(s.type) ? QuantAlgorithm::kRtn : QuantAlgorithm::kDefault;
  if (a == QuantAlgorithm::kDefault) return have_cov ? QuantAlgorithm::kGptq : QuantAlgorithm::kSearch;
  if (a == QuantAlgorithm::kGptq && !have_cov) return QuantAlgorithm::kSearch;
  return a;
}

// Sequential GPTQ's stage of a tensor within its pack, in the order the model reads them: -1 for
// vectors and the embedding (quantized first, with the statistics of the source model).
int StageOf(const PackTensor& t) {
  if (t.shape.size() != 2 || t.name == "token_embd") return -1;
  static const char* const kStages[][3] = {{"attn_q", "attn_k", "attn_v"}, {"attn_output", "", ""},
                                           {"ffn_up", "ffn_gate", ""},      {"ffn_down", "", ""},
                                           {"output", "", ""}};
  for (int s = 0; s < 5; ++s)
    for (const char* n : kStages[s])
      if (*n && t.name == n) return s;
  return 5;
}
}  // namespace

std::string RecipeName(const QuantizeOptions& o) {
  if (!o.recipe.empty()) return o.recipe;
  return SchemeName(LegacyScheme(o));
}

absl::StatusOr<TensorData> QuantizeTensor(const PackTensor& src, const QuantizeOptions& o) {
  return QuantizeTensor(src, LegacyScheme(o), o.algorithm);
}

absl::StatusOr<TensorData> QuantizeTensor(const PackTensor& src, const TensorScheme& scheme, QuantAlgorithm alg,
                                          const float* act2, const double* cov, const double* cross) {
  TensorData d;
  d.name = src.name;
  d.shape = src.shape;
  const size_t rows = src.rows(), k = src.logical_cols();
  const QType type = src.shape.size() == 2 ? scheme.type : QType::kF32;
  d.qtype = type;
  if (!IsQuantized(type)) {
    d.cols = k;
    d.data.resize(DataPlaneBytes(type, rows, k));
    ThreadPool::Global().ParallelFor(rows, 16, [&](size_t r0, size_t r1) {
      std::vector<float> row(k);
      for (size_t r = r0; r < r1; ++r) {
        src.RowToF32(r, row.data());
        if (type == QType::kF32) {
          std::memcpy(d.data.data() + r * k * 4, row.data(), k * 4);
        } else if (type == QType::kBF16) {
          kernels::F32ToBF16(row.data(), k, reinterpret_cast<uint16_t*>(d.data.data()) + r * k);
        } else {
          uint16_t* out = reinterpret_cast<uint16_t*>(d.data.data()) + r * k;
          for (size_t i = 0; i < k; ++i) out[i] = F32ToF16(row[i]);
        }
      }
    });
    return d;
  }
  const size_t g = scheme.group;
  if (g == 0 || g % 32 != 0 || (type != QType::kI8 && g > 128))
    return absl::InvalidArgumentError(absl::StrCat("unsupported group size ", g, " for ", QTypeName(type)));
  const QuantAlgorithm eff = Effective(alg, scheme, cov != nullptr);
  quant::GptqFactor factor;
  if (eff == QuantAlgorithm::kGptq) {
    TESSERA_ASSIGN_OR_RETURN(factor, quant::GptqPrepare(cov, k));
  }
  std::vector<double> target_map;  // sequential calibration: GPTQ's row is w + w A (quant::GptqTargetMap)
  if (eff == QuantAlgorithm::kGptq && cross != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(target_map, quant::GptqTargetMap(cov, cross, k));
  }
  const size_t kp = (k + g - 1) / g * g;
  d.group = static_cast<uint32_t>(g);
  d.cols = kp;
  d.data.resize(DataPlaneBytes(type, rows, kp));
  d.scales.resize(ScalePlaneBytes(type, rows, kp, g));
  if (type == QType::kI4Asym) d.mins.resize(d.scales.size());
  const size_t ng = kp / g;
  ThreadPool::Global().ParallelFor(rows, 16, [&](size_t r0, size_t r1) {
    std::vector<float> row(kp, 0.0f), w(kp, 0.0f), a2;
    const float* act = nullptr;
    if (act2 != nullptr) {
      a2.assign(kp, 0.0f);
      std::copy(act2, act2 + k, a2.begin());
      act = a2.data();
    }
    for (size_t r = r0; r < r1; ++r) {
      src.RowToF32(r, row.data());
      uint16_t* sc = reinterpret_cast<uint16_t*>(d.scales.data()) + r * ng;
      uint8_t* codes4 = d.data.data() + r * kp / 2;
      uint8_t* codes6 = d.data.data() + r * kp / 4 * 3;
      if (eff == QuantAlgorithm::kSearch) quant::SearchWeights(row.data(), kp, k, act, w.data());
      if (eff == QuantAlgorithm::kGptq) {
        if (!target_map.empty()) quant::ApplyTargetMap(target_map.data(), k, row.data());
        if (type == QType::kI6Sym) {
          quant::QuantizeRowI6SymGptq_ref(row.data(), k, kp, g, factor, act2, codes6, sc);
        } else if (type == QType::kI4Nl) {
          quant::QuantizeRowGridGptq_ref(row.data(), k, kp, g, factor, act2, quant::Nl4Grid(), codes4, sc);
        } else if (type == QType::kI4Sym) {
          quant::QuantizeRowI4SymGptq_ref(row.data(), k, kp, g, factor, act2, codes4, sc);
        } else {
          quant::QuantizeRowI4AsymGptq_ref(row.data(), k, kp, g, factor, act2, codes4, sc,
                                           reinterpret_cast<uint16_t*>(d.mins.data()) + r * ng);
        }
        continue;
      }
      switch (type) {
        case QType::kI8:
          kernels::QuantizeRowI8(row.data(), kp, g, reinterpret_cast<int8_t*>(d.data.data()) + r * kp, sc);
          break;
        case QType::kI6Sym:
          if (eff == QuantAlgorithm::kSearch)
            kernels::QuantizeRowI6SymSearch(row.data(), w.data(), kp, g, codes6, sc);
          else
            kernels::QuantizeRowI6Sym(row.data(), kp, g, codes6, sc);
          break;
        case QType::kI4Nl:  // scalar reference code for every algorithm (quantizer/nl4.h)
          if (eff == QuantAlgorithm::kSearch)
            quant::QuantizeRowGridSearch_ref(row.data(), w.data(), kp, g, quant::Nl4Grid(), codes4, sc);
          else
            quant::QuantizeRowGridRtn_ref(row.data(), kp, g, quant::Nl4Grid(), codes4, sc);
          break;
        case QType::kI4Sym:
          if (eff == QuantAlgorithm::kSearch)
            kernels::QuantizeRowI4SymSearch(row.data(), w.data(), kp, g, codes4, sc);
          else
            kernels::QuantizeRowI4Sym(row.data(), kp, g, codes4, sc);
          break;
        default: {
          uint16_t* mn = reinterpret_cast<uint16_t*>(d.mins.data()) + r * ng;
          if (eff == QuantAlgorithm::kSearch)
            quant::QuantizeRowI4AsymSearch_ref(row.data(), w.data(), kp, g, codes4, sc, mn);
          else
            kernels::QuantizeRowI4Asym(row.data(), kp, g, codes4, sc, mn);
          break;
        }
      }
    }
  });
  return d;
}

absl::Status QuantizePackage(const std::string& src_dir, const std::string& out_dir, const QuantizeOptions& o) {
  return QuantizePackage(src_dir, out_dir, o, nullptr);
}

absl::Status QuantizePackage(const std::string& src_dir, const std::string& out_dir, const QuantizeOptions& o,
                             QuantizeCache* cache) {
  if (cache != nullptr && (o.sequential || o.awq || o.rotate)) cache = nullptr;  // see QuantizeCache
  if (cache != nullptr) {
    const std::string sig = absl::StrCat(fs::absolute(src_dir).lexically_normal().string(), "\n", o.calib_text, "\n",
                                         o.calib_tokens, " ", o.calib_ctx, " ", QuantAlgorithmName(o.algorithm));
    if (cache->signature.empty()) cache->signature = sig;
    if (cache->signature != sig)
      return absl::InternalError(absl::StrCat("quantize cache filled for ", cache->signature, ", used for ", sig));
  }
  if (o.sequential && o.awq) return absl::InvalidArgumentError("sequential GPTQ cannot be combined with --awq");
  // The sequential target compares the quantized model's inputs with the source model's: both would
  // have to be in the rotated basis.
  if (o.sequential && o.rotate) return absl::InvalidArgumentError("--sequential cannot be combined with --rotate");
  if (o.rotate) {
    // Rotate into an f32 package beside the output, quantize that (calibrating on the rotated model),
    // then delete it. Arguments that fail without reading the model are checked first.
    for (const std::string& s : o.overrides) TESSERA_RETURN_IF_ERROR(ParseOverride(s).status());
    if (!o.recipe.empty()) TESSERA_RETURN_IF_ERROR(FindRecipe(o.recipe).status());
    std::error_code ec;
    if (!o.force && fs::exists(out_dir, ec))
      return absl::AlreadyExistsError(absl::StrCat(out_dir, ": already exists (use --force to replace it)"));
    fs::path out_abs = fs::absolute(out_dir).lexically_normal();
    if (out_abs.filename().empty()) out_abs = out_abs.parent_path();
    const std::string tmp =
        (out_abs.parent_path() / absl::StrCat(".", out_abs.filename().string(), ".rotated-", ::getpid())).string();
    absl::Status st = quant::RotatePackage(src_dir, tmp, o.rotate_seed, o.rotate_heads, /*force=*/true);
    if (st.ok()) {
      QuantizeOptions o2 = o;
      o2.rotate = false;
      o2.rotated_from = src_dir;
      st = QuantizePackage(tmp, out_dir, o2);
    }
    fs::remove_all(tmp, ec);
    return st;
  }
  // Resolve the recipe and the overrides before touching anything.
  TensorScheme default_scheme = LegacyScheme(o);
  std::vector<QuantRule> overrides;
  for (const std::string& s : o.overrides) {
    TESSERA_ASSIGN_OR_RETURN(QuantRule r, ParseOverride(s));
    overrides.push_back(std::move(r));
  }
  TESSERA_ASSIGN_OR_RETURN(auto pkg, Package::Open(src_dir));
  const auto& cfg = pkg->config();
  std::vector<QuantRule> rules, upgrades;
  double max_bpw = 0;
  if (!o.recipe.empty()) {
    TESSERA_ASSIGN_OR_RETURN(Recipe recipe, FindRecipe(o.recipe));
    default_scheme = recipe.default_scheme;
    rules = recipe.rules;
    upgrades = recipe.upgrades;
    max_bpw = recipe.max_bits_per_weight;
  }
  if (IsQuantized(default_scheme.type)) {
    const size_t g = default_scheme.group;
    if (g == 0 || g % 32 != 0 || (default_scheme.type != QType::kI8 && g > 128))
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported group size ", g, " for ", QTypeName(default_scheme.type)));
  }
  // Every matrix's scheme, decided up front (budgeted recipes need the whole model's shapes).
  std::vector<MatrixShape> shapes;
  auto add_shapes = [&](const TensorPack& pack, const std::string& file) {
    const std::string stem = fs::path(file).stem().string();
    for (const auto& t : pack.tensors())
      if (t.shape.size() == 2) shapes.push_back({stem + "/" + t.name, t.shape[0], t.shape[1]});
  };
  add_shapes(pkg->embedding(), "embedding.bin");
  for (int64_t i = 0; i < cfg.layers; ++i) add_shapes(pkg->block(i), BlockFileName(i));
  add_shapes(pkg->lm(), "lm.bin");
  if ((o.max_bytes > 0 || o.max_bpw > 0) && upgrades.empty())
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-bytes / --max-bpw need a budgeted recipe (int4-mixed, int4nl-mixed); ",
        o.recipe.empty() ? "--type" : absl::StrCat("--recipe ", o.recipe), " has no upgrades to budget"));
  if (o.max_bpw > 0) max_bpw = o.max_bpw;
  if (o.max_bytes > 0 && o.max_bpw <= 0) max_bpw = 0;  // a byte budget replaces the recipe's bits/weight

  // The manifest written at the end (see below), shared with the byte budget's estimate: with
  // `draft`, every value not known before quantizing is a placeholder at least as long as it.
  const std::string tokenizer_text = pkg->tokenizer().Serialize();
  struct PackFile {
    const TensorPack* pack;
    std::string file, role;
    int64_t layer;
  };
  std::vector<PackFile> pack_files{{&pkg->embedding(), "embedding.bin", "embedding", -1}};
  for (int64_t i = 0; i < cfg.layers; ++i) pack_files.push_back({&pkg->block(i), BlockFileName(i), "block", i});
  pack_files.push_back({&pkg->lm(), "lm.bin", "lm", -1});
  auto quant_json = [&](const QuantPlan& plan, const std::string& alg, const nlohmann::ordered_json& calib,
                        const nlohmann::ordered_json& awq, const nlohmann::ordered_json& bpw,
                        const nlohmann::ordered_json& mbytes, uint64_t mweights,
                        const std::map<std::string, size_t>& by_scheme, const nlohmann::ordered_json& tensors) {
    nlohmann::ordered_json q{{"recipe", RecipeName(o)}, {"type", QTypeName(default_scheme.type)}};
    if (IsQuantized(default_scheme.type)) {
      q["group"] = default_scheme.group;
      q["sym"] = default_scheme.type != QType::kI4Asym;
      q["scale_dtype"] = "f16";
    }
    q["algorithm"] = alg;
    if (!overrides.empty()) {
      nlohmann::ordered_json ov = nlohmann::ordered_json::array();
      for (const auto& r : overrides) ov.push_back(r.text);
      q["overrides"] = ov;
    }
    if (max_bpw > 0 || o.max_bytes > 0) {
      if (max_bpw > 0) q["max_bits_per_weight"] = max_bpw;
      if (o.max_bytes > 0) q["max_bytes"] = o.max_bytes;
      q["upgrades_applied"] = plan.upgrades_applied;
      q["upgrades_skipped"] = plan.upgrades_skipped.size();  // how many steps did not fit (the list is long)
    }
    if (!calib.is_null()) q["calibration"] = calib;
    if (!awq.is_null()) q["awq"] = awq;
    q["bits_per_weight"] = bpw;
    q["matrix_bytes"] = mbytes;
    q["matrix_weights"] = mweights;
    nlohmann::ordered_json mix = nlohmann::ordered_json::object();
    for (const auto& [name, n] : by_scheme) mix[name] = n;
    q["weights_by_scheme"] = mix;
    q["tensors"] = tensors;
    q["base"] = {{"path", fs::absolute(src_dir).string()},
                 {"recipe", pkg->manifest().contains("quant") ? pkg->manifest()["quant"].value("recipe", "") : ""}};
    if (!o.rotated_from.empty()) q["base"] = pkg->manifest()["quant"]["base"];  // the unrotated source
    nlohmann::ordered_json m;
    for (auto& [k, v] : pkg->manifest().items()) {
      if (k == "format" || k == "format_version" || k == "files") continue;
      m[k] = v;
    }
    m["producer"] = {{"tool", "tessera"}, {"version", kTesseraVersion}, {"cmdline", o.cmdline}};
    m["quant"] = q;
    return m;
  };
  // The whole package's bytes for a plan: the packs exactly, the tokenizer exactly, the manifest
  // as an upper bound (placeholders for hashes, sizes, floats and the calibration's counts).
  auto package_bytes = [&](const QuantPlan& plan) -> uint64_t {
    uint64_t total = tokenizer_text.size();
    const std::string num(20, '9'), dbl(24, '9'), hash(16, 'f');
    nlohmann::ordered_json files = nlohmann::ordered_json::array();
    for (const PackFile& pf : pack_files) {
      std::vector<TensorPackEntry> entries;
      const std::string stem = fs::path(pf.file).stem().string();
      for (const auto& t : pf.pack->tensors()) {
        TensorPackEntry e{t.name.size(), t.shape.size(), {}};
        const size_t rows = t.rows(), k = t.logical_cols();
        const TensorScheme s = t.shape.size() == 2 ? plan.scheme.at(stem + "/" + t.name) : TensorScheme{};
        if (!IsQuantized(s.type)) {
          e.planes.push_back(DataPlaneBytes(s.type, rows, k));
        } else {
          const size_t kp = (k + s.group - 1) / s.group * s.group;
          e.planes.push_back(DataPlaneBytes(s.type, rows, kp));
          e.planes.push_back(ScalePlaneBytes(s.type, rows, kp, s.group));
          if (s.type == QType::kI4Asym) e.planes.push_back(e.planes.back());
        }
        entries.push_back(std::move(e));
      }
      total += TensorPackFileBytes(entries);
      nlohmann::ordered_json f{{"path", pf.file}, {"role", pf.role}};
      if (pf.layer >= 0) f["layer"] = pf.layer;
      f["bytes"] = num;
      f["xxh3_64"] = hash;
      files.push_back(f);
    }
    files.push_back({{"path", "tokenizer.txt"}, {"role", "tokenizer"}, {"bytes", num}, {"xxh3_64", hash}});
    nlohmann::ordered_json calib;
    if (!o.calib_text.empty())
      calib = {{"file", fs::path(o.calib_text).filename().string()},
               {"path", fs::absolute(o.calib_text).string()},
               {"bytes", num}, {"xxh3_64", hash}, {"tokens", num}, {"ctx", num}, {"chunks", num},
               {"statistic", "mean(x^2) per input channel + E[x x^T] (GPTQ)"}};
    if (!o.calib_text.empty() && o.sequential) {
      calib["statistic"] = std::string(200, 'x');
      calib["sequential"] = true;
    }
    nlohmann::ordered_json tensors = nlohmann::ordered_json::object();
    std::map<std::string, size_t> by_scheme;
    for (const MatrixShape& m : shapes) {
      const TensorScheme& s = plan.scheme.at(m.key);
      const bool searchable =
          s.type == QType::kI4Sym || s.type == QType::kI4Asym || s.type == QType::kI6Sym || s.type == QType::kI4Nl;
      nlohmann::ordered_json e{{"scheme", SchemeName(s)}, {"algorithm", "search"}};
      if (!plan.reason.at(m.key).empty()) e["rule"] = plan.reason.at(m.key);
      if (searchable) e["weights"] = "covariance";
      if (o.awq) e["awq_alpha"] = dbl;
      tensors[m.key] = e;
      by_scheme[SchemeName(s)] += static_cast<size_t>(m.rows * m.cols);
    }
    nlohmann::ordered_json m = quant_json(plan, "gptq+rtn+search", calib, o.awq ? nlohmann::ordered_json(false) : nlohmann::ordered_json(),
                                          dbl, num, plan.weights, by_scheme, tensors);
    nlohmann::ordered_json full;  // as PackageWriter::Commit writes it
    full["format"] = "tessera-package";
    full["format_version"] = {{"major", kPackageFormatMajor}, {"minor", kPackageFormatMinor}};
    for (auto& [k, v] : m.items()) full[k] = v;
    full["files"] = files;
    return total + full.dump(2).size() + 1;
  };
  QuantBudget budget;
  budget.max_bits_per_weight = max_bpw;
  budget.max_bytes = o.max_bytes;
  budget.package_bytes = package_bytes;
  budget.user_bytes = o.max_bytes > 0;
  budget.user_bpw = o.max_bpw > 0;
  TESSERA_ASSIGN_OR_RETURN(const QuantPlan plan, PlanQuantizationWithBudget(default_scheme, rules, upgrades, budget,
                                                                             overrides, shapes, cfg.layers));

  // Calibration: activation statistics of the unquantized source model (once per cache).
  ActivationStats own_stats;
  ActivationStats& stats = cache != nullptr ? cache->stats : own_stats;
  nlohmann::ordered_json own_calib_info;
  nlohmann::ordered_json& calib_info = cache != nullptr ? cache->calib_info : own_calib_info;
  bool sequential = false;
  if (!o.calib_text.empty() && !(cache != nullptr && cache->have_stats)) {
    // GPTQ keeps E[x x^T] (K x K doubles, three copies at most: accumulator, result, aliases) for
    // every matrix input at once; by default fall back to search + imatrix when that is too big.
    double cov_bytes = 0;
    for (const MatrixShape& m : shapes) cov_bytes += 3.0 * 8.0 * static_cast<double>(m.cols) * static_cast<double>(m.cols);
    const bool cov_fits = cov_bytes <= 4.0 * (1ull << 30);
    const bool want_cov = o.algorithm == QuantAlgorithm::kGptq || (o.algorithm == QuantAlgorithm::kDefault && cov_fits);
    sequential = o.sequential && want_cov;
    // Sequential: every matrix input's covariance is collected again per stage; from the source
    // model only a tied output's (the embedding's, quantized first), and mean(x^2) for every input
    // (which matrices have statistics).
    const std::set<std::string> source_cov = {cfg.tie_embeddings ? "lm/output" : ""};
    const bool fewer_cov = sequential && !o.sequential_reference;
    TESSERA_ASSIGN_OR_RETURN(stats, CollectActivationStats(src_dir, o, want_cov, &calib_info, "", nullptr,
                                                           fewer_cov ? &source_cov : nullptr));
    if (sequential) {
      calib_info["statistic"] = "per stage, on the model with the earlier stages quantized (x~): mean(x~^2) per input "
                                "channel + E[x~ x~^T] + E[x x~^T] with the source model's inputs x (GPTQ, sequential)";
      calib_info["sequential"] = true;
    }
    if (cache != nullptr) cache->have_stats = true;
  }

  // Sequential GPTQ: every pack's current tensors (the source as f32, then each tensor as it is
  // quantized). A scratch package next to out_dir holds them once the embedding is quantized (the
  // partly quantized model, whose blocks the SequentialCalibration then replaces as they change).
  std::map<std::string, std::vector<TensorData>> state;
  std::string scratch_dir;
  if (sequential) {
    fs::path p(out_dir);
    if (!p.has_filename()) p = p.parent_path();
    scratch_dir = p.string() + ".sequential-tmp";
    for (const PackFile& pf : pack_files) {
      std::vector<TensorData>& v = state[pf.file];
      for (const auto& t : pf.pack->tensors()) {
        TESSERA_ASSIGN_OR_RETURN(TensorData d, QuantizeTensor(t, TensorScheme{QType::kF32, 0}, QuantAlgorithm::kRtn));
        v.push_back(std::move(d));
      }
    }
  }
  struct RemoveDir {
    const std::string& dir;
    ~RemoveDir() {
      std::error_code ec;
      if (!dir.empty()) fs::remove_all(dir, ec);
    }
  } remove_scratch{scratch_dir};
  auto write_scratch = [&]() -> absl::Status {
    TESSERA_ASSIGN_OR_RETURN(auto sw, PackageWriter::Create(scratch_dir, true));
    for (const PackFile& pf : pack_files) TESSERA_RETURN_IF_ERROR(sw->WritePack(pf.file, pf.role, pf.layer, state[pf.file]));
    TESSERA_RETURN_IF_ERROR(sw->WriteTokenizer(pkg->tokenizer()));
    nlohmann::ordered_json m;
    for (auto& [k, v] : pkg->manifest().items())
      if (k != "format" && k != "format_version" && k != "files") m[k] = v;
    return sw->Commit(std::move(m));
  };
  std::unique_ptr<SequentialCalibration> seq_calib;
  // The statistics of one stage (matrices `names` of pack `stem`, in its current state).
  auto collect_stage = [&](const std::string& stem, const std::string& file, int64_t layer,
                           const std::vector<std::string>& names) -> absl::Status {
    std::set<std::string> keys;
    for (const std::string& n : names) keys.insert(stem + "/" + n);
    ActivationStats st;
    if (o.sequential_reference) {
      TESSERA_RETURN_IF_ERROR(write_scratch());
      nlohmann::ordered_json info;
      TESSERA_ASSIGN_OR_RETURN(st, CollectActivationStats(src_dir, o, true, &info, scratch_dir, &keys));
    } else {
      if (seq_calib == nullptr) return absl::InternalError(absl::StrCat("sequential calibration of ", stem, " before the blocks"));
      if (layer >= 0) TESSERA_RETURN_IF_ERROR(seq_calib->SetBlock(layer, state[file]));
      TESSERA_ASSIGN_OR_RETURN(st, seq_calib->CollectStage(keys));
    }
    for (auto& [k, v] : st.mean_sq) stats.mean_sq[k] = std::move(v);
    for (auto& [k, v] : st.cov) stats.cov[k] = std::move(v);
    for (auto& [k, v] : st.cross) stats.cross[k] = std::move(v);
    return absl::OkStatus();
  };

  TESSERA_ASSIGN_OR_RETURN(auto writer, PackageWriter::Create(out_dir, o.force));
  Progress progress("quantize", static_cast<size_t>(cfg.layers + 2));
  nlohmann::ordered_json per_tensor = nlohmann::ordered_json::object();
  std::map<std::string, size_t> scheme_weights;  // scheme name -> number of weights
  uint64_t matrix_bytes = 0, matrix_weights = 0;
  std::set<std::string> algorithms;
  auto do_pack = [&](const TensorPack& pack, const std::string& file, const std::string& role,
                     int64_t layer) -> absl::Status {
    const std::string stem = fs::path(file).stem().string();
    std::vector<TensorData> out;
    // Activation statistics for a matrix's input (token_embd doubles as the output when tied).
    auto find_stats = [&](const PackTensor& t, const float** act2, const double** cov, const double** cross) {
      const std::string key = stem + "/" + t.name;
      std::string akey = key;
      if (key == "embedding/token_embd" && cfg.tie_embeddings) akey = "lm/output";
      *act2 = nullptr;
      *cov = nullptr;
      auto it = stats.mean_sq.find(akey);
      if (it != stats.mean_sq.end() && it->second.size() == t.logical_cols()) *act2 = it->second.data();
      auto ic = stats.cov.find(akey);
      if (ic != stats.cov.end() && ic->second.size() == t.logical_cols() * t.logical_cols()) *cov = ic->second.data();
      // A tied token_embd is also the lookup table: its output-side target is not changed.
      *cross = nullptr;
      auto ix = stats.cross.find(akey);
      if (*cov != nullptr && key == akey && ix != stats.cross.end() && ix->second.size() == t.logical_cols() * t.logical_cols())
        *cross = ix->second.data();
    };
    // AWQ-style channel scaling folded into the norms (quantizer/awq.h): name -> replacement
    // f32 values (norm vectors divided by s, matrices times diag(s)) and the matrices' scaled stats.
    std::map<std::string, std::vector<float>> replaced, act2_scaled;
    std::map<std::string, std::vector<double>> cov_scaled;
    std::map<std::string, double> awq_alpha;
    if (o.awq && !stats.mean_sq.empty() && cfg.norm == "rms") {
      struct Group {
        const char* norm;
        std::vector<const char*> mats;
      };
      const std::vector<Group> groups{{"attn_norm", {"attn_q", "attn_k", "attn_v"}},
                                      {"ffn_norm", {"ffn_gate", "ffn_up"}},
                                      {"output_norm", {"output"}}};
      for (const Group& gr : groups) {
        const PackTensor* norm = pack.Find(gr.norm);
        if (norm == nullptr || norm->shape.size() != 1) continue;
        if (std::string(gr.norm) == "output_norm" && cfg.tie_embeddings) continue;  // would rescale the embedding too
        const size_t k = norm->logical_cols();
        std::vector<const PackTensor*> mats;
        bool ok = true, any_i4 = false;
        for (const char* m : gr.mats) {
          const PackTensor* t = pack.Find(m);
          if (t == nullptr || t->shape.size() != 2 || t->logical_cols() != k) {
            ok = false;
            break;
          }
          const TensorScheme& sc = plan.scheme.at(stem + "/" + m);
          ok = ok && IsQuantized(sc.type);
          any_i4 = any_i4 || sc.type == QType::kI4Sym || sc.type == QType::kI4Asym || sc.type == QType::kI4Nl;
          mats.push_back(t);
        }
        if (!ok || !any_i4) continue;
        const float* act2 = nullptr;
        const double* cov = nullptr;
        const double* cross = nullptr;
        find_stats(*mats[0], &act2, &cov, &cross);
        if (act2 == nullptr) continue;
        std::vector<std::vector<float>> w;
        std::vector<quant::AwqMatrix> am;
        for (size_t i = 0; i < mats.size(); ++i) w.push_back(mats[i]->ToF32());
        for (size_t i = 0; i < mats.size(); ++i)
          am.push_back({w[i].data(), mats[i]->rows(), plan.scheme.at(stem + "/" + gr.mats[i])});
        const quant::AwqChoice ch = quant::ChooseAwqScale(am, k, act2, cov);
        for (const char* m : gr.mats) awq_alpha[m] = ch.alpha;
        if (ch.alpha == 0.0) continue;
        const std::vector<float>& sv = ch.scale;
        std::vector<float> nv(k);
        norm->RowToF32(0, nv.data());
        for (size_t j = 0; j < k; ++j) nv[j] /= sv[j];
        replaced[gr.norm] = std::move(nv);
        const std::string bias = std::string(gr.norm) + ".bias";
        if (const PackTensor* b = pack.Find(bias); b != nullptr && b->shape.size() == 1 && b->logical_cols() == k) {
          std::vector<float> bv(k);
          b->RowToF32(0, bv.data());
          for (size_t j = 0; j < k; ++j) bv[j] /= sv[j];
          replaced[bias] = std::move(bv);
        }
        for (size_t i = 0; i < mats.size(); ++i) {
          std::vector<float>& wi = w[i];
          for (size_t r = 0; r < mats[i]->rows(); ++r)
            for (size_t j = 0; j < k; ++j) wi[r * k + j] *= sv[j];
          replaced[gr.mats[i]] = std::move(wi);
          std::vector<float> a(k);
          for (size_t j = 0; j < k; ++j) a[j] = act2[j] / (sv[j] * sv[j]);
          act2_scaled[gr.mats[i]] = std::move(a);
          if (cov != nullptr) {
            std::vector<double> c(k * k);
            for (size_t r = 0; r < k; ++r)
              for (size_t j = 0; j < k; ++j)
                c[r * k + j] = cov[r * k + j] / (static_cast<double>(sv[r]) * static_cast<double>(sv[j]));
            cov_scaled[gr.mats[i]] = std::move(c);
          }
        }
      }
    }
    // Sequential GPTQ quantizes the matrices stage by stage (StageOf) and calibrates each stage
    // on the scratch package of the current state; otherwise the pack's order.
    const auto& tensors = pack.tensors();
    std::vector<size_t> order(tensors.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    if (sequential)
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return StageOf(tensors[a]) < StageOf(tensors[b]); });
    out.resize(tensors.size());
    int collected_stage = -1;
    for (const size_t idx : order) {
      const PackTensor& t0 = tensors[idx];
      if (sequential && StageOf(t0) >= 0 && StageOf(t0) != collected_stage && stats.mean_sq.count(stem + "/" + t0.name)) {
        collected_stage = StageOf(t0);
        std::vector<std::string> names;
        for (const auto& u : tensors)
          if (StageOf(u) == collected_stage) names.push_back(u.name);
        TESSERA_RETURN_IF_ERROR(collect_stage(stem, file, role == "block" ? layer : -1, names));
      }
      // A tensor replaced by AWQ is read from an f32 view of its new values.
      PackTensor view;
      const PackTensor* tp = &t0;
      auto rep = replaced.find(t0.name);
      if (rep != replaced.end()) {
        view.name = t0.name;
        view.qtype = QType::kF32;
        view.shape = t0.shape;
        view.cols = t0.logical_cols();
        view.data = reinterpret_cast<const uint8_t*>(rep->second.data());
        view.data_bytes = rep->second.size() * 4;
        tp = &view;
      }
      const PackTensor& t = *tp;
      const std::string key = stem + "/" + t.name;
      const bool matrix = t.shape.size() == 2;
      TensorScheme s{QType::kF32, 0};
      if (matrix) s = plan.scheme.at(key);
      const float* act2 = nullptr;
      const double* cov = nullptr;
      const double* cross = nullptr;
      find_stats(t0, &act2, &cov, &cross);
      if (auto a = act2_scaled.find(t.name); a != act2_scaled.end()) act2 = a->second.data();
      if (auto c = cov_scaled.find(t.name); c != cov_scaled.end()) cov = c->second.data();
      TensorData q;
      if (cache != nullptr) {
        const std::string ck = absl::StrCat(key, " ", SchemeName(s));
        auto hit = cache->tensors.find(ck);
        if (hit == cache->tensors.end()) {
          TESSERA_ASSIGN_OR_RETURN(TensorData fresh, QuantizeTensor(t, s, o.algorithm, act2, cov, cross));
          hit = cache->tensors.emplace(ck, std::move(fresh)).first;
          ++cache->misses;
        } else {
          ++cache->hits;
        }
        q = hit->second;
      } else {
        TESSERA_ASSIGN_OR_RETURN(q, QuantizeTensor(t, s, o.algorithm, act2, cov, cross));
      }
      if (matrix) {
        const QuantAlgorithm eff = Effective(o.algorithm, s, cov != nullptr);
        const std::string alg = eff == QuantAlgorithm::kDefault ? "none" : QuantAlgorithmName(eff);
        nlohmann::ordered_json e{{"scheme", SchemeName(s)}, {"algorithm", alg}};
        if (!plan.reason.at(key).empty()) e["rule"] = plan.reason.at(key);
        if (eff == QuantAlgorithm::kSearch) e["weights"] = act2 ? "imatrix" : "unit";
        if (eff == QuantAlgorithm::kGptq) e["weights"] = "covariance";
        if (auto a = awq_alpha.find(t.name); a != awq_alpha.end()) e["awq_alpha"] = a->second;
        per_tensor[key] = e;
        algorithms.insert(alg);
        const uint64_t bytes = q.data.size() + q.scales.size() + q.mins.size();
        matrix_bytes += bytes;
        matrix_weights += t.numel();
        scheme_weights[SchemeName(s)] += t.numel();
      }
      if (sequential) state[file][idx] = q;
      out[idx] = std::move(q);
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack(file, role, layer, out));
    // Sequential: the block's final tensors, for the streams to move through it.
    if (seq_calib != nullptr && role == "block") TESSERA_RETURN_IF_ERROR(seq_calib->SetBlock(layer, out));
    pack.ReleasePages();  // bounded memory: the source block leaves the resident set
    progress.Add();
    return absl::OkStatus();
  };
  TESSERA_RETURN_IF_ERROR(do_pack(pkg->embedding(), "embedding.bin", "embedding", -1));
  if (sequential && !o.sequential_reference) {
    TESSERA_RETURN_IF_ERROR(write_scratch());
    TESSERA_ASSIGN_OR_RETURN(seq_calib, SequentialCalibration::Create(src_dir, scratch_dir, o));
  }
  for (int64_t i = 0; i < cfg.layers; ++i)
    TESSERA_RETURN_IF_ERROR(do_pack(pkg->block(i), BlockFileName(i), "block", i));
  TESSERA_RETURN_IF_ERROR(do_pack(pkg->lm(), "lm.bin", "lm", -1));
  TESSERA_RETURN_IF_ERROR(writer->WriteTokenizer(pkg->tokenizer()));
  progress.Finish();
  // "rtn", "search", "none", or e.g. "rtn+search" for mixed recipes.
  std::string alg;
  for (const std::string& a : algorithms)
    if (a != "none") absl::StrAppend(&alg, alg.empty() ? "" : "+", a);
  const double bpw = matrix_weights ? 8.0 * static_cast<double>(matrix_bytes) / static_cast<double>(matrix_weights) : 0.0;
  nlohmann::ordered_json m =
      quant_json(plan, alg.empty() ? "none" : alg, calib_info,
                 o.awq ? nlohmann::ordered_json(!stats.mean_sq.empty()) : nlohmann::ordered_json(), bpw, matrix_bytes,
                 matrix_weights, scheme_weights, per_tensor);
  TESSERA_RETURN_IF_ERROR(writer->Commit(std::move(m)));
  if (o.max_bytes > 0) {
    uint64_t bytes = 0;
    for (const auto& f : fs::directory_iterator(out_dir))
      if (f.is_regular_file()) bytes += f.file_size();
    if (bytes > o.max_bytes)  // the plan's estimate is an upper bound: this is a bug
      return absl::InternalError(absl::StrCat(out_dir, ": ", bytes, " bytes exceed --max-bytes ", o.max_bytes,
                                              " (planned at most ", plan.package_bytes, ")"));
  }
  return absl::OkStatus();

}

}  // namespace tessera
