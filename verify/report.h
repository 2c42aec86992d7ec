// `tessera verify --report OUT.html`: one self-contained HTML page (inline SVG, no scripts, no
// external resources) built from verify's JSON results: the current run plus any number of
// earlier runs saved with `--json` (for the size-vs-KLD chart across packages/recipes).
#pragma once

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace tessera {

// runs[0] is the current run; every run is an object as printed by `tessera verify --json`.
// Charts: package size vs KLD (all runs with a base, with +/- 1 standard error bars), per-layer
// relative RMSE of the weights (every run with tensor statistics), per-tensor SNR (current run),
// and the histogram of per-token KLD (current run); then the summary and per-tensor tables.
std::string RenderVerifyReport(const std::vector<nlohmann::ordered_json>& runs);

// Escapes & < > " ' for HTML text and attribute values.
std::string HtmlEscape(const std::string& s);

}  // namespace tessera

namespace tessera {
// Histogram of per-token KLD values for the report: {"edges": [0, 1e-6, 10^-5.5, ..., 10], "counts": [...]}
// (half-decade bins; values >= 10 are counted in the last bin).
nlohmann::ordered_json KldHistogramJson(const std::vector<double>& kld);
}  // namespace tessera
