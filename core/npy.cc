#include "core/npy.h"

#include <cstring>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/cleanup.h"
#include "core/mapped_file.h"

namespace tessera {

absl::StatusOr<NpyArray> ReadNpyF32(const std::string& path) {
  auto s = ReadFileToString(path);
  if (!s.ok()) return s.status();
  const std::string& b = *s;
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a float32 .npy: ", why));
  };
  if (b.size() < 10 || std::memcmp(b.data(), "\x93NUMPY", 6) != 0) return bad("bad magic");
  const int major = static_cast<uint8_t>(b[6]);
  size_t hlen, hoff;
  if (major == 1) {
    hlen = static_cast<uint8_t>(b[8]) | (static_cast<uint8_t>(b[9]) << 8);
    hoff = 10;
  } else {
    if (b.size() < 12) return bad("truncated header");
    hlen = static_cast<uint32_t>(static_cast<uint8_t>(b[8]) | (static_cast<uint8_t>(b[9]) << 8) |
                                 (static_cast<uint8_t>(b[10]) << 16) |
                                 (static_cast<uint32_t>(static_cast<uint8_t>(b[11])) << 24));
    hoff = 12;
  }
  if (hoff + hlen > b.size()) return bad("truncated header");
  std::string header = b.substr(hoff, hlen);
  if (header.find("'descr': '<f4'") == std::string::npos) return bad("dtype is not <f4");
  if (header.find("'fortran_order': False") == std::string::npos) return bad("fortran order");
  auto p = header.find("'shape': (");
  if (p == std::string::npos) return bad("no shape");
  auto q = header.find(')', p);
  std::string dims = header.substr(p + 10, q - p - 10);
  NpyArray arr;
  size_t count = 1;
  for (absl::string_view d : absl::StrSplit(dims, ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &v)) return bad("bad shape");
    arr.shape.push_back(v);
    count *= static_cast<size_t>(v);
  }
  const size_t off = hoff + hlen;
  if (b.size() - off != count * 4) return bad("data size does not match shape");
  arr.data.resize(count);
  std::memcpy(arr.data.data(), b.data() + off, count * 4);
  return arr;
}

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const float* data, bool force) {
  std::string dims;
  size_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    absl::StrAppend(&dims, shape[i], shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    if (i + 1 < shape.size()) dims += " ";
    count *= static_cast<size_t>(shape[i]);
  }
  std::string header = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  const uint16_t hl = static_cast<uint16_t>(header.size());
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(hl & 0xFF);
  bytes += static_cast<char>(hl >> 8);
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(data), count * 4);
  return WriteFileAtomic(path, bytes, force);
}

}  // namespace tessera
