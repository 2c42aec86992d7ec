#include "formats/safetensors.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace tessera {
namespace fs = std::filesystem;

namespace {
SafeDType ParseDType(const std::string& s, size_t* elem) {
  if (s == "F32") { *elem = 4; return SafeDType::kF32; }
  if (s == "F16") { *elem = 2; return SafeDType::kF16; }
  if (s == "BF16") { *elem = 2; return SafeDType::kBF16; }
  if (s == "F64") { *elem = 8; return SafeDType::kF64; }
  if (s == "I64") { *elem = 8; return SafeDType::kI64; }
  if (s == "I32") { *elem = 4; return SafeDType::kI32; }
  if (s == "I8") { *elem = 1; return SafeDType::kI8; }
  if (s == "U8") { *elem = 1; return SafeDType::kU8; }
  if (s == "BOOL") { *elem = 1; return SafeDType::kBool; }
  *elem = 0;
  return SafeDType::kOther;
}
}  // namespace

absl::Status SafeTensor::ToF32(float* out) const {
  const size_t n = numel();
  switch (dtype) {
    case SafeDType::kF32:
      std::memcpy(out, data, n * 4);
      return absl::OkStatus();
    case SafeDType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, data + 2 * i, 2);
        out[i] = F16ToF32(h);
      }
      return absl::OkStatus();
    case SafeDType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, data + 2 * i, 2);
        out[i] = BF16ToF32(h);
      }
      return absl::OkStatus();
    case SafeDType::kF64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, data + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": tensor ", name, " has dtype ", dtype_name, ", expected a float type"));
  }
}

absl::Status SafetensorsSet::AddFile(const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> owned, MappedFile::Open(path));
  std::shared_ptr<MappedFile> mf(std::move(owned));
  const size_t size = mf->size();
  if (size < 8) return FileError(path, absl::StrCat("truncated safetensors file (", size, " bytes)"));
  uint64_t hlen;
  std::memcpy(&hlen, mf->data(), 8);
  if (hlen > size - 8 || hlen > (100u << 20)) {
    return FileError(path, absl::StrCat("safetensors header length ", hlen,
                                        " exceeds the file size ", size, " (truncated or not safetensors)"));
  }
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(mf->data() + 8, mf->data() + 8 + hlen);
  } catch (const std::exception& e) {
    return FileError(path, absl::StrCat("invalid safetensors JSON header: ", e.what()));
  }
  if (!header.is_object()) return FileError(path, "safetensors header is not a JSON object");
  const size_t data_start = 8 + hlen;
  const size_t data_size = size - data_start;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& v = it.value();
    SafeTensor t;
    t.name = it.key();
    t.file = path;
    try {
      t.dtype_name = v.at("dtype").get<std::string>();
      t.shape = v.at("shape").get<std::vector<int64_t>>();
      auto offs = v.at("data_offsets").get<std::vector<uint64_t>>();
      if (offs.size() != 2) throw std::runtime_error("data_offsets must have 2 entries");
      size_t elem;
      t.dtype = ParseDType(t.dtype_name, &elem);
      if (offs[0] > offs[1] || offs[1] > data_size) {
        return FileError(path, absl::StrCat("tensor ", t.name, ": data_offsets [", offs[0], ", ",
                                            offs[1], "] outside the data region of ", data_size,
                                            " bytes (truncated file?)"));
      }
      size_t numel = 1;
      for (int64_t d : t.shape) {
        if (d < 0) throw std::runtime_error("negative dimension");
        numel *= static_cast<size_t>(d);
      }
      if (elem != 0 && numel * elem != offs[1] - offs[0]) {
        return FileError(path, absl::StrCat("tensor ", t.name, ": ", offs[1] - offs[0],
                                            " bytes do not match dtype ", t.dtype_name, " and shape (",
                                            numel, " elements)"));
      }
      t.offset = data_start + offs[0];
      t.data = mf->data() + t.offset;
      t.bytes = offs[1] - offs[0];
    } catch (const std::exception& e) {
      return FileError(path, absl::StrCat("tensor ", t.name, ": bad header entry: ", e.what()));
    }
    if (tensors_.count(t.name)) return FileError(path, absl::StrCat("duplicate tensor ", t.name));
    tensors_.emplace(t.name, std::move(t));
  }
  maps_.push_back(std::move(mf));
  files_.push_back(path);
  return absl::OkStatus();
}

absl::StatusOr<SafetensorsSet> SafetensorsSet::Open(const std::string& path) {
  SafetensorsSet set;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    TESSERA_RETURN_IF_ERROR(set.AddFile(path));
    return set;
  }
  const fs::path dir(path);
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index.string()));
    std::vector<std::string> shards;
    std::map<std::string, std::string> weight_map;
    try {
      auto j = nlohmann::json::parse(text);
      for (auto& [k, v] : j.at("weight_map").items()) weight_map[k] = v.get<std::string>();
    } catch (const std::exception& e) {
      return FileError(index.string(), absl::StrCat("invalid index: ", e.what()));
    }
    for (auto& [k, v] : weight_map) {
      if (v.find('/') != std::string::npos || v.find("..") != std::string::npos)
        return FileError(index.string(), absl::StrCat("shard name '", v, "' is not a plain file name"));
      if (std::find(shards.begin(), shards.end(), v) == shards.end()) shards.push_back(v);
    }
    std::sort(shards.begin(), shards.end());
    for (const auto& s : shards) TESSERA_RETURN_IF_ERROR(set.AddFile((dir / s).string()));
    for (auto& [k, v] : weight_map) {
      auto it = set.tensors_.find(k);
      if (it == set.tensors_.end())
        return FileError(index.string(), absl::StrCat("tensor ", k, " listed for ", v, " is missing"));
      if (fs::path(it->second.file).filename() != v)
        return FileError(index.string(), absl::StrCat("tensor ", k, " is in ", it->second.file, ", not ", v));
    }
    return set;
  }
  if (fs::exists(dir / "model.safetensors")) {
    TESSERA_RETURN_IF_ERROR(set.AddFile((dir / "model.safetensors").string()));
    return set;
  }
  std::vector<std::string> files;
  for (auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
  if (files.empty()) return FileError(path, "no .safetensors files found");
  std::sort(files.begin(), files.end());
  for (const auto& f : files) TESSERA_RETURN_IF_ERROR(set.AddFile(f));
  return set;
}

void SafetensorsSet::Release(const SafeTensor& t) const {
  for (const auto& m : maps_)
    if (m->path() == t.file) m->DropPages(t.offset, t.bytes);
}

const SafeTensor* SafetensorsSet::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace tessera
