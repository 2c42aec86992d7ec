// GGUF (llama.cpp / Ollama model files) <-> Tessera package.
//
// Import (`tessera convert MODEL.gguf -o OUT`): architectures llama, qwen2, qwen3. Tensor types:
//   F32, F16, BF16                 kept as they are (exact)
//   Q8_0                           int8, group 32, f16 scales (exact: same codes and scales)
//   Q4_0                           int4-sym, group 32 (exact: same nibbles, same f16 scales)
//   Q4_1                           int4-asym, group 32 (exact: same nibbles, scale d, min m)
//   Q4_K                           int4-asym, group 32 (codes exact; each sub-block's d*sc and
//                                  -dmin*m rounded to f16: "near-exact")
//   Q5_0, Q5_1, Q5_K, Q6_K         dequantized to f16 (f32 when a value exceeds f16's range)
// Llama q/k rows are un-permuted from llama.cpp's adjacent-pair RoPE order back to the
// rotate-half order the manifest records (arch.rope.convention = "rotate_half").
// Tokenizer from tokenizer.ggml.*: model "llama" (SentencePiece) -> bpe-sp with merges ranked by
// piece score; model "gpt2" -> bpe-byte with the pre-tokenizer named by tokenizer.ggml.pre.
//
// Export (`tessera export PKG --format gguf -o OUT.gguf`): f32/f16/bf16 as they are; int8 with
// a group that is a multiple of 32 -> Q8_0, int4-sym -> Q4_0, int4-asym -> Q4_1 (all exact, when
// the row length is a multiple of 32 and not padded); anything else is dequantized to F32 (exact
// values, larger file). Llama q/k rows are permuted into llama.cpp's pair order.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "converter/hf_converter.h"
#include "formats/gguf.h"
#include "formats/tokenizer.h"

namespace tessera {

struct GgufReport {
  std::vector<std::string> notes;
};

// Builds a Tessera tokenizer from a GGUF file's tokenizer.ggml.* metadata.
absl::StatusOr<Tokenizer> TokenizerFromGguf(const gguf::File& f);
// Adds the tokenizer.ggml.* metadata for `tok` (n_vocab = the model's embedding rows; the token
// list is padded with unused [PADn] entries up to it).
absl::Status TokenizerToGguf(const Tokenizer& tok, int64_t n_vocab, gguf::Writer* w, GgufReport* report);

absl::Status ConvertGguf(const std::string& src, const std::string& out, const ConvertOptions& opts,
                         GgufReport* report);

struct GgufExportOptions {
  bool force = false;
  std::string name;  // general.name (default: the package directory's name)
};
absl::Status ExportGguf(const std::string& pkg_dir, const std::string& out, const GgufExportOptions& opts,
                        GgufReport* report);

// Row index in llama.cpp's adjacent-pair order of row r in rotate-half (HF) order, for heads of
// head_dim rows.
inline int64_t PairOrderRow(int64_t r, int64_t head_dim) {
  const int64_t h = r / head_dim, rem = r % head_dim, half = head_dim / 2;
  return h * head_dim + 2 * (rem % half) + rem / half;
}

}  // namespace tessera
