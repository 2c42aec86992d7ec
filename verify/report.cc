#include "verify/report.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera {

std::string HtmlEscape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

namespace {
using json = nlohmann::ordered_json;

const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
const char* Color(size_t i) { return kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))]; }

double Num(const json& j, const char* key, double dflt = std::nan("")) {
  if (!j.contains(key) || !j[key].is_number()) return dflt;
  return j[key].get<double>();
}
std::string Str(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}
std::string Label(const json& r) {
  std::string s = Str(r, "recipe");
  const std::string alg = Str(r, "algorithm");
  if (!alg.empty() && alg != "none") absl::StrAppend(&s, " (", alg, ")");
  if (s.empty()) s = Str(r, "package");
  return s;
}
std::string Fmt(double v, int prec = 4) {
  if (std::isnan(v)) return "&ndash;";
  if (std::isinf(v)) return v > 0 ? "&infin;" : "-&infin;";
  return absl::StrFormat("%.*g", prec, v);
}

// Nice tick values covering [lo, hi].
std::vector<double> Ticks(double lo, double hi, int want = 5) {
  std::vector<double> t;
  if (!(hi > lo)) {
    t.push_back(lo);
    return t;
  }
  const double raw = (hi - lo) / want, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

struct Frame {
  double W = 720, H = 360, L = 70, R = 20, T = 30, B = 60;
  double x0, x1, y0, y1;  // data ranges
  bool logy = false;
  double X(double x) const { return L + (x - x0) / (x1 - x0) * (W - L - R); }
  double Y(double y) const {
    const double a = logy ? std::log10(y) : y, b0 = logy ? std::log10(y0) : y0, b1 = logy ? std::log10(y1) : y1;
    return H - B - (a - b0) / (b1 - b0) * (H - T - B);
  }
};

void Open(std::string* o, const Frame& f, const std::string& title, const std::string& aria) {
  absl::StrAppendFormat(o, "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" viewBox=\"0 0 %g %g\" role=\"img\" aria-label=\"%s\">\n",
                        f.W, f.H, f.W, f.H, HtmlEscape(aria));
  absl::StrAppendFormat(o, "<text x=\"%g\" y=\"18\" class=\"t\">%s</text>\n", f.L, HtmlEscape(title));
}

void Axes(std::string* o, const Frame& f, const std::string& xlabel, const std::string& ylabel, bool xticks = true) {
  absl::StrAppendFormat(o, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" class=\"ax\"/>\n", f.L, f.H - f.B, f.W - f.R, f.H - f.B);
  absl::StrAppendFormat(o, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" class=\"ax\"/>\n", f.L, f.T, f.L, f.H - f.B);
  std::vector<double> yt;
  if (f.logy) {
    for (double e = std::floor(std::log10(f.y0)); e <= std::ceil(std::log10(f.y1)); e += 1) {
      const double v = std::pow(10.0, e);
      if (v >= f.y0 * 0.999 && v <= f.y1 * 1.001) yt.push_back(v);
      for (double m : {2.0, 5.0})
        if (m * v >= f.y0 && m * v <= f.y1) yt.push_back(m * v);
    }
  } else {
    yt = Ticks(f.y0, f.y1);
  }
  for (double v : yt) {
    absl::StrAppendFormat(o, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" class=\"grid\"/>\n", f.L, f.Y(v), f.W - f.R, f.Y(v));
    absl::StrAppendFormat(o, "<text x=\"%g\" y=\"%.1f\" class=\"yl\">%s</text>\n", f.L - 4, f.Y(v) + 4, Fmt(v, 3));
  }
  if (xticks)
    for (double v : Ticks(f.x0, f.x1, 6))
      absl::StrAppendFormat(o, "<text x=\"%.1f\" y=\"%g\" class=\"xl\">%s</text>\n", f.X(v), f.H - f.B + 16, Fmt(v, 4));
  absl::StrAppendFormat(o, "<text x=\"%g\" y=\"%g\" class=\"xt\">%s</text>\n", (f.L + f.W - f.R) / 2, f.H - 8, HtmlEscape(xlabel));
  absl::StrAppendFormat(o, "<text transform=\"translate(14 %g) rotate(-90)\" class=\"xt\">%s</text>\n", (f.T + f.H - f.B) / 2,
                        HtmlEscape(ylabel));
}

// Size (bits/weight) vs KLD mean, one point per run with a base.
void SizeVsKld(std::string* o, const std::vector<json>& runs) {
  std::vector<size_t> idx;
  for (size_t i = 0; i < runs.size(); ++i)
    if (Num(runs[i], "kld_mean") > 0 && !std::isnan(Num(runs[i], "bits_per_weight"))) idx.push_back(i);
  if (idx.empty()) return;
  Frame f;
  f.H = 400;
  f.logy = true;
  double xmin = 1e9, xmax = -1e9, ymin = 1e9, ymax = 0;
  for (size_t i : idx) {
    const double x = Num(runs[i], "bits_per_weight"), y = Num(runs[i], "kld_mean"), se = Num(runs[i], "kld_stderr", 0);
    xmin = std::min(xmin, x), xmax = std::max(xmax, x);
    ymin = std::min(ymin, std::max(y - se, y * 0.5)), ymax = std::max(ymax, y + se);
  }
  const double pad = std::max(0.25, (xmax - xmin) * 0.08);
  f.x0 = xmin - pad, f.x1 = xmax + pad;
  f.y0 = std::pow(10.0, std::floor(std::log10(ymin))), f.y1 = std::pow(10.0, std::ceil(std::log10(ymax * 1.01)));
  Open(o, f, "Package size vs KL divergence from the base (lower left is better)", "scatter chart: bits per weight against mean KLD");
  Axes(o, f, "bits per weight (matrices, from the stored bytes)", "KLD mean (log scale)");
  for (size_t n = 0; n < idx.size(); ++n) {
    const json& r = runs[idx[n]];
    const double x = Num(r, "bits_per_weight"), y = Num(r, "kld_mean"), se = Num(r, "kld_stderr", 0);
    const double ylo = std::max(y - se, f.y0), yhi = y + se;
    absl::StrAppendFormat(o, "<g class=\"pt\"><title>%s: %s bits/weight, %s bytes, KLD %s &#177; %s, top-1 %s %%</title>\n",
                          HtmlEscape(Label(r)), Fmt(x, 5), Fmt(Num(r, "package_bytes"), 10), Fmt(y, 4), Fmt(se, 2),
                          Fmt(100 * Num(r, "top1"), 4));
    absl::StrAppendFormat(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", f.X(x), f.Y(ylo), f.X(x),
                          f.Y(yhi), Color(n));
    absl::StrAppendFormat(o, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"/>\n", f.X(x), f.Y(y), Color(n));
    absl::StrAppendFormat(o, "<text x=\"%.1f\" y=\"%.1f\" class=\"lab\">%s</text></g>\n", f.X(x) + 8, f.Y(y) - 6 - 11.0 * (n % 2),
                          HtmlEscape(Label(r)));
  }
  *o += "</svg><figcaption>Each point is one package; the bars are &#177;1 standard error of the mean KLD.</figcaption></figure>\n";
}

// Relative RMSE of the weights per layer; one polyline per run that has tensor statistics.
void PerLayer(std::string* o, const std::vector<json>& runs) {
  std::vector<size_t> idx;
  for (size_t i = 0; i < runs.size(); ++i)
    if (runs[i].contains("layers") && runs[i]["layers"].is_array() && !runs[i]["layers"].empty()) idx.push_back(i);
  if (idx.empty()) return;
  const json& names = runs[idx[0]]["layers"];
  const size_t nl = names.size();
  Frame f;
  f.x0 = -0.5, f.x1 = static_cast<double>(nl) - 0.5, f.y0 = 0, f.y1 = 0;
  for (size_t i : idx)
    for (const auto& l : runs[i]["layers"]) f.y1 = std::max(f.y1, Num(l, "rel_rmse", 0));
  if (f.y1 <= 0) f.y1 = 1;
  f.y1 *= 1.1;
  Open(o, f, "Weight error per layer: RMSE / RMS of the base weights (all matrices of the layer)", "line chart: relative RMSE per layer");
  Axes(o, f, "layer", "relative RMSE", false);
  for (size_t k = 0; k < nl; ++k) {
    std::string nm = names[k].value("name", "");
    if (nm.rfind("block_", 0) == 0) nm = nm.substr(6);
    absl::StrAppendFormat(o, "<text x=\"%.1f\" y=\"%g\" class=\"xl\">%s</text>\n", f.X(static_cast<double>(k)), f.H - f.B + 16,
                          HtmlEscape(nm));
  }
  const double bw = (f.W - f.L - f.R) / static_cast<double>(nl) * 0.8 / static_cast<double>(idx.size());
  for (size_t n = 0; n < idx.size(); ++n) {
    const json& ls = runs[idx[n]]["layers"];
    for (size_t k = 0; k < std::min(nl, ls.size()); ++k) {
      const double v = Num(ls[k], "rel_rmse", 0);
      const double x = f.X(static_cast<double>(k)) - bw * static_cast<double>(idx.size()) / 2 + bw * static_cast<double>(n);
      absl::StrAppendFormat(o, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>%s, %s: %s</title></rect>\n", x,
                            f.Y(v), bw, f.Y(0) - f.Y(v), Color(n), HtmlEscape(Label(runs[idx[n]])), HtmlEscape(ls[k].value("name", "")),
                            Fmt(v, 4));
    }
  }
  // legend
  for (size_t n = 0; n < idx.size(); ++n)
    absl::StrAppendFormat(o, "<rect x=\"%g\" y=\"%g\" width=\"10\" height=\"10\" fill=\"%s\"/><text x=\"%g\" y=\"%g\" class=\"lab\">%s</text>\n",
                          f.W - f.R - 230, f.T + 4 + 14.0 * static_cast<double>(n), Color(n), f.W - f.R - 215,
                          f.T + 13 + 14.0 * static_cast<double>(n), HtmlEscape(Label(runs[idx[n]])));
  *o += "</svg></figure>\n";
}

// SNR (dB) of every tensor of the current run, a horizontal bar each, colored by scheme.
void PerTensor(std::string* o, const json& r) {
  if (!r.contains("tensors") || !r["tensors"].is_array() || r["tensors"].empty()) return;
  const json& ts = r["tensors"];
  Frame f;
  const double row = 14;
  f.L = 170, f.T = 30, f.B = 40;
  f.H = f.T + f.B + row * static_cast<double>(ts.size());
  double xmax = 0;
  for (const auto& t : ts) {
    const double s = Num(t, "snr_db", 0);
    if (std::isfinite(s)) xmax = std::max(xmax, s);
  }
  f.x0 = 0, f.x1 = xmax > 0 ? xmax * 1.1 : 1, f.y0 = 0, f.y1 = 1;
  Open(o, f, "Signal-to-noise ratio of every quantized tensor (higher is better)", "bar chart: SNR in dB per tensor");
  std::map<std::string, size_t> colors;
  for (const auto& t : ts) colors.emplace(t.value("scheme", ""), colors.size());
  for (double v : Ticks(f.x0, f.x1, 6)) {
    absl::StrAppendFormat(o, "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" class=\"grid\"/>\n", f.X(v), f.T, f.X(v), f.H - f.B);
    absl::StrAppendFormat(o, "<text x=\"%.1f\" y=\"%g\" class=\"xl\">%s</text>\n", f.X(v), f.H - f.B + 14, Fmt(v, 3));
  }
  absl::StrAppendFormat(o, "<text x=\"%g\" y=\"%g\" class=\"xt\">SNR (dB) = 10 log10(sum w^2 / sum (q - w)^2)</text>\n", (f.L + f.W) / 2, f.H - 10);
  for (size_t k = 0; k < ts.size(); ++k) {
    const json& t = ts[k];
    double s = Num(t, "snr_db", 0);
    const bool inf = t.contains("snr_db") && t["snr_db"].is_null();
    if (inf || !std::isfinite(s)) s = f.x1;
    const double y = f.T + row * static_cast<double>(k);
    const std::string scheme = t.value("scheme", "");
    absl::StrAppendFormat(o, "<text x=\"%g\" y=\"%.1f\" class=\"yl\">%s</text>\n", f.L - 4, y + row - 3, HtmlEscape(t.value("key", "")));
    absl::StrAppendFormat(o, "<rect x=\"%g\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>%s (%s): SNR %s dB, RMSE %s, max abs %s, cosine %s</title></rect>\n",
                          f.L, y + 1, std::max(0.0, f.X(s) - f.L), row - 2, Color(colors[scheme]), HtmlEscape(t.value("key", "")),
                          HtmlEscape(scheme), inf ? "&infin;" : Fmt(s, 4), Fmt(Num(t, "rmse"), 3), Fmt(Num(t, "max_abs"), 3),
                          Fmt(Num(t, "cosine"), 6));
  }
  double ly = f.T;
  for (const auto& [scheme, c] : colors) {
    absl::StrAppendFormat(o, "<rect x=\"%g\" y=\"%g\" width=\"10\" height=\"10\" fill=\"%s\"/><text x=\"%g\" y=\"%g\" class=\"lab\">%s</text>\n",
                          f.W - f.R - 130, ly, Color(c), f.W - f.R - 115, ly + 9, HtmlEscape(scheme));
    ly += 14;
  }
  *o += "</svg></figure>\n";
}

void KldHistogram(std::string* o, const json& r) {
  if (!r.contains("kld_histogram")) return;
  const json& h = r["kld_histogram"];
  const json& edges = h["edges"];
  const json& counts = h["counts"];
  if (!counts.is_array() || counts.empty() || edges.size() != counts.size() + 1) return;
  Frame f;
  f.H = 300;
  const size_t n = counts.size();
  f.x0 = 0, f.x1 = static_cast<double>(n), f.y0 = 0, f.y1 = 0;
  double total = 0;
  for (const auto& c : counts) f.y1 = std::max(f.y1, c.get<double>()), total += c.get<double>();
  if (f.y1 <= 0) f.y1 = 1;
  f.y1 *= 1.1;
  Open(o, f, "Per-token KL divergence from the base (histogram, log-spaced bins)", "histogram of per-token KLD");
  Axes(o, f, "KLD per scored token", "tokens", false);
  for (size_t k = 0; k < n; ++k) {
    const double c = counts[k].get<double>();
    absl::StrAppendFormat(o, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#1f77b4\"><title>[%s, %s): %d tokens (%s %%)</title></rect>\n",
                          f.X(static_cast<double>(k)) + 1, f.Y(c), f.X(1) - f.X(0) - 2, f.Y(0) - f.Y(c),
                          Fmt(edges[k].get<double>(), 3), Fmt(edges[k + 1].get<double>(), 3), static_cast<int>(c),
                          Fmt(total > 0 ? 100 * c / total : 0, 3));
  }
  for (size_t k = 0; k <= n; k += 2)
    absl::StrAppendFormat(o, "<text x=\"%.1f\" y=\"%g\" class=\"xl\">%s</text>\n", f.X(static_cast<double>(k)), f.H - f.B + 16,
                          Fmt(edges[k].get<double>(), 2));
  *o += "</svg></figure>\n";
}

std::string PlusMinus(const json& r, const char* v, const char* se, int prec, double mul = 1) {
  const double x = Num(r, v), s = Num(r, se);
  if (std::isnan(x)) return "&ndash;";
  if (std::isnan(s)) return Fmt(x * mul, prec);
  return absl::StrCat(Fmt(x * mul, prec), " &#177; ", Fmt(s * mul, 2));
}

void SummaryTable(std::string* o, const std::vector<json>& runs) {
  *o += "<table><tr><th>package</th><th>recipe</th><th>algorithm</th><th>bits/weight</th><th>bytes</th><th>PPL</th><th>&#916;PPL</th>"
        "<th>PPL ratio</th><th>KLD mean</th><th>KLD median</th><th>KLD p99</th><th>KLD max</th><th>top-1 %</th></tr>\n";
  for (const json& r : runs) {
    absl::StrAppend(o, "<tr><td>", HtmlEscape(Str(r, "package")), "</td><td>", HtmlEscape(Str(r, "recipe")), "</td><td>",
                    HtmlEscape(Str(r, "algorithm")), "</td><td>", Fmt(Num(r, "bits_per_weight"), 5), "</td><td>",
                    Fmt(Num(r, "package_bytes"), 12), "</td><td>", PlusMinus(r, "ppl", "ppl_stderr", 7), "</td><td>",
                    PlusMinus(r, "delta_ppl", "delta_ppl_stderr", 4), "</td><td>", PlusMinus(r, "ppl_ratio", "ppl_ratio_stderr", 6),
                    "</td><td>", PlusMinus(r, "kld_mean", "kld_stderr", 4), "</td><td>", Fmt(Num(r, "kld_median"), 4), "</td><td>",
                    Fmt(Num(r, "kld_p99"), 4), "</td><td>", Fmt(Num(r, "kld_max"), 4), "</td><td>",
                    PlusMinus(r, "top1", "top1_stderr", 4, 100), "</td></tr>\n");
  }
  *o += "</table>\n";
}

void TensorTable(std::string* o, const json& r) {
  if (!r.contains("tensors") || !r["tensors"].is_array()) return;
  *o += "<h2>Per-tensor distortion (current run)</h2>\n<table><tr><th>tensor</th><th>scheme</th><th>weights</th><th>RMSE</th>"
        "<th>RMSE / RMS</th><th>max abs</th><th>SNR dB</th><th>cosine</th></tr>\n";
  for (const json& t : r["tensors"]) {
    absl::StrAppend(o, "<tr><td>", HtmlEscape(t.value("key", "")), "</td><td>", HtmlEscape(t.value("scheme", "")), "</td><td>",
                    Fmt(Num(t, "weights"), 12), "</td><td>", Fmt(Num(t, "rmse"), 4), "</td><td>", Fmt(Num(t, "rel_rmse"), 4),
                    "</td><td>", Fmt(Num(t, "max_abs"), 4), "</td><td>",
                    t.contains("snr_db") && t["snr_db"].is_null() ? std::string("&infin;") : Fmt(Num(t, "snr_db"), 4), "</td><td>",
                    Fmt(Num(t, "cosine"), 7), "</td></tr>\n");
  }
  *o += "</table>\n";
}
}  // namespace

nlohmann::ordered_json KldHistogramJson(const std::vector<double>& kld) {
  std::vector<double> edges{0.0};
  for (int e = -12; e <= 2; ++e) edges.push_back(std::pow(10.0, e / 2.0));
  std::vector<int64_t> counts(edges.size() - 1, 0);
  for (double k : kld) {
    size_t b = static_cast<size_t>(std::upper_bound(edges.begin(), edges.end(), k) - edges.begin());
    b = b == 0 ? 0 : std::min(b - 1, counts.size() - 1);
    ++counts[b];
  }
  return json{{"edges", edges}, {"counts", counts}};
}

std::string RenderVerifyReport(const std::vector<json>& runs) {
  std::string o;
  o += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tessera verify report</title>\n<style>\n"
       "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}"
       "table{border-collapse:collapse;margin:8px 0 24px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
       "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
       "figure{margin:12px 0 28px}svg text{font:11px sans-serif;fill:#333}svg .t{font-size:13px;font-weight:bold}"
       ".ax{stroke:#444}.grid{stroke:#e3e3e3}.yl{text-anchor:end}.xl{text-anchor:middle}.xt{text-anchor:middle;font-size:12px}"
       ".lab{font-size:11px}\n</style></head><body>\n";
  if (runs.empty()) {
    o += "<p>No results.</p></body></html>\n";
    return o;
  }
  const json& cur = runs[0];
  absl::StrAppend(&o, "<h1>Quantization quality: ", HtmlEscape(Str(cur, "package")), "</h1>\n<p>Text <code>",
                  HtmlEscape(Str(cur, "text")), "</code>, ", Fmt(Num(cur, "n_chunks"), 10), " chunks of ", Fmt(Num(cur, "ctx"), 10),
                  " tokens, ", Fmt(Num(cur, "n_scored"), 10), " scored tokens");
  if (!Str(cur, "base").empty()) absl::StrAppend(&o, "; base <code>", HtmlEscape(Str(cur, "base")), "</code>");
  o += ". Uncertainties are &#177;1 standard error of the mean over the scored tokens.</p>\n<h2>Summary</h2>\n";
  SummaryTable(&o, runs);
  SizeVsKld(&o, runs);
  KldHistogram(&o, cur);
  PerLayer(&o, runs);
  PerTensor(&o, cur);
  TensorTable(&o, cur);
  o += "</body></html>\n";
  return o;
}

}  // namespace tessera
