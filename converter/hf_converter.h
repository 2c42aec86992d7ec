// Hugging Face directory -> Tessera package.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "formats/model_config.h"
#include "nlohmann/json.hpp"

namespace tessera {

struct ConvertOptions {
  bool force = false;
  std::string cmdline;
};

class Tokenizer;
// Checks the tokenizer fits the model's vocabulary and fills bos/eos ids the config left open
// (eos_ids gets the tokenizer's end-of-turn tokens too). Shared by the HF and ONNX importers.
absl::Status ReconcileTokenizer(const Tokenizer& tok, const std::string& tok_json, ModelConfig* c);
// The manifest's "tokenizer" object for tokenizer.txt (shared by every importer).
nlohmann::ordered_json TokenizerManifest(const Tokenizer& tok);

// Reads config.json and returns the canonical architecture (errors name the file and field).
absl::StatusOr<ModelConfig> ReadHfConfig(const std::string& hf_dir);

// Converts SRC (an HF model directory) into the package directory OUT. Weights keep their
// source precision (F32/F16/BF16); norm weights and biases are stored as F32.
absl::Status ConvertHuggingFace(const std::string& src, const std::string& out, const ConvertOptions& opts);

}  // namespace tessera
