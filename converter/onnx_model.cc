#include "converter/onnx_model.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "core/status.h"

namespace tessera::onnx_import {
namespace fs = std::filesystem;

const char* OnnxDTypeName(int dtype) {
  switch (dtype) {
    case kOnnxFloat: return "float32";
    case kOnnxUint8: return "uint8";
    case kOnnxInt8: return "int8";
    case kOnnxUint16: return "uint16";
    case kOnnxInt16: return "int16";
    case kOnnxInt32: return "int32";
    case kOnnxInt64: return "int64";
    case kOnnxBool: return "bool";
    case kOnnxFloat16: return "float16";
    case kOnnxDouble: return "float64";
    case kOnnxUint32: return "uint32";
    case kOnnxUint64: return "uint64";
    case kOnnxBFloat16: return "bfloat16";
    default: return "unsupported";
  }
}

size_t OnnxDTypeSize(int dtype) {
  switch (dtype) {
    case kOnnxUint8: case kOnnxInt8: case kOnnxBool: return 1;
    case kOnnxUint16: case kOnnxInt16: case kOnnxFloat16: case kOnnxBFloat16: return 2;
    case kOnnxFloat: case kOnnxInt32: case kOnnxUint32: return 4;
    case kOnnxInt64: case kOnnxDouble: case kOnnxUint64: return 8;
    default: return 0;
  }
}

namespace {
const onnx::AttributeProto* FindAttr(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}
}  // namespace

bool HasAttr(const onnx::NodeProto& n, const std::string& name) { return FindAttr(n, name) != nullptr; }
int64_t AttrInt(const onnx::NodeProto& n, const std::string& name, int64_t def) {
  const auto* a = FindAttr(n, name);
  return a != nullptr ? a->i() : def;
}
float AttrFloat(const onnx::NodeProto& n, const std::string& name, float def) {
  const auto* a = FindAttr(n, name);
  return a != nullptr ? a->f() : def;
}
std::string AttrString(const onnx::NodeProto& n, const std::string& name, const std::string& def) {
  const auto* a = FindAttr(n, name);
  return a != nullptr ? a->s() : def;
}
std::vector<int64_t> AttrInts(const onnx::NodeProto& n, const std::string& name) {
  const auto* a = FindAttr(n, name);
  if (a == nullptr) return {};
  return std::vector<int64_t>(a->ints().begin(), a->ints().end());
}

absl::StatusOr<std::unique_ptr<OnnxModel>> OnnxModel::Load(const std::string& path) {
  if (!fs::exists(path)) return FileError(path, "not found");
  TESSERA_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  auto m = std::unique_ptr<OnnxModel>(new OnnxModel());
  m->path_ = path;
  m->dir_ = fs::absolute(path).parent_path().string();
  if (bytes.size() > static_cast<size_t>(INT32_MAX))
    return FileError(path, "larger than 2 GiB (protobuf limit); large weights must be stored as external data");
  if (!m->model_.ParseFromString(bytes))
    return FileError(path, absl::StrCat("not a valid ONNX model (protobuf parse failed after reading ", bytes.size(),
                                        " bytes: truncated or corrupt file?)"));
  if (!m->model_.has_graph() || m->model_.graph().node_size() == 0 || m->model_.opset_import_size() == 0 ||
      m->model_.graph().output_size() == 0)
    return FileError(path, "incomplete ONNX model (no graph, nodes, outputs or opset_import: truncated file?)");
  const auto& g = m->model_.graph();
  for (int i = 0; i < g.node_size(); ++i)  // the importer reads output(0) of the nodes it follows
    if (g.node(i).output_size() == 0)
      return FileError(path, absl::StrCat("node ", i, " (", g.node(i).op_type(), ") has no outputs"));
  for (const auto& t : g.initializer()) m->consts_[t.name()] = &t;
  for (const auto& o : g.output()) m->outputs_[o.name()] = true;
  for (int i = 0; i < g.node_size(); ++i) {
    const auto& n = g.node(i);
    for (int s = 0; s < n.input_size(); ++s)
      if (!n.input(s).empty()) m->consumers_[n.input(s)].push_back({i, s});
    for (const auto& o : n.output())
      if (!o.empty()) m->producer_[o] = i;
    if (n.op_type() == "Constant" && n.domain().empty() && n.output_size() == 1) {
      auto t = std::make_unique<onnx::TensorProto>();
      if (const auto* a = FindAttr(n, "value"); a != nullptr && a->has_t()) {
        *t = a->t();
      } else if (const auto* f = FindAttr(n, "value_float"); f != nullptr) {
        t->set_data_type(kOnnxFloat);
        t->add_float_data(f->f());
      } else if (const auto* fs2 = FindAttr(n, "value_floats"); fs2 != nullptr) {
        t->set_data_type(kOnnxFloat);
        t->add_dims(fs2->floats_size());
        for (float v : fs2->floats()) t->add_float_data(v);
      } else if (const auto* iv = FindAttr(n, "value_int"); iv != nullptr) {
        t->set_data_type(kOnnxInt64);
        t->add_int64_data(iv->i());
      } else if (const auto* is = FindAttr(n, "value_ints"); is != nullptr) {
        t->set_data_type(kOnnxInt64);
        t->add_dims(is->ints_size());
        for (int64_t v : is->ints()) t->add_int64_data(v);
      } else {
        continue;
      }
      t->set_name(n.output(0));
      m->consts_[n.output(0)] = t.get();
      m->owned_.push_back(std::move(t));
    }
  }
  return m;
}

const onnx::TensorProto* OnnxModel::Const(const std::string& name) const {
  auto it = consts_.find(name);
  return it == consts_.end() ? nullptr : it->second;
}
int OnnxModel::Producer(const std::string& value) const {
  auto it = producer_.find(value);
  return it == producer_.end() ? -1 : it->second;
}
const std::vector<std::pair<int, int>>& OnnxModel::Consumers(const std::string& value) const {
  static const std::vector<std::pair<int, int>> kNone;
  auto it = consumers_.find(value);
  return it == consumers_.end() ? kNone : it->second;
}
bool OnnxModel::IsGraphOutput(const std::string& value) const { return outputs_.count(value) > 0; }

std::string OnnxModel::Describe(int i) const {
  const auto& n = node(i);
  return absl::StrCat("node '", n.name().empty() ? (n.output_size() ? n.output(0) : "?") : n.name(), "' (",
                      n.domain().empty() ? "" : n.domain() + ".", n.op_type(), ")");
}

int64_t OnnxModel::Numel(const onnx::TensorProto& t) {
  // Hostile dims must not overflow (undefined behaviour): a negative dim gives -1, a product
  // past int64 saturates at INT64_MAX; callers compare with the bytes actually present.
  int64_t n = 1;
  for (auto d : t.dims()) {
    if (d < 0) return -1;
    if (__builtin_mul_overflow(n, d, &n)) return INT64_MAX;
  }
  return n;
}

std::vector<std::string> OnnxModel::ExternalFiles() const {
  std::vector<std::string> out;
  for (const auto& t : graph().initializer()) {
    if (t.data_location() != onnx::TensorProto::EXTERNAL) continue;
    for (const auto& kv : t.external_data())
      if (kv.key() == "location" && std::find(out.begin(), out.end(), kv.value()) == out.end()) out.push_back(kv.value());
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> OnnxModel::Bytes(const onnx::TensorProto& t) const {
  const size_t es = OnnxDTypeSize(t.data_type());
  if (es == 0)
    return FileError(path_, absl::StrCat("tensor '", t.name(), "' has unsupported data type ", t.data_type()));
  for (auto d : t.dims())
    if (d < 0) return FileError(path_, absl::StrCat("tensor '", t.name(), "' has a negative dimension"));
  const size_t n = static_cast<size_t>(Numel(t));
  const size_t want = n * es;
  std::vector<uint8_t> out;
  auto wrong = [&](size_t got, const char* where) {
    return FileError(path_, absl::StrCat("tensor '", t.name(), "' holds ", got, " bytes in ", where, ", its shape and ",
                                         OnnxDTypeName(t.data_type()), " need ", want));
  };
  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    std::string location;
    int64_t offset = 0, length = -1;
    for (const auto& kv : t.external_data()) {
      try {
        if (kv.key() == "location") location = kv.value();
        if (kv.key() == "offset") offset = std::stoll(kv.value());
        if (kv.key() == "length") length = std::stoll(kv.value());
      } catch (const std::exception&) {
        return FileError(path_, absl::StrCat("tensor '", t.name(), "': bad external_data ", kv.key(), " '", kv.value(), "'"));
      }
    }
    if (location.empty()) return FileError(path_, absl::StrCat("tensor '", t.name(), "': external data without a location"));
    const fs::path loc(location);
    bool escapes = loc.is_absolute() || loc.has_root_name() || loc.has_root_directory();
    for (const auto& part : loc)
      if (part == "..") escapes = true;
    if (escapes)
      return FileError(path_, absl::StrCat("tensor '", t.name(), "': external data location '", location,
                                           "' must be a relative path inside the model's folder"));
    const std::string file = (fs::path(dir_) / loc).lexically_normal().string();
    auto it = ext_files_.find(file);
    if (it == ext_files_.end()) {
      if (!fs::is_regular_file(file))
        return FileError(file, absl::StrCat("missing external data file (tensor '", t.name(), "' of ", path_, ")"));
      TESSERA_ASSIGN_OR_RETURN(auto mf, MappedFile::Open(file));
      it = ext_files_.emplace(file, std::move(mf)).first;
    }
    const MappedFile& mf = *it->second;
    if (length < 0) length = static_cast<int64_t>(want);
    if (offset < 0 || static_cast<uint64_t>(offset) + static_cast<uint64_t>(length) > mf.size())
      return FileError(file, absl::StrCat("too short: tensor '", t.name(), "' needs bytes [", offset, ", ", offset + length,
                                          ") but the file has ", mf.size(), " bytes"));
    if (static_cast<size_t>(length) != want) return wrong(static_cast<size_t>(length), file.c_str());
    out.assign(mf.data() + offset, mf.data() + offset + length);
    return out;
  }
  if (t.has_raw_data()) {
    if (t.raw_data().size() != want) return wrong(t.raw_data().size(), "raw_data");
    out.assign(t.raw_data().begin(), t.raw_data().end());
    return out;
  }
  out.resize(want);
  switch (t.data_type()) {
    case kOnnxFloat:
      if (static_cast<size_t>(t.float_data_size()) != n) return wrong(t.float_data_size() * 4u, "float_data");
      if (n) std::memcpy(out.data(), t.float_data().data(), want);
      break;
    case kOnnxDouble:
      if (static_cast<size_t>(t.double_data_size()) != n) return wrong(t.double_data_size() * 8u, "double_data");
      if (n) std::memcpy(out.data(), t.double_data().data(), want);
      break;
    case kOnnxInt64:
      if (static_cast<size_t>(t.int64_data_size()) != n) return wrong(t.int64_data_size() * 8u, "int64_data");
      if (n) std::memcpy(out.data(), t.int64_data().data(), want);
      break;
    case kOnnxUint32: case kOnnxUint64:
      if (static_cast<size_t>(t.uint64_data_size()) != n) return wrong(t.uint64_data_size() * es, "uint64_data");
      for (size_t i = 0; i < n; ++i) {
        const uint64_t v = t.uint64_data(static_cast<int>(i));
        std::memcpy(out.data() + i * es, &v, es);
      }
      break;
    default:  // int32_data carries int32, int16, int8, uint16, uint8, bool, float16 and bfloat16
      if (static_cast<size_t>(t.int32_data_size()) != n) return wrong(t.int32_data_size() * es, "int32_data");
      for (size_t i = 0; i < n; ++i) {
        const int32_t v = t.int32_data(static_cast<int>(i));
        std::memcpy(out.data() + i * es, &v, es);  // little-endian: low bytes first
      }
  }
  return out;
}

absl::StatusOr<std::vector<float>> OnnxModel::ToF32(const onnx::TensorProto& t) const {
  TESSERA_ASSIGN_OR_RETURN(auto b, Bytes(t));
  const size_t n = static_cast<size_t>(Numel(t));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = b.data() + i * OnnxDTypeSize(t.data_type());
    switch (t.data_type()) {
      case kOnnxFloat: std::memcpy(&f[i], p, 4); break;
      case kOnnxFloat16: { uint16_t h; std::memcpy(&h, p, 2); f[i] = F16ToF32(h); break; }
      case kOnnxBFloat16: { uint16_t h; std::memcpy(&h, p, 2); f[i] = BF16ToF32(h); break; }
      case kOnnxDouble: { double d; std::memcpy(&d, p, 8); f[i] = static_cast<float>(d); break; }
      default: {
        TESSERA_ASSIGN_OR_RETURN(auto iv, ToI64(t));
        for (size_t j = 0; j < n; ++j) f[j] = static_cast<float>(iv[j]);
        return f;
      }
    }
  }
  return f;
}

absl::StatusOr<std::vector<int64_t>> OnnxModel::ToI64(const onnx::TensorProto& t) const {
  TESSERA_ASSIGN_OR_RETURN(auto b, Bytes(t));
  const size_t n = static_cast<size_t>(Numel(t));
  std::vector<int64_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = b.data() + i * OnnxDTypeSize(t.data_type());
    switch (t.data_type()) {
      case kOnnxInt64: std::memcpy(&v[i], p, 8); break;
      case kOnnxInt32: { int32_t x; std::memcpy(&x, p, 4); v[i] = x; break; }
      case kOnnxUint32: { uint32_t x; std::memcpy(&x, p, 4); v[i] = x; break; }
      case kOnnxInt16: { int16_t x; std::memcpy(&x, p, 2); v[i] = x; break; }
      case kOnnxUint16: { uint16_t x; std::memcpy(&x, p, 2); v[i] = x; break; }
      case kOnnxInt8: v[i] = static_cast<int8_t>(*p); break;
      case kOnnxUint8: case kOnnxBool: v[i] = *p; break;
      case kOnnxUint64: { uint64_t x; std::memcpy(&x, p, 8); v[i] = static_cast<int64_t>(x); break; }
      default:
        return FileError(path_, absl::StrCat("tensor '", t.name(), "' is ", OnnxDTypeName(t.data_type()),
                                             ", expected an integer tensor"));
    }
  }
  return v;
}

}  // namespace tessera::onnx_import
