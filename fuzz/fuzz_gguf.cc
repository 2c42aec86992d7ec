// libFuzzer target: a GGUF file. The reader (header, metadata, tensor infos, alignment), the typed
// accessors, the tokenizer import, and, when the file parses, the whole importer into a scratch
// package directory (every tensor type's decode, q/k un-permutation, manifest).
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "converter/gguf_converter.h"
#include "converter/hf_converter.h"
#include "formats/gguf.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = tessera::gguf::File::Parse("fuzz.gguf", std::vector<uint8_t>(data, data + size));
  if (!f.ok()) return 0;
  for (const auto& [key, v] : (*f)->kv()) {
    (void)(*f)->GetString(key);
    (void)(*f)->GetUint(key);
    (void)(*f)->GetFloat(key);
    (void)(*f)->GetStringArray(key);
    (void)(*f)->GetF32Array(key);
    (void)(*f)->GetI32Array(key);
  }
  (void)tessera::TokenizerFromGguf(**f);
  if (size > (1u << 20)) return 0;
  tessera::fuzz::MemFile mem(data, size);
  static const std::string out = std::filesystem::temp_directory_path() / ("fuzz-gguf-" + std::to_string(getpid()));
  std::error_code ec;
  std::filesystem::remove_all(out, ec);
  tessera::ConvertOptions opts;
  opts.force = true;
  tessera::GgufReport report;
  (void)tessera::ConvertGguf(mem.path(), out, opts, &report);
  std::filesystem::remove_all(out, ec);
  return 0;
}
