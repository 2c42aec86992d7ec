// ONNX ModelProto loading for the ONNX importer: parses the protobuf, indexes the graph
// (producers, consumers, constants) and reads tensor bytes, including external data files
// (location / offset / length, confined to the model's folder).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/mapped_file.h"
#include "onnx/onnx_pb.h"

namespace tessera::onnx_import {

// TensorProto.DataType values used here.
enum OnnxDType : int {
  kOnnxFloat = 1, kOnnxUint8 = 2, kOnnxInt8 = 3, kOnnxUint16 = 4, kOnnxInt16 = 5, kOnnxInt32 = 6,
  kOnnxInt64 = 7, kOnnxBool = 9, kOnnxFloat16 = 10, kOnnxDouble = 11, kOnnxUint32 = 12,
  kOnnxUint64 = 13, kOnnxBFloat16 = 16,
};
const char* OnnxDTypeName(int dtype);
size_t OnnxDTypeSize(int dtype);  // 0 when unsupported

class OnnxModel {
 public:
  // Parses `path`; errors are one line naming the file.
  static absl::StatusOr<std::unique_ptr<OnnxModel>> Load(const std::string& path);

  const std::string& path() const { return path_; }
  const std::string& dir() const { return dir_; }
  const onnx::ModelProto& proto() const { return model_; }
  const onnx::GraphProto& graph() const { return model_.graph(); }
  int num_nodes() const { return model_.graph().node_size(); }
  const onnx::NodeProto& node(int i) const { return model_.graph().node(i); }

  // Constants: graph initializers and outputs of Constant nodes (value / value_float(s) / value_int(s)).
  const onnx::TensorProto* Const(const std::string& name) const;
  bool IsConst(const std::string& name) const { return Const(name) != nullptr; }
  // Node index producing `value`, or -1 (graph input / initializer / unknown).
  int Producer(const std::string& value) const;
  // (node index, input slot) of every node that reads `value`.
  const std::vector<std::pair<int, int>>& Consumers(const std::string& value) const;
  bool IsGraphOutput(const std::string& value) const;

  // Tensor bytes, little-endian and densely packed (raw_data, typed fields or external data).
  absl::StatusOr<std::vector<uint8_t>> Bytes(const onnx::TensorProto& t) const;
  // Numeric conversions (float / f16 / bf16 / double / integer types).
  absl::StatusOr<std::vector<float>> ToF32(const onnx::TensorProto& t) const;
  absl::StatusOr<std::vector<int64_t>> ToI64(const onnx::TensorProto& t) const;
  static int64_t Numel(const onnx::TensorProto& t);
  // External data files referenced by the initializers (relative to dir()).
  std::vector<std::string> ExternalFiles() const;

  // "node 'node_linear' (MatMul)".
  std::string Describe(int node) const;

 private:
  std::string path_, dir_;
  onnx::ModelProto model_;
  std::map<std::string, const onnx::TensorProto*> consts_;
  std::vector<std::unique_ptr<onnx::TensorProto>> owned_;  // Constant nodes converted to tensors
  std::map<std::string, int> producer_;
  std::map<std::string, std::vector<std::pair<int, int>>> consumers_;
  std::map<std::string, bool> outputs_;
  mutable std::map<std::string, std::unique_ptr<MappedFile>> ext_files_;
};

// Attribute helpers (defaults when absent).
int64_t AttrInt(const onnx::NodeProto& n, const std::string& name, int64_t def);
float AttrFloat(const onnx::NodeProto& n, const std::string& name, float def);
std::string AttrString(const onnx::NodeProto& n, const std::string& name, const std::string& def);
std::vector<int64_t> AttrInts(const onnx::NodeProto& n, const std::string& name);
bool HasAttr(const onnx::NodeProto& n, const std::string& name);

}  // namespace tessera::onnx_import
