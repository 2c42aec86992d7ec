// libFuzzer target: encode / decode arbitrary bytes (invalid UTF-8 included) with the fixtures'
// tokenizers (SentencePiece-style BPE with byte fallback, byte-level BPE of GPT-2 and Qwen2),
// stream-decode, and decode arbitrary ids.
#include <cstring>
#include <string>
#include <vector>

#include "formats/tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace {
std::vector<tessera::Tokenizer>* g_toks;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_toks = new std::vector<tessera::Tokenizer>();
  const std::string fx = tessera::fuzz::FixturesDir();
  for (const char* d : {"stories260K/hf", "tiny/gpt2", "tiny/qwen2", "tiny/llama"}) {
    const std::string dir = fx + "/" + d;
    auto t = tessera::Tokenizer::FromHuggingFace(dir + "/tokenizer.json", dir + "/tokenizer_config.json");
    if (!t.ok()) {
      std::fprintf(stderr, "%s: %s\n", d, std::string(t.status().message()).c_str());
      std::abort();
    }
    g_toks->push_back(*std::move(t));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 4096) return 0;
  const tessera::Tokenizer& tok = (*g_toks)[data[0] % g_toks->size()];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::vector<int32_t> ids = tok.Encode(text, (data[0] & 8) != 0);
  const std::string back = tok.Decode(ids, false);
  tessera::StreamDecoder dec(tok, true);
  std::string streamed;
  for (int32_t id : ids) streamed += dec.Push(id);
  streamed += dec.Flush();
  // Arbitrary ids (out of range, negative, special) must decode without crashing.
  std::vector<int32_t> raw((size - 1) / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data + 1, raw.size() * 4);
  (void)tok.Decode(raw, true);
  (void)tok.Decode(raw, false);
  tessera::StreamDecoder dec2(tok, false);
  for (int32_t id : raw) (void)dec2.Push(id);
  (void)dec2.Flush();
  return 0;
}
