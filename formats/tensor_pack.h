// Tensor pack files (embedding.bin, block_N.bin, lm.bin): a self-describing, versioned,
// checksummed container whose tensor planes are 64-byte aligned for mmap + SIMD.
//
// Layout (little-endian):
//   header (64 bytes)
//     0  char[4] magic "WPK1"        4  u16 major (1)      6  u16 minor (0)
//     8  u32 header_bytes (64)       12 u32 alignment (64) 16 u32 flags (0)
//     20 u32 n_tensors               24 u64 index_off      32 u64 index_bytes
//     40 u64 data_off                48 u64 data_bytes     56 u32 xxh32(index)
//     60 u32 xxh32(header bytes 0..59)
//   index: n_tensors records
//     u16 name_len, name bytes (canonical name, e.g. "attn_q")
//     u8 qtype (QType), u8 ndim, u64 shape[ndim] (logical, torch order [out, in])
//     u32 group (0 for float types), u64 cols (row length as stored, >= logical K, padded to
//     a multiple of group for quantized types; int6 / int4-nl groups are multiples of 32), u8 n_planes,
//     n_planes x {u8 kind (PlaneKind), u64 offset (from data_off), u64 bytes}
//     u64 xxh3_64 over the planes' bytes in order
//   data: planes, each starting on a 64-byte boundary of the file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/mapped_file.h"

namespace tessera {

// Same numbering as kernels::WType.
// kI4Nl: int4 codes indexing IQ4_NL's 16 non-uniform levels (core/iq4nl.h).
enum class QType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2, kI8 = 3, kI4Sym = 4, kI4Asym = 5, kI6Sym = 6, kI4Nl = 7 };
constexpr int kMaxQType = 7;
enum class PlaneKind : uint8_t { kData = 0, kScales = 1, kMins = 2 };

const char* QTypeName(QType t);
bool QTypeFromName(const std::string& name, QType* out);
bool IsQuantized(QType t);

// Expected bytes of each plane for a tensor of `rows` x `cols` (stored cols).
size_t DataPlaneBytes(QType t, size_t rows, size_t cols);
size_t ScalePlaneBytes(QType t, size_t rows, size_t cols, size_t group);

// A tensor to be written (owns its bytes).
struct TensorData {
  std::string name;
  QType qtype = QType::kF32;
  std::vector<int64_t> shape;
  uint32_t group = 0;
  uint64_t cols = 0;
  std::vector<uint8_t> data, scales, mins;

  size_t rows() const { return shape.size() >= 2 ? static_cast<size_t>(shape[0]) : 1; }
};

// A tensor inside an opened pack (views into the mapped file).
struct PackTensor {
  std::string name;
  QType qtype = QType::kF32;
  std::vector<int64_t> shape;
  uint32_t group = 0;
  uint64_t cols = 0;
  const uint8_t* data = nullptr;
  size_t data_bytes = 0;
  const uint16_t* scales = nullptr;
  const uint16_t* mins = nullptr;
  uint64_t checksum = 0;
  uint64_t file_offset = 0;  // of the first plane
  uint64_t plane_offset[3] = {0, 0, 0};  // file offsets of data, scales, mins
  uint64_t plane_bytes[3] = {0, 0, 0};
  size_t total_bytes = 0;    // all planes

  size_t rows() const { return shape.size() >= 2 ? static_cast<size_t>(shape[0]) : 1; }
  size_t logical_cols() const { return shape.empty() ? 1 : static_cast<size_t>(shape.back()); }
  size_t numel() const {
    size_t n = 1;
    for (auto d : shape) n *= static_cast<size_t>(d);
    return n;
  }
  // Dequantizes row r (logical_cols() floats) into out.
  void RowToF32(size_t r, float* out) const;
  // Whole tensor as f32, [rows][logical_cols].
  std::vector<float> ToF32() const;
};

// Writes a pack atomically enough for our purposes: the caller writes into a temporary
// directory and renames it into place when everything succeeded.
absl::Status WriteTensorPack(const std::string& path, const std::vector<TensorData>& tensors);

// The exact size of the file WriteTensorPack writes, from each tensor's name length, rank and
// plane sizes (data, then scales and mins when not empty) - for planning a package's size.
struct TensorPackEntry {
  size_t name_bytes = 0, rank = 0;
  std::vector<uint64_t> planes;  // data bytes first; only the non-empty scale/min planes after it
};
uint64_t TensorPackFileBytes(const std::vector<TensorPackEntry>& tensors);

enum class LoadMode {
  kMmap,       // map the file (default)
  kRead,       // read the whole file into memory (pread), no mmap
  kIndexOnly,  // read only the header and index; tensors have offsets but no data pointers
};

class TensorPack {
 public:
  // Opens and validates the header, the index and every plane's bounds; with verify_checksums,
  // also hashes every tensor (not possible with kIndexOnly).
  static absl::StatusOr<std::unique_ptr<TensorPack>> Open(const std::string& path,
                                                          bool verify_checksums = true,
                                                          LoadMode mode = LoadMode::kMmap);
  const PackTensor* Find(const std::string& name) const;
  // Hashes one tensor's planes and compares with the index (not with kIndexOnly); the error
  // names the file, the tensor and its offset.
  absl::Status VerifyTensor(const PackTensor& t) const;
  // Drops the file's mapped pages from the resident set (mmap mode; see MappedFile::DropPages).
  void ReleasePages() const { file_->DropPages(0, file_->size()); }
  // Like Find, but an error naming the file when missing.
  absl::StatusOr<const PackTensor*> Get(const std::string& name) const;
  const std::vector<PackTensor>& tensors() const { return tensors_; }
  const std::string& path() const { return file_->path(); }
  size_t file_bytes() const { return file_bytes_; }

 private:
  std::unique_ptr<MappedFile> file_;
  size_t file_bytes_ = 0;
  std::vector<PackTensor> tensors_;
  std::map<std::string, size_t> by_name_;
};

}  // namespace tessera
