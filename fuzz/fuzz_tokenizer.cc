// libFuzzer target: tokenizer loading. First byte: even = tokenizer.json (Hugging Face), odd =
// tokenizer.txt (Tessera's lossless form). A tokenizer that loads then encodes and decodes a
// fixed sample and the input's own bytes, and round-trips through Serialize/Deserialize.
#include <string>
#include <vector>

#include "formats/tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace {
void Exercise(const tessera::Tokenizer& tok, std::string_view text) {
  for (bool special : {false, true}) {
    const std::vector<int32_t> ids = tok.Encode(text, special);
    (void)tok.Decode(ids, special);
    tessera::StreamDecoder dec(tok, true);
    for (int32_t id : ids) (void)dec.Push(id);
    (void)dec.Flush();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  absl::StatusOr<tessera::Tokenizer> tok = absl::InternalError("unset");
  if (data[0] % 2 == 0) {
    tessera::fuzz::MemFile f(data + 1, size - 1);
    tok = tessera::Tokenizer::FromHuggingFace(f.path(), "");
  } else {
    tok = tessera::Tokenizer::Deserialize(body, "fuzz/tokenizer.txt");
  }
  if (!tok.ok()) return 0;
  Exercise(*tok, "Hello world! <s> 12345 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80\n\t  end");
  Exercise(*tok, body.substr(0, 256));
  auto again = tessera::Tokenizer::Deserialize(tok->Serialize(), "fuzz/roundtrip.txt");
  if (!again.ok()) {
    std::fprintf(stderr, "Serialize() output does not load: %s\n", std::string(again.status().message()).c_str());
    std::abort();
  }
  for (int32_t id = -2; id < std::min(tok->vocab_size() + 2, 64); ++id) (void)tok->TokenPiece(id);
  return 0;
}
