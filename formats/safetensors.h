// Safetensors reader (single file or sharded via model.safetensors.index.json). Tensors stay
// in the memory-mapped files; nothing is copied until a caller converts it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/mapped_file.h"

namespace tessera {

enum class SafeDType { kF32, kF16, kBF16, kF64, kI64, kI32, kI8, kU8, kBool, kOther };

struct SafeTensor {
  std::string name;
  SafeDType dtype = SafeDType::kOther;
  std::string dtype_name;  // as written in the header, e.g. "F16"
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
  std::string file;  // the file it lives in
  size_t offset = 0; // absolute offset in that file

  size_t numel() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
  // Converts any float dtype (F32/F16/BF16/F64) to f32. Fails on other dtypes.
  absl::Status ToF32(float* out) const;
};

class SafetensorsSet {
 public:
  // Opens `dir/model.safetensors.index.json` if present, else `dir/model.safetensors`, else
  // every `*.safetensors` in dir. Or a single .safetensors file path.
  static absl::StatusOr<SafetensorsSet> Open(const std::string& path);
  // Parses one file and adds its tensors (duplicate names are an error).
  absl::Status AddFile(const std::string& path);

  const SafeTensor* Find(const std::string& name) const;
  // Drops the tensor's mapped pages from the resident set once it has been copied (bounded-memory
  // conversion of models larger than RAM).
  void Release(const SafeTensor& t) const;
  const std::map<std::string, SafeTensor>& tensors() const { return tensors_; }
  const std::vector<std::string>& files() const { return files_; }

 private:
  std::vector<std::shared_ptr<MappedFile>> maps_;
  std::vector<std::string> files_;
  std::map<std::string, SafeTensor> tensors_;
};

}  // namespace tessera
