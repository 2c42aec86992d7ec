#include "quantizer/quantize.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "core/progress.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "formats/package.h"
#include "quantizer/kernels/kernels.h"

namespace tessera {
namespace fs = std::filesystem;

std::string RecipeName(const QuantizeOptions& o) {
  switch (o.type) {
    case QType::kI4Sym: return absl::StrCat("int4-g", o.group, "-sym");
    case QType::kI4Asym: return absl::StrCat("int4-g", o.group, "-asym");
    case QType::kI8: return absl::StrCat("int8-g", o.group);
    default: return QTypeName(o.type);
  }
}

absl::StatusOr<TensorData> QuantizeTensor(const PackTensor& src, const QuantizeOptions& o) {
  TensorData d;
  d.name = src.name;
  d.shape = src.shape;
  const size_t rows = src.rows(), k = src.logical_cols();
  const QType type = src.shape.size() == 2 ? o.type : QType::kF32;
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
  const size_t g = o.group;
  if (g == 0 || g % 32 != 0 || (type != QType::kI8 && g > 128))
    return absl::InvalidArgumentError(absl::StrCat("unsupported group size ", g, " for ", QTypeName(type)));
  const size_t kp = (k + g - 1) / g * g;
  d.group = static_cast<uint32_t>(g);
  d.cols = kp;
  d.data.resize(DataPlaneBytes(type, rows, kp));
  d.scales.resize(ScalePlaneBytes(type, rows, kp, g));
  if (type == QType::kI4Asym) d.mins.resize(d.scales.size());
  const size_t ng = kp / g;
  ThreadPool::Global().ParallelFor(rows, 16, [&](size_t r0, size_t r1) {
    std::vector<float> row(kp, 0.0f);
    for (size_t r = r0; r < r1; ++r) {
      src.RowToF32(r, row.data());
      uint16_t* sc = reinterpret_cast<uint16_t*>(d.scales.data()) + r * ng;
      switch (type) {
        case QType::kI8:
          kernels::QuantizeRowI8(row.data(), kp, g, reinterpret_cast<int8_t*>(d.data.data()) + r * kp, sc);
          break;
        case QType::kI4Sym:
          kernels::QuantizeRowI4Sym(row.data(), kp, g, d.data.data() + r * kp / 2, sc);
          break;
        default:
          kernels::QuantizeRowI4Asym(row.data(), kp, g, d.data.data() + r * kp / 2, sc,
                                     reinterpret_cast<uint16_t*>(d.mins.data()) + r * ng);
          break;
      }
    }
  });
  return d;
}

absl::Status QuantizePackage(const std::string& src_dir, const std::string& out_dir, const QuantizeOptions& o) {
  TESSERA_ASSIGN_OR_RETURN(auto pkg, Package::Open(src_dir));
  TESSERA_ASSIGN_OR_RETURN(auto writer, PackageWriter::Create(out_dir, o.force));
  const auto& cfg = pkg->config();
  Progress progress("quantize", static_cast<size_t>(cfg.layers + 2));
  auto do_pack = [&](const TensorPack& pack, const std::string& file, const std::string& role,
                     int64_t layer) -> absl::Status {
    std::vector<TensorData> out;
    for (const auto& t : pack.tensors()) {
      TESSERA_ASSIGN_OR_RETURN(auto q, QuantizeTensor(t, o));
      out.push_back(std::move(q));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack(file, role, layer, out));
    progress.Add();
    return absl::OkStatus();
  };
  TESSERA_RETURN_IF_ERROR(do_pack(pkg->embedding(), "embedding.bin", "embedding", -1));
  for (int64_t i = 0; i < cfg.layers; ++i)
    TESSERA_RETURN_IF_ERROR(do_pack(pkg->block(i), BlockFileName(i), "block", i));
  TESSERA_RETURN_IF_ERROR(do_pack(pkg->lm(), "lm.bin", "lm", -1));
  TESSERA_RETURN_IF_ERROR(writer->WriteTokenizer(pkg->tokenizer()));
  progress.Finish();
  nlohmann::ordered_json m;
  for (auto& [k, v] : pkg->manifest().items()) {
    if (k == "format" || k == "format_version" || k == "files") continue;
    m[k] = v;
  }
  m["producer"] = {{"tool", "tessera"}, {"version", kTesseraVersion}, {"cmdline", o.cmdline}};
  nlohmann::ordered_json q{{"recipe", RecipeName(o)}, {"type", QTypeName(o.type)}};
  if (IsQuantized(o.type)) {
    q["group"] = o.group;
    q["sym"] = o.type != QType::kI4Asym;
    q["scale_dtype"] = "f16";
    q["algorithm"] = "rtn";
  } else {
    q["algorithm"] = "none";
  }
  q["base"] = {{"path", fs::absolute(src_dir).string()}, {"recipe", pkg->manifest().contains("quant") ? pkg->manifest()["quant"].value("recipe", "") : ""}};
  m["quant"] = q;
  return writer->Commit(std::move(m));
}

}  // namespace tessera
