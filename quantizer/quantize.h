// Package -> package quantization (round to nearest, group-wise).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "formats/tensor_pack.h"

namespace tessera {

struct QuantizeOptions {
  QType type = QType::kI4Sym;  // kF32, kF16, kBF16, kI8, kI4Sym, kI4Asym
  uint32_t group = 32;         // for int8 / int4
  bool force = false;
  std::string cmdline;
};

// The recipe name written to the manifest, e.g. "int4-g32-sym", "int8-g32", "bf16".
std::string RecipeName(const QuantizeOptions& o);

// Quantizes one tensor. Matrices (2-D) get `o.type`; vectors stay F32.
absl::StatusOr<TensorData> QuantizeTensor(const PackTensor& src, const QuantizeOptions& o);

absl::Status QuantizePackage(const std::string& src_dir, const std::string& out_dir, const QuantizeOptions& o);

}  // namespace tessera
