#include "formats/gguf.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "core/iq4nl.h"
#include "core/status.h"

namespace tessera::gguf {
namespace fs = std::filesystem;

namespace {

const TypeInfo kTypes[] = {
    /*0*/ {"F32", 1, 4, true},      /*1*/ {"F16", 1, 2, true},      /*2*/ {"Q4_0", 32, 18, true},
    /*3*/ {"Q4_1", 32, 20, true},   /*4*/ {nullptr, 0, 0, false},   /*5*/ {nullptr, 0, 0, false},
    /*6*/ {"Q5_0", 32, 22, true},   /*7*/ {"Q5_1", 32, 24, true},   /*8*/ {"Q8_0", 32, 34, true},
    /*9*/ {"Q8_1", 32, 36, false},  /*10*/ {"Q2_K", 256, 84, false}, /*11*/ {"Q3_K", 256, 110, false},
    /*12*/ {"Q4_K", 256, 144, true}, /*13*/ {"Q5_K", 256, 176, true}, /*14*/ {"Q6_K", 256, 210, true},
    /*15*/ {"Q8_K", 256, 292, false},
};
const TypeInfo kBF16Info = {"BF16", 1, 2, true};
// IQ4_NL: f16 d + 16 bytes of nibbles (Q4_0's order), w = kI4NlLevels[nibble] * d.
const TypeInfo kIQ4NLInfo = {"IQ4_NL", 32, 18, true};

size_t ScalarSize(VType t) {
  switch (t) {
    case VType::kU8: case VType::kI8: case VType::kBool: return 1;
    case VType::kU16: case VType::kI16: return 2;
    case VType::kU32: case VType::kI32: case VType::kF32: return 4;
    case VType::kU64: case VType::kI64: case VType::kF64: return 8;
    default: return 0;
  }
}

uint16_t Ld16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
uint32_t Ld32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }

void GetScaleMinK4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Reads scalars from a byte range with bounds checks; every failure names the offset.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t n) : p_(p), n_(n) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return n_ - pos_; }
  bool Take(void* out, uint64_t k) {
    if (k > left()) return false;
    std::memcpy(out, p_ + pos_, k);
    pos_ += k;
    return true;
  }
  bool Skip(uint64_t k) {
    if (k > left()) return false;
    pos_ += k;
    return true;
  }
  template <typename T> bool Get(T* v) { return Take(v, sizeof(T)); }
  const uint8_t* here() const { return p_ + pos_; }

 private:
  const uint8_t* p_;
  uint64_t n_, pos_ = 0;
};

}  // namespace

const char* VTypeName(VType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < 13 ? names[i] : "unknown";
}

const TypeInfo* GetTypeInfo(uint32_t type) {
  if (type == kBF16) return &kBF16Info;
  if (type == kIQ4_NL) return &kIQ4NLInfo;
  if (type < sizeof(kTypes) / sizeof(kTypes[0]) && kTypes[type].name != nullptr) return &kTypes[type];
  return nullptr;
}

std::string TypeName(uint32_t type) {
  const TypeInfo* t = GetTypeInfo(type);
  return t ? t->name : absl::StrCat("type ", type);
}

uint64_t TensorBytes(uint32_t type, uint64_t cols, uint64_t numel) {
  const TypeInfo* t = GetTypeInfo(type);
  if (t == nullptr || cols == 0 || cols % t->block != 0 || numel % cols != 0) return 0;
  return numel / t->block * t->bytes;
}

bool DecodeRow(uint32_t type, const uint8_t* x, size_t n, float* y) {
  const TypeInfo* ti = GetTypeInfo(type);
  if (ti == nullptr || !ti->decodable || n % ti->block != 0) return false;
  const size_t nb = n / ti->block;
  switch (type) {
    case kF32:
      std::memcpy(y, x, n * 4);
      return true;
    case kF16:
      for (size_t i = 0; i < n; ++i) y[i] = F16ToF32(Ld16(x + 2 * i));
      return true;
    case kBF16:
      for (size_t i = 0; i < n; ++i) y[i] = BF16ToF32(Ld16(x + 2 * i));
      return true;
    case kQ4_0:
      for (size_t b = 0; b < nb; ++b, x += 18, y += 32) {
        const float d = F16ToF32(Ld16(x));
        for (int j = 0; j < 16; ++j) {
          y[j] = static_cast<float>((x[2 + j] & 0xF) - 8) * d;
          y[j + 16] = static_cast<float>((x[2 + j] >> 4) - 8) * d;
        }
      }
      return true;
    case kIQ4_NL:
      for (size_t b = 0; b < nb; ++b, x += 18, y += 32) {
        const float d = F16ToF32(Ld16(x));
        for (int j = 0; j < 16; ++j) {
          y[j] = static_cast<float>(kI4NlLevels[x[2 + j] & 0xF]) * d;
          y[j + 16] = static_cast<float>(kI4NlLevels[x[2 + j] >> 4]) * d;
        }
      }
      return true;
    case kQ4_1:
      for (size_t b = 0; b < nb; ++b, x += 20, y += 32) {
        const float d = F16ToF32(Ld16(x)), m = F16ToF32(Ld16(x + 2));
        for (int j = 0; j < 16; ++j) {
          y[j] = static_cast<float>(x[4 + j] & 0xF) * d + m;
          y[j + 16] = static_cast<float>(x[4 + j] >> 4) * d + m;
        }
      }
      return true;
    case kQ5_0:
      for (size_t b = 0; b < nb; ++b, x += 22, y += 32) {
        const float d = F16ToF32(Ld16(x));
        const uint32_t qh = Ld32(x + 2);
        const uint8_t* qs = x + 6;
        for (int j = 0; j < 16; ++j) {
          const int h0 = static_cast<int>(((qh >> j) << 4) & 0x10);
          const int h1 = static_cast<int>((qh >> (j + 12)) & 0x10);
          y[j] = static_cast<float>(((qs[j] & 0xF) | h0) - 16) * d;
          y[j + 16] = static_cast<float>(((qs[j] >> 4) | h1) - 16) * d;
        }
      }
      return true;
    case kQ5_1:
      for (size_t b = 0; b < nb; ++b, x += 24, y += 32) {
        const float d = F16ToF32(Ld16(x)), m = F16ToF32(Ld16(x + 2));
        const uint32_t qh = Ld32(x + 4);
        const uint8_t* qs = x + 8;
        for (int j = 0; j < 16; ++j) {
          const int h0 = static_cast<int>(((qh >> j) << 4) & 0x10);
          const int h1 = static_cast<int>((qh >> (j + 12)) & 0x10);
          y[j] = static_cast<float>((qs[j] & 0xF) | h0) * d + m;
          y[j + 16] = static_cast<float>((qs[j] >> 4) | h1) * d + m;
        }
      }
      return true;
    case kQ8_0:
      for (size_t b = 0; b < nb; ++b, x += 34, y += 32) {
        const float d = F16ToF32(Ld16(x));
        for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(x[2 + j])) * d;
      }
      return true;
    case kQ4_K:
      for (size_t b = 0; b < nb; ++b, x += 144) {
        const float d = F16ToF32(Ld16(x)), dmin = F16ToF32(Ld16(x + 2));
        const uint8_t* sc = x + 4;
        const uint8_t* q = x + 16;
        int is = 0;
        for (int j = 0; j < 256; j += 64, q += 32, is += 2) {
          uint8_t s, m;
          GetScaleMinK4(is, sc, &s, &m);
          const float d1 = d * s, m1 = dmin * m;
          GetScaleMinK4(is + 1, sc, &s, &m);
          const float d2 = d * s, m2 = dmin * m;
          for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
        }
      }
      return true;
    case kQ5_K:
      for (size_t b = 0; b < nb; ++b, x += 176) {
        const float d = F16ToF32(Ld16(x)), dmin = F16ToF32(Ld16(x + 2));
        const uint8_t* sc = x + 4;
        const uint8_t* qh = x + 16;
        const uint8_t* ql = x + 48;
        int is = 0;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < 256; j += 64, ql += 32, is += 2, u1 <<= 2, u2 <<= 2) {
          uint8_t s, m;
          GetScaleMinK4(is, sc, &s, &m);
          const float d1 = d * s, m1 = dmin * m;
          GetScaleMinK4(is + 1, sc, &s, &m);
          const float d2 = d * s, m2 = dmin * m;
          for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
      }
      return true;
    case kQ6_K:
      for (size_t b = 0; b < nb; ++b, x += 210) {
        const float d = F16ToF32(Ld16(x + 208));
        const uint8_t* ql = x;
        const uint8_t* qh = x + 128;
        const auto* sc = reinterpret_cast<const int8_t*>(x + 192);
        for (int n128 = 0; n128 < 256; n128 += 128, y += 128, ql += 64, qh += 32, sc += 8) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * sc[is + 0] * static_cast<float>(q1);
            y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
            y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
            y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
          }
        }
      }
      return true;
    default:
      return false;
  }
}

// ---- Value ----

Value Value::U32(uint32_t v) { Value x; x.type = VType::kU32; x.u = v; return x; }
Value Value::I32(int32_t v) { Value x; x.type = VType::kI32; x.i = v; return x; }
Value Value::U64(uint64_t v) { Value x; x.type = VType::kU64; x.u = v; return x; }
Value Value::F32(float v) { Value x; x.type = VType::kF32; x.f = v; return x; }
Value Value::Bool(bool v) { Value x; x.type = VType::kBool; x.u = v ? 1 : 0; return x; }
Value Value::Str(std::string v) { Value x; x.type = VType::kString; x.s = std::move(v); return x; }
Value Value::StrArray(std::vector<std::string> v) {
  Value x;
  x.type = VType::kArray;
  x.elem = VType::kString;
  x.count = v.size();
  x.strs = std::move(v);
  return x;
}
Value Value::F32Array(const std::vector<float>& v) {
  Value x;
  x.type = VType::kArray;
  x.elem = VType::kF32;
  x.count = v.size();
  x.raw.resize(v.size() * 4);
  if (!v.empty()) std::memcpy(x.raw.data(), v.data(), x.raw.size());
  return x;
}
Value Value::I32Array(const std::vector<int32_t>& v) {
  Value x;
  x.type = VType::kArray;
  x.elem = VType::kI32;
  x.count = v.size();
  x.raw.resize(v.size() * 4);
  if (!v.empty()) std::memcpy(x.raw.data(), v.data(), x.raw.size());
  return x;
}
std::string Value::Describe() const {
  if (type == VType::kArray) return absl::StrCat("array[", VTypeName(elem), "] of ", count);
  return VTypeName(type);
}

// ---- TensorInfo ----

uint64_t TensorInfo::rows() const {
  uint64_t r = 1;
  for (size_t i = 1; i < dims.size(); ++i) r *= dims[i];
  return r;
}
uint64_t TensorInfo::row_bytes() const { return TensorBytes(type, cols(), cols()); }
std::vector<int64_t> TensorInfo::shape() const {
  std::vector<int64_t> s;
  for (size_t i = dims.size(); i-- > 0;) s.push_back(static_cast<int64_t>(dims[i]));
  return s;
}

// ---- File ----

absl::StatusOr<std::unique_ptr<File>> File::Open(const std::string& path) {
  auto f = std::unique_ptr<File>(new File());
  f->path_ = path;
  TESSERA_ASSIGN_OR_RETURN(f->mapped_, MappedFile::Open(path));
  f->base_ = f->mapped_->data();
  f->size_ = f->mapped_->size();
  TESSERA_RETURN_IF_ERROR(f->ParseImpl());
  return f;
}

absl::StatusOr<std::unique_ptr<File>> File::Parse(std::string name, std::vector<uint8_t> bytes) {
  auto f = std::unique_ptr<File>(new File());
  f->path_ = std::move(name);
  f->owned_ = std::move(bytes);
  f->base_ = f->owned_.data();
  f->size_ = f->owned_.size();
  TESSERA_RETURN_IF_ERROR(f->ParseImpl());
  return f;
}

absl::Status File::ParseImpl() {
  Cursor c(base_, size_);
  auto err = [&](const std::string& what) { return FileError(path_, what); };
  auto trunc = [&](const std::string& what) {
    return err(absl::StrCat("truncated file (", size_, " bytes) at offset ", c.pos(), " while reading ", what));
  };
  uint32_t magic = 0;
  if (!c.Get(&magic)) return trunc("the magic");
  if (magic != kMagic) return err("not a GGUF file (bad magic at offset 0)");
  if (!c.Get(&version_)) return trunc("the version");
  if (version_ == 0x03000000u || version_ == 0x02000000u)
    return err("big-endian GGUF files are not supported (version field at offset 4)");
  if (version_ != 2 && version_ != 3)
    return err(absl::StrCat("unsupported GGUF version ", version_, " at offset 4 (supported: 2, 3)"));
  uint64_t n_tensors = 0, n_kv = 0;
  if (!c.Get(&n_tensors)) return trunc("the tensor count");
  if (!c.Get(&n_kv)) return trunc("the metadata count");
  // Each kv takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info at least 8 + 4 + 8 + 4 + 8.
  if (n_kv > c.left() / 13)
    return err(absl::StrCat("metadata count ", n_kv, " at offset 16 exceeds what the ", size_, "-byte file can hold (truncated?)"));
  if (n_tensors > c.left() / 32)
    return err(absl::StrCat("tensor count ", n_tensors, " at offset 8 exceeds what the ", size_, "-byte file can hold (truncated?)"));

  auto read_string = [&](std::string* s, const std::string& what) -> absl::Status {
    const uint64_t at = c.pos();
    uint64_t len = 0;
    if (!c.Get(&len)) return trunc(what);
    if (len > c.left())
      return err(absl::StrCat(what, ": string length ", len, " at offset ", at, " runs past the end of the file (",
                              size_, " bytes)"));
    s->assign(reinterpret_cast<const char*>(c.here()), len);
    c.Skip(len);
    return absl::OkStatus();
  };

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    TESSERA_RETURN_IF_ERROR(read_string(&key, absl::StrCat("the key of metadata entry ", k)));
    const uint64_t at = c.pos();
    uint32_t vt = 0;
    if (!c.Get(&vt)) return trunc(absl::StrCat("the type of key '", key, "'"));
    Value v;
    v.type = static_cast<VType>(vt);
    const std::string what = absl::StrCat("key '", key, "'");
    if (vt > 12) return err(absl::StrCat(what, ": unknown value type ", vt, " at offset ", at));
    if (v.type == VType::kString) {
      TESSERA_RETURN_IF_ERROR(read_string(&v.s, what));
    } else if (v.type == VType::kArray) {
      uint32_t et = 0;
      if (!c.Get(&et)) return trunc(what);
      if (et > 12) return err(absl::StrCat(what, ": unknown array element type ", et, " at offset ", at + 4));
      v.elem = static_cast<VType>(et);
      const uint64_t cat = c.pos();
      if (!c.Get(&v.count)) return trunc(what);
      if (v.elem == VType::kString) {
        if (v.count > c.left() / 8)
          return err(absl::StrCat(what, ": array count ", v.count, " at offset ", cat, " exceeds the file"));
        v.strs.resize(v.count);
        for (uint64_t e = 0; e < v.count; ++e)
          TESSERA_RETURN_IF_ERROR(read_string(&v.strs[e], absl::StrCat(what, " element ", e)));
      } else if (v.elem == VType::kArray) {
        return err(absl::StrCat(what, ": arrays of arrays are not supported (offset ", at, ")"));
      } else {
        const size_t es = ScalarSize(v.elem);
        if (v.count > c.left() / es)
          return err(absl::StrCat(what, ": array count ", v.count, " at offset ", cat, " runs past the end of the file (",
                                  size_, " bytes)"));
        v.raw.assign(c.here(), c.here() + v.count * es);
        c.Skip(v.count * es);
      }
    } else {
      uint8_t buf[8] = {0};
      const size_t sz = ScalarSize(v.type);
      if (!c.Take(buf, sz)) return trunc(what);
      switch (v.type) {
        case VType::kU8: v.u = buf[0]; break;
        case VType::kBool:
          if (buf[0] > 1) return err(absl::StrCat(what, ": bool value ", int{buf[0]}, " at offset ", at + 4));
          v.u = buf[0];
          break;
        case VType::kI8: v.i = static_cast<int8_t>(buf[0]); break;
        case VType::kU16: { uint16_t x; std::memcpy(&x, buf, 2); v.u = x; break; }
        case VType::kI16: { int16_t x; std::memcpy(&x, buf, 2); v.i = x; break; }
        case VType::kU32: { uint32_t x; std::memcpy(&x, buf, 4); v.u = x; break; }
        case VType::kI32: { int32_t x; std::memcpy(&x, buf, 4); v.i = x; break; }
        case VType::kF32: { float x; std::memcpy(&x, buf, 4); v.f = x; break; }
        case VType::kU64: { uint64_t x; std::memcpy(&x, buf, 8); v.u = x; break; }
        case VType::kI64: { int64_t x; std::memcpy(&x, buf, 8); v.i = x; break; }
        case VType::kF64: { double x; std::memcpy(&x, buf, 8); v.f = x; break; }
        default: break;
      }
    }
    if (kv_index_.count(key)) return err(absl::StrCat("duplicate key '", key, "' at offset ", at));
    kv_index_[key] = kv_.size();
    kv_.emplace_back(std::move(key), std::move(v));
  }

  alignment_ = kDefaultAlignment;
  if (const Value* a = Find("general.alignment")) {
    if (a->type != VType::kU32)
      return err(absl::StrCat("key 'general.alignment' has type ", a->Describe(), " (expected u32)"));
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      return err(absl::StrCat("key 'general.alignment' = ", a->u, " is not a power of two"));
    alignment_ = static_cast<uint32_t>(a->u);
  }

  tensors_.resize(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo& t = tensors_[k];
    t.info_offset = c.pos();
    TESSERA_RETURN_IF_ERROR(read_string(&t.name, absl::StrCat("the name of tensor ", k)));
    const std::string what = absl::StrCat("tensor '", t.name, "'");
    uint32_t nd = 0;
    if (!c.Get(&nd)) return trunc(what);
    if (nd == 0 || nd > kMaxDims)
      return err(absl::StrCat(what, ": ", nd, " dimensions at offset ", c.pos() - 4, " (1..", kMaxDims, " allowed)"));
    t.dims.resize(nd);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      if (!c.Get(&t.dims[d])) return trunc(what);
      if (t.dims[d] == 0 || t.dims[d] > (uint64_t{1} << 40) || numel > (uint64_t{1} << 42) / t.dims[d])
        return err(absl::StrCat(what, ": bad dimension ", t.dims[d], " at offset ", c.pos() - 8));
      numel *= t.dims[d];
    }
    const uint64_t type_at = c.pos();
    if (!c.Get(&t.type)) return trunc(what);
    if (!c.Get(&t.offset)) return trunc(what);
    const TypeInfo* ti = GetTypeInfo(t.type);
    if (ti == nullptr) return err(absl::StrCat(what, ": unknown ggml type ", t.type, " at offset ", type_at));
    if (t.dims[0] % ti->block != 0)
      return err(absl::StrCat(what, ": row length ", t.dims[0], " is not a multiple of the ", ti->name, " block (",
                              ti->block, ")"));
    t.bytes = TensorBytes(t.type, t.dims[0], numel);
    if (t.offset % alignment_ != 0)
      return err(absl::StrCat(what, ": data offset ", t.offset, " is not a multiple of the alignment ", alignment_));
    if (tensor_index_.count(t.name)) return err(absl::StrCat("duplicate tensor name '", t.name, "' at offset ", t.info_offset));
    tensor_index_[t.name] = k;
  }
  const uint64_t end = c.pos();
  data_offset_ = (end + alignment_ - 1) / alignment_ * alignment_;
  if (data_offset_ > size_ && n_tensors > 0)
    return err(absl::StrCat("truncated file (", size_, " bytes): the data section would start at offset ", data_offset_));
  // Bounds and overlap of the tensor data.
  std::vector<const TensorInfo*> by_off;
  for (auto& t : tensors_) {
    const uint64_t avail = size_ - std::min<uint64_t>(size_, data_offset_);
    if (t.offset > avail || t.bytes > avail - t.offset)
      return err(absl::StrCat("tensor '", t.name, "' (", TypeName(t.type), ", ", t.bytes, " bytes at data offset ", t.offset,
                              ") runs past the end of the file (", size_, " bytes; data section at ", data_offset_,
                              ") — truncated file?"));
    t.file_offset = data_offset_ + t.offset;
    t.data = base_ + t.file_offset;
    by_off.push_back(&t);
  }
  std::sort(by_off.begin(), by_off.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_off.size(); ++i)
    if (by_off[i - 1]->offset + by_off[i - 1]->bytes > by_off[i]->offset)
      return err(absl::StrCat("tensors '", by_off[i - 1]->name, "' and '", by_off[i]->name, "' overlap (data offsets ",
                              by_off[i - 1]->offset, " and ", by_off[i]->offset, ")"));
  return absl::OkStatus();
}

const Value* File::Find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}
const TensorInfo* File::FindTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}
absl::Status File::KeyError(const std::string& key, const std::string& what) const {
  return FileError(path_, absl::StrCat("key '", key, "': ", what));
}
absl::Status File::TensorError(const TensorInfo& t, const std::string& what) const {
  return FileError(path_, absl::StrCat("tensor '", t.name, "' (", TypeName(t.type), " at offset ", t.file_offset, "): ", what));
}
void File::Release(const TensorInfo& t) const {
  if (mapped_) mapped_->DropPages(t.file_offset, t.bytes);
}

absl::StatusOr<uint64_t> File::GetUint(const std::string& key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyError(key, "missing");
  switch (v->type) {
    case VType::kU8: case VType::kU16: case VType::kU32: case VType::kU64: return v->u;
    case VType::kI8: case VType::kI16: case VType::kI32: case VType::kI64:
      if (v->i < 0) return KeyError(key, absl::StrCat("negative value ", v->i));
      return static_cast<uint64_t>(v->i);
    default: return KeyError(key, absl::StrCat("expected an integer, found ", v->Describe()));
  }
}
absl::StatusOr<int64_t> File::GetInt(const std::string& key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyError(key, "missing");
  switch (v->type) {
    case VType::kU8: case VType::kU16: case VType::kU32: case VType::kU64:
      if (v->u > static_cast<uint64_t>(INT64_MAX)) return KeyError(key, "value too large");
      return static_cast<int64_t>(v->u);
    case VType::kI8: case VType::kI16: case VType::kI32: case VType::kI64: return v->i;
    default: return KeyError(key, absl::StrCat("expected an integer, found ", v->Describe()));
  }
}
absl::StatusOr<double> File::GetFloat(const std::string& key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyError(key, "missing");
  if (v->type == VType::kF32 || v->type == VType::kF64) return v->f;
  auto i = GetInt(key);
  if (i.ok()) return static_cast<double>(*i);
  return KeyError(key, absl::StrCat("expected a number, found ", v->Describe()));
}
absl::StatusOr<bool> File::GetBool(const std::string& key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyError(key, "missing");
  if (v->type != VType::kBool) return KeyError(key, absl::StrCat("expected bool, found ", v->Describe()));
  return v->u != 0;
}
absl::StatusOr<std::string> File::GetString(const std::string& key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyError(key, "missing");
  if (v->type != VType::kString) return KeyError(key, absl::StrCat("expected string, found ", v->Describe()));
  return v->s;
}
absl::StatusOr<std::vector<std::string>> File::GetStringArray(const std::string& key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyError(key, "missing");
  if (v->type != VType::kArray || v->elem != VType::kString)
    return KeyError(key, absl::StrCat("expected array[string], found ", v->Describe()));
  return v->strs;
}
absl::StatusOr<std::vector<float>> File::GetF32Array(const std::string& key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyError(key, "missing");
  if (v->type != VType::kArray || v->elem != VType::kF32)
    return KeyError(key, absl::StrCat("expected array[f32], found ", v->Describe()));
  std::vector<float> out(v->count);
  if (!out.empty()) std::memcpy(out.data(), v->raw.data(), out.size() * 4);
  return out;
}
absl::StatusOr<std::vector<int32_t>> File::GetI32Array(const std::string& key) const {
  const Value* v = Find(key);
  if (v == nullptr) return KeyError(key, "missing");
  if (v->type != VType::kArray || (v->elem != VType::kI32 && v->elem != VType::kU32))
    return KeyError(key, absl::StrCat("expected array[i32], found ", v->Describe()));
  std::vector<int32_t> out(v->count);
  if (!out.empty()) std::memcpy(out.data(), v->raw.data(), out.size() * 4);
  return out;
}

// ---- Writer ----

void Writer::Add(const std::string& key, Value v) {
  for (auto& kv : kv_)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}

void Writer::AddTensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, Producer producer) {
  uint64_t numel = 1;
  for (auto d : dims) numel *= d;
  const uint64_t bytes = TensorBytes(type, dims.empty() ? 1 : dims[0], numel);
  tensors_.push_back({name, std::move(dims), type, bytes, std::move(producer)});
}

absl::Status Writer::Emit(const std::function<absl::Status(const void*, size_t)>& put) const {
  std::vector<uint8_t> h;
  auto u32 = [&](uint32_t v) { h.insert(h.end(), reinterpret_cast<uint8_t*>(&v), reinterpret_cast<uint8_t*>(&v) + 4); };
  auto u64 = [&](uint64_t v) { h.insert(h.end(), reinterpret_cast<uint8_t*>(&v), reinterpret_cast<uint8_t*>(&v) + 8); };
  auto str = [&](const std::string& s) {
    u64(s.size());
    h.insert(h.end(), s.begin(), s.end());
  };
  auto scalar = [&](VType t, const Value& v) {
    uint8_t buf[8] = {0};
    switch (t) {
      case VType::kU8: case VType::kBool: buf[0] = static_cast<uint8_t>(v.u); break;
      case VType::kI8: buf[0] = static_cast<uint8_t>(static_cast<int8_t>(v.i)); break;
      case VType::kU16: { auto x = static_cast<uint16_t>(v.u); std::memcpy(buf, &x, 2); break; }
      case VType::kI16: { auto x = static_cast<int16_t>(v.i); std::memcpy(buf, &x, 2); break; }
      case VType::kU32: { auto x = static_cast<uint32_t>(v.u); std::memcpy(buf, &x, 4); break; }
      case VType::kI32: { auto x = static_cast<int32_t>(v.i); std::memcpy(buf, &x, 4); break; }
      case VType::kF32: { auto x = static_cast<float>(v.f); std::memcpy(buf, &x, 4); break; }
      case VType::kU64: std::memcpy(buf, &v.u, 8); break;
      case VType::kI64: std::memcpy(buf, &v.i, 8); break;
      case VType::kF64: std::memcpy(buf, &v.f, 8); break;
      default: break;
    }
    h.insert(h.end(), buf, buf + ScalarSize(t));
  };
  u32(kMagic);
  u32(3);
  u64(tensors_.size());
  u64(kv_.size());
  for (const auto& [key, v] : kv_) {
    str(key);
    u32(static_cast<uint32_t>(v.type));
    if (v.type == VType::kString) {
      str(v.s);
    } else if (v.type == VType::kArray) {
      u32(static_cast<uint32_t>(v.elem));
      u64(v.count);
      if (v.elem == VType::kString) {
        for (const auto& s : v.strs) str(s);
      } else {
        h.insert(h.end(), v.raw.begin(), v.raw.end());
      }
    } else {
      scalar(v.type, v);
    }
  }
  uint64_t off = 0;
  for (const auto& t : tensors_) {
    if (t.bytes == 0) return absl::InvalidArgumentError(absl::StrCat("GGUF writer: tensor ", t.name, " has an invalid shape for ", TypeName(t.type)));
    str(t.name);
    u32(static_cast<uint32_t>(t.dims.size()));
    for (auto d : t.dims) u64(d);
    u32(t.type);
    u64(off);
    off += (t.bytes + alignment_ - 1) / alignment_ * alignment_;
  }
  h.resize((h.size() + alignment_ - 1) / alignment_ * alignment_, 0);
  TESSERA_RETURN_IF_ERROR(put(h.data(), h.size()));
  const std::vector<uint8_t> zeros(alignment_, 0);
  for (const auto& t : tensors_) {
    TESSERA_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, t.producer());
    if (bytes.size() != t.bytes)
      return absl::InternalError(absl::StrCat("GGUF writer: tensor ", t.name, " produced ", bytes.size(), " bytes, expected ", t.bytes));
    TESSERA_RETURN_IF_ERROR(put(bytes.data(), bytes.size()));
    const uint64_t pad = (alignment_ - t.bytes % alignment_) % alignment_;
    if (pad) TESSERA_RETURN_IF_ERROR(put(zeros.data(), pad));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> Writer::Serialize() const {
  std::vector<uint8_t> out;
  TESSERA_RETURN_IF_ERROR(Emit([&](const void* p, size_t n) {
    out.insert(out.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    return absl::OkStatus();
  }));
  return out;
}

absl::Status Writer::Write(const std::string& path, bool force) const {
  std::error_code ec;
  if (fs::exists(path, ec) && !force) return FileError(path, "exists (use --force to replace it)");
  std::random_device rd;
  const std::string tmp = absl::StrCat(path, ".tmp-", rd() % 1000000);
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return FileError(tmp, absl::StrCat("cannot create: ", std::strerror(errno)));
  absl::Status st = Emit([&](const void* p, size_t n) -> absl::Status {
    if (n && std::fwrite(p, 1, n, f) != n) return FileError(tmp, absl::StrCat("write failed: ", std::strerror(errno)));
    return absl::OkStatus();
  });
  if (std::fclose(f) != 0 && st.ok()) st = FileError(tmp, absl::StrCat("close failed: ", std::strerror(errno)));
  if (st.ok()) {
    fs::rename(tmp, path, ec);
    if (ec) st = FileError(path, absl::StrCat("rename failed: ", ec.message()));
  }
  if (!st.ok()) fs::remove(tmp, ec);
  return st;
}

}  // namespace tessera::gguf
