// NumPy .npy (v1/v2) reading and writing for little-endian float32 arrays.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

absl::StatusOr<NpyArray> ReadNpyF32(const std::string& path);
// Atomic (temporary sibling + rename); an existing file is replaced only with `force`.
absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const float* data, bool force = true);

}  // namespace tessera
