#include "formats/tensor_pack.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "core/iq4nl.h"
#include "core/status.h"
#include "xxhash.h"

namespace tessera {
namespace {

constexpr size_t kHeaderBytes = 64;
constexpr size_t kAlign = 64;

size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

template <typename T>
void Put(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  template <typename T>
  bool Get(T* v) {
    if (pos_ + sizeof(T) > n_) return false;
    std::memcpy(v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool GetBytes(size_t len, std::string* out) {
    if (pos_ + len > n_) return false;
    out->assign(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  const uint8_t* p_;
  size_t n_, pos_ = 0;
};

}  // namespace

const char* QTypeName(QType t) {
  switch (t) {
    case QType::kF32: return "f32";
    case QType::kF16: return "f16";
    case QType::kBF16: return "bf16";
    case QType::kI8: return "int8";
    case QType::kI4Sym: return "int4-sym";
    case QType::kI4Asym: return "int4-asym";
    case QType::kI6Sym: return "int6-sym";
    case QType::kI4Nl: return "int4-nl";
  }
  return "unknown";
}

bool QTypeFromName(const std::string& name, QType* out) {
  for (int i = 0; i <= kMaxQType; ++i) {
    if (name == QTypeName(static_cast<QType>(i))) {
      *out = static_cast<QType>(i);
      return true;
    }
  }
  return false;
}

bool IsQuantized(QType t) {
  return t == QType::kI8 || t == QType::kI4Sym || t == QType::kI4Asym || t == QType::kI6Sym || t == QType::kI4Nl;
}

size_t DataPlaneBytes(QType t, size_t rows, size_t cols) {
  switch (t) {
    case QType::kF32: return rows * cols * 4;
    case QType::kF16:
    case QType::kBF16: return rows * cols * 2;
    case QType::kI8: return rows * cols;
    case QType::kI4Sym:
    case QType::kI4Asym:
    case QType::kI4Nl: return rows * cols / 2;
    case QType::kI6Sym: return rows * cols / 4 * 3;
  }
  return 0;
}

size_t ScalePlaneBytes(QType t, size_t rows, size_t cols, size_t group) {
  if (!IsQuantized(t) || group == 0) return 0;
  return rows * (cols / group) * 2;
}

void PackTensor::RowToF32(size_t r, float* out) const {
  const size_t k = logical_cols();
  switch (qtype) {
    case QType::kF32:
      std::memcpy(out, data + r * cols * 4, k * 4);
      return;
    case QType::kF16:
    case QType::kBF16: {
      const uint8_t* p = data + r * cols * 2;
      for (size_t i = 0; i < k; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = qtype == QType::kF16 ? F16ToF32(h) : BF16ToF32(h);
      }
      return;
    }
    case QType::kI8: {
      const int8_t* q = reinterpret_cast<const int8_t*>(data) + r * cols;
      const uint16_t* s = scales + r * (cols / group);
      for (size_t i = 0; i < k; ++i) out[i] = static_cast<float>(q[i]) * F16ToF32(s[i / group]);
      return;
    }
    case QType::kI4Sym:
    case QType::kI4Asym:
    case QType::kI4Nl: {
      const uint8_t* q = data + r * cols / 2;
      const size_t ng = cols / group;
      const uint16_t* s = scales + r * ng;
      const uint16_t* m = mins ? mins + r * ng : nullptr;
      for (size_t i = 0; i < k; ++i) {
        const size_t g = i / group, j = i % group, half = group / 2;
        const uint8_t byte = q[g * half + (j % half)];
        const int nib = j < half ? (byte & 0xF) : (byte >> 4);
        const float sc = F16ToF32(s[g]);
        if (qtype == QType::kI4Nl) {
          out[i] = static_cast<float>(kI4NlLevels[nib]) * sc;
        } else {
          out[i] = qtype == QType::kI4Sym ? static_cast<float>(nib - 8) * sc
                                           : static_cast<float>(nib) * sc + F16ToF32(m[g]);
        }
      }
      return;
    }
    case QType::kI6Sym: {
      // Layout: kernels.h (per group G/2 low-nibble bytes, then G/4 bytes of high 2-bit pairs).
      const uint8_t* q = data + r * cols / 4 * 3;
      const uint16_t* s = scales + r * (cols / group);
      const size_t half = group / 2, quarter = group / 4;
      for (size_t i = 0; i < k; ++i) {
        const size_t g = i / group, j = i % group;
        const uint8_t* lo = q + g * (3 * group / 4);
        const int l = j < half ? (lo[j] & 0xF) : (lo[j - half] >> 4);
        const int h = (lo[half + j % quarter] >> (2 * (j / quarter))) & 3;
        out[i] = static_cast<float>((l | (h << 4)) - 32) * F16ToF32(s[g]);
      }
      return;
    }
  }
}

std::vector<float> PackTensor::ToF32() const {
  std::vector<float> out(rows() * logical_cols());
  for (size_t r = 0; r < rows(); ++r) RowToF32(r, out.data() + r * logical_cols());
  return out;
}

uint64_t TensorPackFileBytes(const std::vector<TensorPackEntry>& tensors) {
  // Mirrors WriteTensorPack's layout: header, index (name, type, rank, dims, group, cols, planes,
  // hash), data region at the next 4096 boundary, every plane 64-aligned.
  uint64_t index = 0, data = 0;
  for (const TensorPackEntry& t : tensors) {
    index += 2 + t.name_bytes + 1 + 1 + 8 * t.rank + 4 + 8 + 1 + 17 * t.planes.size() + 8;
    for (uint64_t b : t.planes) data = AlignUp(data, kAlign) + b;
  }
  return AlignUp(kHeaderBytes + index, 4096) + data;
}

absl::Status WriteTensorPack(const std::string& path, const std::vector<TensorData>& tensors) {
  // Lay out the data region first.
  struct PlaneLoc {
    uint8_t kind;
    uint64_t off, bytes;
    const std::vector<uint8_t>* src;
  };
  std::vector<std::vector<PlaneLoc>> planes(tensors.size());
  uint64_t data_bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorData& t = tensors[i];
    const std::vector<uint8_t>* srcs[3] = {&t.data, &t.scales, &t.mins};
    for (uint8_t k = 0; k < 3; ++k) {
      if (k > 0 && srcs[k]->empty()) continue;
      data_bytes = AlignUp(data_bytes, kAlign);
      planes[i].push_back({k, data_bytes, srcs[k]->size(), srcs[k]});
      data_bytes += srcs[k]->size();
    }
  }
  std::string index;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorData& t = tensors[i];
    Put<uint16_t>(&index, static_cast<uint16_t>(t.name.size()));
    index += t.name;
    Put<uint8_t>(&index, static_cast<uint8_t>(t.qtype));
    Put<uint8_t>(&index, static_cast<uint8_t>(t.shape.size()));
    for (int64_t d : t.shape) Put<uint64_t>(&index, static_cast<uint64_t>(d));
    Put<uint32_t>(&index, t.group);
    Put<uint64_t>(&index, t.cols);
    Put<uint8_t>(&index, static_cast<uint8_t>(planes[i].size()));
    XXH3_state_t* st = XXH3_createState();
    XXH3_64bits_reset(st);
    for (const auto& p : planes[i]) {
      Put<uint8_t>(&index, p.kind);
      Put<uint64_t>(&index, p.off);
      Put<uint64_t>(&index, p.bytes);
      XXH3_64bits_update(st, p.src->data(), p.src->size());
    }
    Put<uint64_t>(&index, XXH3_64bits_digest(st));
    XXH3_freeState(st);
  }
  const uint64_t index_off = kHeaderBytes;
  const uint64_t data_off = AlignUp(index_off + index.size(), 4096);
  std::string header;
  header.append("WPK1", 4);
  Put<uint16_t>(&header, 1);
  Put<uint16_t>(&header, 0);
  Put<uint32_t>(&header, kHeaderBytes);
  Put<uint32_t>(&header, kAlign);
  Put<uint32_t>(&header, 0);
  Put<uint32_t>(&header, static_cast<uint32_t>(tensors.size()));
  Put<uint64_t>(&header, index_off);
  Put<uint64_t>(&header, index.size());
  Put<uint64_t>(&header, data_off);
  Put<uint64_t>(&header, data_bytes);
  Put<uint32_t>(&header, XXH32(index.data(), index.size(), 0));
  Put<uint32_t>(&header, XXH32(header.data(), 60, 0));

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot create"));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(index.data(), static_cast<std::streamsize>(index.size()));
  std::string pad(data_off - index_off - index.size(), '\0');
  out.write(pad.data(), static_cast<std::streamsize>(pad.size()));
  uint64_t pos = 0;
  for (const auto& tp : planes) {
    for (const auto& p : tp) {
      if (p.off > pos) {
        std::string z(p.off - pos, '\0');
        out.write(z.data(), static_cast<std::streamsize>(z.size()));
      }
      out.write(reinterpret_cast<const char*>(p.src->data()), static_cast<std::streamsize>(p.bytes));
      pos = p.off + p.bytes;
    }
  }
  out.flush();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed (disk full?)"));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TensorPack>> TensorPack::Open(const std::string& path,
                                                             bool verify_checksums, LoadMode mode) {
  std::unique_ptr<TensorPack> pack(new TensorPack());
  const bool index_only = mode == LoadMode::kIndexOnly;
  if (index_only) {
    verify_checksums = false;
    std::error_code ec;
    const auto fsize = std::filesystem::file_size(path, ec);
    if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", ec.message()));
    if (fsize < kHeaderBytes) return FileError(path, absl::StrCat("truncated: ", fsize, " bytes, header needs 64"));
    TESSERA_ASSIGN_OR_RETURN(auto head, MappedFile::ReadRange(path, 0, kHeaderBytes));
    uint64_t data_off_peek;
    std::memcpy(&data_off_peek, head->data() + 40, 8);
    if (data_off_peek > fsize || data_off_peek < kHeaderBytes)
      return FileError(path, absl::StrCat("bad data offset ", data_off_peek, " (file has ", fsize, " bytes)"));
    TESSERA_ASSIGN_OR_RETURN(pack->file_, MappedFile::ReadRange(path, 0, data_off_peek));
    pack->file_bytes_ = fsize;
  } else if (mode == LoadMode::kRead) {
    TESSERA_ASSIGN_OR_RETURN(pack->file_, MappedFile::ReadAll(path));
    pack->file_bytes_ = pack->file_->size();
  } else {
    TESSERA_ASSIGN_OR_RETURN(pack->file_, MappedFile::Open(path));
    pack->file_bytes_ = pack->file_->size();
  }
  const uint8_t* base = pack->file_->data();
  const size_t size = pack->file_bytes_;
  if (size < kHeaderBytes) return FileError(path, absl::StrCat("truncated: ", size, " bytes, header needs 64"));
  if (std::memcmp(base, "WPK1", 4) != 0) return FileError(path, "not a Tessera tensor pack (bad magic)");
  Cursor h(base, kHeaderBytes);
  char magic[4];
  uint16_t major, minor;
  uint32_t header_bytes, alignment, flags, n_tensors, index_xxh, header_xxh;
  uint64_t index_off, index_bytes, data_off, data_bytes;
  h.Get(&magic);
  h.Get(&major);
  h.Get(&minor);
  h.Get(&header_bytes);
  h.Get(&alignment);
  h.Get(&flags);
  h.Get(&n_tensors);
  h.Get(&index_off);
  h.Get(&index_bytes);
  h.Get(&data_off);
  h.Get(&data_bytes);
  h.Get(&index_xxh);
  h.Get(&header_xxh);
  if (XXH32(base, 60, 0) != header_xxh) return FileError(path, "header checksum mismatch (corrupt header)");
  if (major != 1) return FileError(path, absl::StrCat("unsupported pack version ", major, ".", minor));
  if (index_off > size || index_bytes > size - index_off || (index_only && index_off + index_bytes > data_off))
    return FileError(path, absl::StrCat("index [", index_off, ", +", index_bytes, ") outside the file (", size, " bytes)"));
  if (data_off > size || data_bytes > size - data_off)
    return FileError(path, absl::StrCat("truncated: data region [", data_off, ", +", data_bytes,
                                        ") extends past the end of the file (", size, " bytes)"));
  if (XXH32(base + index_off, index_bytes, 0) != index_xxh)
    return FileError(path, absl::StrCat("index checksum mismatch at offset ", index_off, " (corrupt index)"));
  const uint8_t* data = index_only ? nullptr : base + data_off;
  Cursor c(base + index_off, index_bytes);
  for (uint32_t i = 0; i < n_tensors; ++i) {
    PackTensor t;
    uint16_t name_len;
    uint8_t qtype, ndim, n_planes;
    auto trunc = [&] { return FileError(path, absl::StrCat("index truncated in record ", i)); };
    if (!c.Get(&name_len) || !c.GetBytes(name_len, &t.name) || !c.Get(&qtype) || !c.Get(&ndim)) return trunc();
    if (qtype > kMaxQType) return FileError(path, absl::StrCat("tensor ", t.name, ": unknown qtype ", int{qtype}));
    t.qtype = static_cast<QType>(qtype);
    if (ndim == 0 || ndim > 4) return FileError(path, absl::StrCat("tensor ", t.name, ": bad ndim ", int{ndim}));
    size_t numel = 1;
    for (uint8_t d = 0; d < ndim; ++d) {
      uint64_t v;
      if (!c.Get(&v)) return trunc();
      if (v == 0 || v > (uint64_t{1} << 32)) return FileError(path, absl::StrCat("tensor ", t.name, ": bad dimension ", v));
      t.shape.push_back(static_cast<int64_t>(v));
      numel *= v;
      if (numel > (uint64_t{1} << 40)) return FileError(path, absl::StrCat("tensor ", t.name, ": too large"));
    }
    if (!c.Get(&t.group) || !c.Get(&t.cols) || !c.Get(&n_planes)) return trunc();
    const size_t rows = t.rows(), k = t.logical_cols();
    if (IsQuantized(t.qtype)) {
      if (t.group == 0 || t.group % 2 != 0 || t.cols % t.group != 0 || t.cols < k || t.cols - k >= t.group ||
          ((t.qtype == QType::kI6Sym || t.qtype == QType::kI4Nl) && t.group % 32 != 0))
        return FileError(path, absl::StrCat("tensor ", t.name, ": inconsistent group ", t.group, " / cols ", t.cols));
    } else if (t.cols != k) {
      return FileError(path, absl::StrCat("tensor ", t.name, ": cols ", t.cols, " != ", k));
    }
    const size_t expect[3] = {DataPlaneBytes(t.qtype, rows, t.cols),
                              ScalePlaneBytes(t.qtype, rows, t.cols, t.group),
                              t.qtype == QType::kI4Asym ? ScalePlaneBytes(t.qtype, rows, t.cols, t.group) : 0};
    const size_t want_planes = expect[2] ? 3 : (expect[1] ? 2 : 1);
    if (n_planes != want_planes)
      return FileError(path, absl::StrCat("tensor ", t.name, ": ", int{n_planes}, " planes, expected ", want_planes));
    XXH3_state_t* st = XXH3_createState();
    XXH3_64bits_reset(st);
    for (uint8_t p = 0; p < n_planes; ++p) {
      uint8_t kind;
      uint64_t off, bytes;
      if (!c.Get(&kind) || !c.Get(&off) || !c.Get(&bytes)) {
        XXH3_freeState(st);
        return trunc();
      }
      if (kind != p || bytes != expect[p] || off > data_bytes || bytes > data_bytes - off ||
          (data_off + off) % kAlign != 0) {
        XXH3_freeState(st);
        return FileError(path, absl::StrCat("tensor ", t.name, ": plane ", int{p}, " at offset ",
                                            data_off + off, " (", bytes, " bytes) is out of bounds or malformed"));
      }
      const uint8_t* ptr = index_only ? nullptr : data + off;
      t.plane_offset[p] = data_off + off;
      t.plane_bytes[p] = bytes;
      if (p == 0) {
        t.data = ptr;
        t.data_bytes = bytes;
        t.file_offset = data_off + off;
      } else if (p == 1) {
        t.scales = reinterpret_cast<const uint16_t*>(ptr);
      } else {
        t.mins = reinterpret_cast<const uint16_t*>(ptr);
      }
      t.total_bytes += bytes;
      if (verify_checksums) XXH3_64bits_update(st, ptr, bytes);
    }
    uint64_t sum = verify_checksums ? XXH3_64bits_digest(st) : 0;
    XXH3_freeState(st);
    if (!c.Get(&t.checksum)) return trunc();
    if (verify_checksums && sum != t.checksum)
      return FileError(path, absl::StrCat("tensor ", t.name, ": checksum mismatch (data at offset ",
                                          t.file_offset, " is corrupt)"));
    if (pack->by_name_.count(t.name)) return FileError(path, absl::StrCat("duplicate tensor ", t.name));
    pack->by_name_[t.name] = pack->tensors_.size();
    pack->tensors_.push_back(std::move(t));
  }
  // Hashing touched every page of a mapped file: let them go until they are used (keeps the
  // resident set of conversion and quantization bounded by what is being worked on).
  if (verify_checksums && mode == LoadMode::kMmap) pack->file_->DropPages(0, pack->file_bytes_);
  return pack;
}

absl::Status TensorPack::VerifyTensor(const PackTensor& t) const {
  if (t.data == nullptr) return FileError(path(), absl::StrCat("tensor ", t.name, ": not loaded (index only)"));
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  for (int p = 0; p < 3; ++p)
    if (t.plane_bytes[p] > 0) XXH3_64bits_update(st, file_->data() + t.plane_offset[p], t.plane_bytes[p]);
  const uint64_t sum = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  if (sum != t.checksum)
    return FileError(path(), absl::StrCat("tensor ", t.name, ": checksum mismatch (data at offset ", t.file_offset,
                                          " is corrupt)"));
  return absl::OkStatus();
}

const PackTensor* TensorPack::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<const PackTensor*> TensorPack::Get(const std::string& name) const {
  const PackTensor* t = Find(name);
  if (t == nullptr) return FileError(path(), absl::StrCat("missing tensor ", name));
  return t;
}

}  // namespace tessera
