// GGUF (llama.cpp / ggml model files): a bounds-checked reader over a memory-mapped file, a
// streaming writer (temporary file + rename), and scalar block decoders for the ggml types.
//
// Layout (little-endian, versions 2 and 3): u32 magic "GGUF", u32 version, u64 tensor_count,
// u64 kv_count, kv_count x {string key, u32 value type, value}, tensor_count x {string name,
// u32 n_dims, u64 dims[n_dims] (innermost first), u32 ggml type, u64 offset}, padding to
// `general.alignment` (default 32), then the data section; every tensor offset is relative to
// the data section and a multiple of the alignment. string = u64 length + bytes; array = u32
// element type + u64 count + elements.
//
// Every length, count, dimension and offset is checked against the file before it is used, so
// a truncated or inconsistent file gives a one-line error that names the file, the key or
// tensor, and the byte offset; it never crashes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/mapped_file.h"

namespace tessera::gguf {

inline constexpr uint32_t kMagic = 0x46554747u;  // "GGUF" read as a little-endian u32
inline constexpr uint32_t kDefaultAlignment = 32;
inline constexpr int kMaxDims = 4;

enum class VType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
const char* VTypeName(VType t);

// ggml tensor types (the subset with a stable file layout that Tessera knows about).
enum GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15, kIQ4_NL = 20, kBF16 = 30,
};
struct TypeInfo {
  const char* name;
  uint32_t block;  // elements per block
  uint32_t bytes;  // bytes per block
  bool decodable;  // DecodeRow supports it
};
// nullptr for a type id this reader does not know.
const TypeInfo* GetTypeInfo(uint32_t type);
std::string TypeName(uint32_t type);  // "Q4_K", or "type 23" for an unknown id

// Decodes n elements (n a multiple of the type's block) from src into out (f32), exactly as
// ggml's reference dequantize_row_* functions compute them. False for an unsupported type.
bool DecodeRow(uint32_t type, const uint8_t* src, size_t n, float* out);

// One metadata value (owning). Scalars: unsigned ints and bool in `u`, signed ints in `i`,
// floats in `f`, strings in `s`. Arrays: `elem` and `count`; string elements in `strs`, numeric
// elements as their raw little-endian bytes in `raw`; arrays of arrays are counted but not kept.
struct Value {
  VType type = VType::kU32;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  std::string s;
  VType elem = VType::kU8;
  uint64_t count = 0;
  std::vector<std::string> strs;
  std::vector<uint8_t> raw;

  static Value U32(uint32_t v);
  static Value I32(int32_t v);
  static Value U64(uint64_t v);
  static Value F32(float v);
  static Value Bool(bool v);
  static Value Str(std::string v);
  static Value StrArray(std::vector<std::string> v);
  static Value F32Array(const std::vector<float>& v);
  static Value I32Array(const std::vector<int32_t>& v);
  std::string Describe() const;  // "u32", "array[string] of 32000", ...
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is the innermost (row length)
  uint32_t type = kF32;
  uint64_t offset = 0;       // relative to the data section
  uint64_t file_offset = 0;  // absolute
  uint64_t bytes = 0;
  uint64_t info_offset = 0;  // where its record starts in the header (for error messages)
  const uint8_t* data = nullptr;

  uint64_t cols() const { return dims.empty() ? 1 : dims[0]; }
  uint64_t rows() const;  // product of dims[1..]
  uint64_t numel() const { return cols() * rows(); }
  uint64_t row_bytes() const;
  // Torch order shape ([rows..., cols], i.e. dims reversed).
  std::vector<int64_t> shape() const;
};

class File {
 public:
  static absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path);
  // Parses an in-memory image (tests); `name` is used in error messages.
  static absl::StatusOr<std::unique_ptr<File>> Parse(std::string name, std::vector<uint8_t> bytes);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return size_; }
  const std::vector<std::pair<std::string, Value>>& kv() const { return kv_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  const Value* Find(const std::string& key) const;
  const TensorInfo* FindTensor(const std::string& name) const;
  bool Has(const std::string& key) const { return Find(key) != nullptr; }
  // Typed accessors: an error naming the file and key when absent or of another type. Integers
  // of any width are accepted where the value fits; floats accept any float or integer type.
  absl::StatusOr<uint64_t> GetUint(const std::string& key) const;
  absl::StatusOr<int64_t> GetInt(const std::string& key) const;
  absl::StatusOr<double> GetFloat(const std::string& key) const;
  absl::StatusOr<bool> GetBool(const std::string& key) const;
  absl::StatusOr<std::string> GetString(const std::string& key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(const std::string& key) const;
  absl::StatusOr<std::vector<float>> GetF32Array(const std::string& key) const;
  absl::StatusOr<std::vector<int32_t>> GetI32Array(const std::string& key) const;
  // An error "PATH: tensor NAME (offset X): what".
  absl::Status TensorError(const TensorInfo& t, const std::string& what) const;
  // Drops the mapped pages of one tensor from the resident set (bounded-memory conversion).
  void Release(const TensorInfo& t) const;

 private:
  absl::Status ParseImpl();
  absl::Status KeyError(const std::string& key, const std::string& what) const;
  std::string path_;
  std::unique_ptr<MappedFile> mapped_;
  std::vector<uint8_t> owned_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0, alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Writes a GGUF v3 file: metadata and tensor infos first, then each tensor's bytes from its
// producer (called once, in order, so only one tensor is in memory at a time). The file is
// written as OUT.tmp-XXXX beside OUT and renamed into place when complete.
class Writer {
 public:
  using Producer = std::function<absl::StatusOr<std::vector<uint8_t>>()>;
  explicit Writer(uint32_t alignment = kDefaultAlignment) : alignment_(alignment) {}
  void Add(const std::string& key, Value v);
  // dims in ggml order. bytes must be what the producer returns.
  void AddTensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, Producer producer);
  absl::Status Write(const std::string& path, bool force) const;
  // The whole file in memory (tests; producers are called).
  absl::StatusOr<std::vector<uint8_t>> Serialize() const;

 private:
  struct T {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t bytes;
    Producer producer;
  };
  absl::Status Emit(const std::function<absl::Status(const void*, size_t)>& put) const;
  uint32_t alignment_;
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<T> tensors_;
};

// Bytes of a tensor of `type` with dims[0] = cols (must be a multiple of the block) and numel.
// 0 when the type is unknown or cols is not a multiple of its block.
uint64_t TensorBytes(uint32_t type, uint64_t cols, uint64_t numel);

}  // namespace tessera::gguf
