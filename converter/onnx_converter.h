// ONNX decoder model (torch.onnx / optimum exports, ONNX Runtime MatMulNBits INT4) -> Tessera package.
//
// The importer recognises the decoder from the graph's dataflow, not from names: the token
// embedding Gather on input_ids, then per layer the residual Adds, the norm feeding each
// sub-block (LayerNormalization, SimplifiedLayerNormalization/RMSNormalization or the decomposed
// RMSNorm Pow/ReduceMean/Add/Sqrt/Reciprocal|Div/Mul), the linears on constant weights (MatMul on
// [K,N], Gemm, MatMulNBits, bias Adds, fused projections followed by Split), q/k/v told apart by
// which input of the attention-score / context MatMuls they reach, gate/up by which one passes the
// activation, q/k norms and the rotary pattern on the q/k paths. Anything else is refused with an
// error naming the node, its op type and what was expected.
//
// Config: dimensions always come from the graph. When a config.json sits beside the model (or in
// its parent folder, the layout of a Hugging Face directory with an onnx/ subfolder) it supplies
// the family, max context, token ids and is cross-checked against the graph; a genai_config.json
// beside the model supplies the context length and token ids. Without either, RoPE theta comes
// from the inv_freq constant and norm eps from the graph's constants.
// Tokenizer: --tokenizer DIR, else tokenizer.json beside the model, else in its parent folder.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

struct OnnxConvertOptions {
  bool force = false;
  std::string cmdline;
  std::string tokenizer_dir;  // folder holding tokenizer.json (+ tokenizer_config.json)
};

struct OnnxConvertReport {
  std::vector<std::string> notes;  // one line each (MatMulNBits import, config source)
  int int4_exact = 0;              // MatMulNBits weights carried over code for code
  int int4_dequantized = 0;        // MatMulNBits weights dequantized to f32
};

absl::Status ConvertOnnx(const std::string& model_path, const std::string& out, const OnnxConvertOptions& opts,
                         OnnxConvertReport* report = nullptr);

}  // namespace tessera
