#include "app/cmd_verify.h"

#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/status.h"
#include "formats/package.h"
#include "nlohmann/json.hpp"
#include "runtime-lite/model.h"
#include "verify/distortion.h"
#include "verify/perplexity.h"
#include "verify/report.h"

namespace tessera::app {
namespace {
using json = nlohmann::ordered_json;

uint64_t PeakRss() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

// JSON numbers cannot be infinite: +inf SNR (identical tensors) is written as null.
json Finite(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

void PutStats(const DistortionStats& s, json* e) {
  (*e)["rmse"] = s.rmse;
  (*e)["rel_rmse"] = Finite(s.rel_rmse);
  (*e)["max_abs"] = s.max_abs;
  (*e)["snr_db"] = Finite(s.snr_db);
  (*e)["cosine"] = s.cosine;
}

absl::StatusOr<json> LoadJson(const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  try {
    json j = json::parse(text);
    if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON object from `tessera verify --json`"));
    return j;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
}
}  // namespace

CLI::App* AddVerifyCommand(CLI::App& app, VerifyArgs* a) {
  auto* vf = app.add_subcommand("verify", "Perplexity (llama.cpp method) and, with --base, KLD / top-1 / weight distortion vs a base");
  vf->add_option("pkg", a->pkg, "Package directory")->required();
  vf->add_option("--text", a->text, "UTF-8 text file")->required();
  vf->add_option("--ctx", a->ctx, "Chunk size in tokens")->capture_default_str();
  vf->add_option("--chunks", a->chunks, "Evaluate at most this many chunks (0 = all)");
  vf->add_option("--base", a->base, "Base package (e.g. the f16/f32 one) for KLD, top-1, PPL ratio and per-tensor distortion");
  vf->add_flag("--json", a->json, "Print one JSON object (save it to compare runs in a later --report)");
  vf->add_option("--report", a->report, "Write a self-contained HTML report (inline SVG charts) to this file");
  vf->add_option("--compare", a->compare, "Earlier `verify --json` results to include in the report (size-vs-KLD chart, tables)");
  vf->add_flag("--no-tensors", a->no_tensors, "Skip the per-tensor distortion statistics");
  vf->add_option("--memory", a->memory, "full | mmap | stream (applies to PKG)")->capture_default_str();
  vf->footer(
      "Examples:\n"
      "  tessera verify out/s260k-q4 --text ../shared/fixtures/text/tinystories_valid_sample.txt --ctx 128 --base out/s260k-f32\n"
      "  tessera verify out/kjv-q8 --text kjv_eval.txt --ctx 256 --base out/kjv-f16 --json > q8.json\n"
      "  tessera verify out/kjv-q4 --text kjv_eval.txt --ctx 256 --base out/kjv-f16 --report q4.html --compare q8.json\n"
      "Uncertainties are standard errors of the mean over the scored tokens (as llama.cpp prints them).");
  return vf;
}

absl::Status RunVerify(const VerifyArgs& a) {
  // Earlier results first, so a bad --compare file fails before the (slow) evaluation.
  std::vector<json> earlier;
  for (const std::string& p : a.compare) {
    TESSERA_ASSIGN_OR_RETURN(json j, LoadJson(p));
    earlier.push_back(std::move(j));
  }
  if (!a.compare.empty() && a.report.empty())
    return absl::InvalidArgumentError("--compare needs --report OUT.html");
  Package::Options po;
  if (a.memory == "mmap") po.memory = Package::Memory::kMmap;
  else if (a.memory == "full") po.memory = Package::Memory::kFull;
  else if (a.memory == "stream") po.memory = Package::Memory::kStream;
  else return absl::InvalidArgumentError(absl::StrCat("unknown --memory '", a.memory, "' (full, mmap, stream)"));
  TESSERA_ASSIGN_OR_RETURN(auto model, Model::Load(a.pkg, po));
  std::unique_ptr<Model> base;
  if (!a.base.empty()) {
    TESSERA_ASSIGN_OR_RETURN(base, Model::Load(a.base));
  }
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(a.text));
  auto tokens = model->tokenizer().Encode(text, true);
  PerplexityOptions o;
  o.ctx = a.ctx;
  o.max_chunks = a.chunks;
  std::unique_ptr<Progress> bar;
  o.on_chunk = [&](int64_t done, int64_t total, double) {
    if (!bar) bar = std::make_unique<Progress>("perplexity", static_cast<size_t>(total));
    bar->Update(static_cast<size_t>(done));
  };
  TESSERA_ASSIGN_OR_RETURN(auto r, Perplexity(*model, tokens, o, base.get()));
  if (bar) bar->Finish();

  // Per-tensor distortion against the base's weights (fresh mmaps: works whatever --memory is).
  std::optional<DistortionReport> dist;
  if (base && !a.no_tensors) {
    TESSERA_ASSIGN_OR_RETURN(auto qp, Package::Open(a.pkg, {.verify_checksums = false}));
    TESSERA_ASSIGN_OR_RETURN(auto bp, Package::Open(a.base, {.verify_checksums = false}));
    // A package quantized with --rotate stores its matrices in another basis: comparing them with an
    // unrotated base's would be meaningless (the KLD above is still exact).
    auto rotation = [](const Package& p) { return p.manifest().contains("rotation") ? p.manifest()["rotation"] : json(); };
    if (rotation(*qp) != rotation(*bp)) {
      std::fprintf(stderr,
                   "note: per-tensor distortion skipped: %s and %s have different residual-stream rotations (quantize "
                   "--rotate); for it, compare with a base written by `tessera quantize BASE --recipe f32 --rotate` with the "
                   "same --rotate-seed\n",
                   a.pkg.c_str(), a.base.c_str());
    } else {
      TESSERA_ASSIGN_OR_RETURN(DistortionReport d, ComparePackages(*qp, *bp));
      dist = std::move(d);
    }
  }

  const json& man = model->package().manifest();
  const json quant = man.contains("quant") ? man["quant"] : json::object();
  json j{{"package", a.pkg},
         {"recipe", quant.value("recipe", "")},
         {"algorithm", quant.value("algorithm", "")},
         {"bits_per_weight", quant.contains("bits_per_weight") ? quant["bits_per_weight"] : json(nullptr)},
         {"package_bytes", PackageDirBytes(a.pkg)},
         {"text", a.text},
         {"ctx", r.ctx},
         {"n_tokens", r.n_tokens},
         {"n_chunks", r.n_chunks},
         {"n_scored", r.n_scored},
         {"nll_mean", r.nll_mean},
         {"ppl", r.ppl},
         {"ppl_stderr", r.ppl_stderr}};
  if (quant.contains("calibration")) j["calibration"] = quant["calibration"];
  j["memory"] = {{"mode", a.memory}, {"peak_rss_bytes", PeakRss()},
                 {"bytes_read_per_token", model->package().streaming()
                                              ? static_cast<double>(model->stream_stats().bytes_read) /
                                                    static_cast<double>(std::max<int64_t>(1, r.n_chunks * r.ctx))
                                              : 0.0},
                 {"loader_stall_seconds", model->stream_stats().stall_seconds}};
  if (r.has_base) {
    j["base"] = a.base;
    j["base_ppl"] = r.base_ppl;
    j["delta_ppl"] = r.ppl - r.base_ppl;
    j["delta_ppl_stderr"] = r.delta_ppl_stderr;
    j["ppl_ratio"] = r.ppl_ratio;
    j["ppl_ratio_stderr"] = r.ppl_ratio_stderr;
    j["ln_ppl_ratio"] = r.ln_ppl_ratio;
    j["ln_ppl_ratio_stderr"] = r.ln_ppl_ratio_stderr;
    j["kld_mean"] = r.kld_mean;
    j["kld_stderr"] = r.kld_stderr;
    j["kld_median"] = r.kld_median;
    j["kld_p99"] = r.kld_p99;
    j["kld_max"] = r.kld_max;
    j["top1"] = r.top1;
    j["top1_stderr"] = r.top1_stderr;
    j["kld_histogram"] = KldHistogramJson(r.kld);
  }
  if (dist) {
    json ts = json::array(), ls = json::array();
    for (const auto& t : dist->tensors) {
      json e{{"key", t.key}, {"scheme", t.scheme}, {"layer", t.layer}, {"weights", t.weights}};
      PutStats(t.stats, &e);
      ts.push_back(e);
    }
    for (const auto& l : dist->layers) {
      json e{{"name", l.name}, {"layer", l.layer}, {"weights", l.weights}};
      PutStats(l.stats, &e);
      ls.push_back(e);
    }
    j["tensors"] = ts;
    j["layers"] = ls;
    json tot = json::object();
    PutStats(dist->total, &tot);
    j["weights_total"] = tot;
  }

  if (!a.report.empty()) {
    std::vector<json> runs{j};
    for (auto& e : earlier) runs.push_back(std::move(e));
    const std::string html = RenderVerifyReport(runs);
    std::ofstream f(a.report, std::ios::binary | std::ios::trunc);
    f.write(html.data(), static_cast<std::streamsize>(html.size()));
    f.close();
    if (!f) return absl::InternalError(absl::StrCat(a.report, ": cannot write the report"));
  }

  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return absl::OkStatus();
  }
  std::printf("package     %s (%s, %s)\n", a.pkg.c_str(), j["recipe"].get<std::string>().c_str(), j["algorithm"].get<std::string>().c_str());
  std::printf("text        %s: %lld tokens, %lld chunks of %lld, %lld scored\n", a.text.c_str(),
              static_cast<long long>(r.n_tokens), static_cast<long long>(r.n_chunks), static_cast<long long>(r.ctx),
              static_cast<long long>(r.n_scored));
  std::printf("perplexity  %.6f +/- %.5f\n", r.ppl, r.ppl_stderr);
  if (r.has_base) {
    std::printf("base ppl    %.6f   delta %+.6f +/- %.6f\n", r.base_ppl, r.ppl - r.base_ppl, r.delta_ppl_stderr);
    std::printf("ppl ratio   %.6f +/- %.6f   ln(ratio) %.6f +/- %.6f\n", r.ppl_ratio, r.ppl_ratio_stderr, r.ln_ppl_ratio,
                r.ln_ppl_ratio_stderr);
    std::printf("KLD         mean %.6f +/- %.6f  median %.6f  p99 %.6f  max %.6f\n", r.kld_mean, r.kld_stderr, r.kld_median,
                r.kld_p99, r.kld_max);
    std::printf("same top-1  %.3f +/- %.3f %%\n", 100.0 * r.top1, 100.0 * r.top1_stderr);
  }
  if (dist) {
    std::printf("\n%-24s %-14s %10s %11s %9s %10s %8s %10s\n", "tensor", "scheme", "weights", "rmse", "rel", "max_abs", "snr_db",
                "cosine");
    auto line = [](const std::string& name, const std::string& scheme, uint64_t n, const DistortionStats& s) {
      std::printf("%-24s %-14s %10llu %11.4e %9.5f %10.4e %8.2f %10.7f\n", name.c_str(), scheme.c_str(),
                  static_cast<unsigned long long>(n), s.rmse, s.rel_rmse, s.max_abs, s.snr_db, s.cosine);
    };
    for (const auto& t : dist->tensors) line(t.key, t.scheme, t.weights, t.stats);
    uint64_t total = 0;
    for (const auto& l : dist->layers) total += l.weights;
    line("all matrices", "", total, dist->total);
  }
  if (!a.report.empty()) std::printf("report      %s\n", a.report.c_str());
  return absl::OkStatus();
}

}  // namespace tessera::app
