#include "quantizer/imatrix.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/status.h"
#include "formats/package.h"
#include "runtime-lite/model.h"

namespace tessera {

absl::StatusOr<ActivationStats> CollectActivationStats(const std::string& src_dir, const QuantizeOptions& o,
                                                       nlohmann::ordered_json* info) {
  TESSERA_ASSIGN_OR_RETURN(auto model, Model::Load(src_dir));
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(o.calib_text));
  TESSERA_ASSIGN_OR_RETURN(std::string hash, HashFile(o.calib_text));
  const ModelConfig& c = model->config();
  int64_t ctx = o.calib_ctx > 0 ? o.calib_ctx : std::min<int64_t>(512, c.max_ctx);
  if (ctx > c.max_ctx)
    return absl::InvalidArgumentError(absl::StrCat("--calib-ctx ", ctx, " exceeds the model's context ", c.max_ctx));
  if (ctx < 2) return absl::InvalidArgumentError("--calib-ctx must be at least 2");
  std::vector<int32_t> tokens = model->tokenizer().Encode(text, true);
  if (o.calib_tokens > 0 && static_cast<int64_t>(tokens.size()) > o.calib_tokens)
    tokens.resize(static_cast<size_t>(o.calib_tokens));
  if (tokens.size() < 2)
    return FileError(o.calib_text, absl::StrCat("calibration text has only ", tokens.size(), " tokens"));

  struct Acc {
    std::vector<double> sum;
    int64_t n = 0;
  };
  std::map<std::string, Acc> acc;
  model->SetActivationObserver([&](const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
    Acc& a = acc[key];
    if (a.sum.size() < k) a.sum.resize(k, 0.0);
    for (size_t t = 0; t < T; ++t) {
      const float* row = x + t * ldx;
      for (size_t i = 0; i < k; ++i) a.sum[i] += static_cast<double>(row[i]) * row[i];
    }
    a.n += static_cast<int64_t>(T);
  });
  const int32_t bos = model->tokenizer().bos_id() >= 0 ? model->tokenizer().bos_id() : c.bos_id;
  const size_t n_tok = tokens.size(), uctx = static_cast<size_t>(ctx);
  const size_t n_chunks = (n_tok + uctx - 1) / uctx;
  Progress progress("calibrate", n_chunks);
  KVCache cache(c, ctx);
  std::vector<float> logits(uctx * static_cast<size_t>(c.vocab));
  for (size_t ch = 0; ch < n_chunks; ++ch) {
    std::vector<int32_t> chunk(tokens.begin() + static_cast<std::ptrdiff_t>(ch * uctx),
                               tokens.begin() + static_cast<std::ptrdiff_t>(std::min(n_tok, (ch + 1) * uctx)));
    if (bos >= 0 && model->tokenizer().add_bos()) chunk[0] = bos;
    TESSERA_RETURN_IF_ERROR(model->Forward(cache, chunk.data(), chunk.size(), 0, logits.data(), true));
    progress.Add();
  }
  progress.Finish();
  model->SetActivationObserver(nullptr);

  ActivationStats st;
  st.tokens = static_cast<int64_t>(n_tok);
  for (auto& [key, a] : acc) {
    std::vector<float> v(a.sum.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = a.n ? static_cast<float>(a.sum[i] / static_cast<double>(a.n)) : 0.0f;
    st.mean_sq[key] = std::move(v);
  }
  *info = {{"file", std::filesystem::path(o.calib_text).filename().string()},
           {"path", std::filesystem::absolute(o.calib_text).string()},
           {"bytes", text.size()},
           {"xxh3_64", hash},
           {"tokens", st.tokens},
           {"ctx", ctx},
           {"chunks", n_chunks},
           {"statistic", "mean(x^2) per input channel"}};
  return st;
}

}  // namespace tessera
