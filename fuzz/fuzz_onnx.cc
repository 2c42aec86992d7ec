// libFuzzer target: an ONNX ModelProto (protobuf) with initializers inline or as external data.
// The model is written as model.onnx into a scratch directory that also holds a 4 MiB
// "weights.bin" (the seeds reference it) and a tokenizer; the model is loaded, every
// initializer read (inline and external: bounds, dtypes, locations that try to escape the
// directory), and the whole importer run on it.
#include <filesystem>
#include <fstream>

#include "converter/onnx_converter.h"
#include "converter/onnx_model.h"
#include "fuzz/fuzz_util.h"

namespace {
namespace fs = std::filesystem;
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_dir = (fs::temp_directory_path() / ("tessera-fuzz-onnx-" + std::to_string(getpid()))).string();
  fs::remove_all(g_dir);
  fs::create_directories(g_dir);
  std::ofstream(g_dir + "/weights.bin").close();
  fs::resize_file(g_dir + "/weights.bin", 4u << 20);
  const std::string hf = tessera::fuzz::FixturesDir() + "/stories260K/hf";
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "config.json"})
    fs::copy_file(hf + "/" + f, g_dir + "/" + f, fs::copy_options::overwrite_existing);
  std::atexit([] { fs::remove_all(g_dir); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string model = g_dir + "/model.onnx";
  {
    std::ofstream out(model, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  auto m = tessera::onnx_import::OnnxModel::Load(model);
  if (!m.ok()) return 0;
  for (const auto& t : (*m)->graph().initializer()) {
    if (tessera::onnx_import::OnnxModel::Numel(t) > (1 << 20)) continue;
    (void)(*m)->Bytes(t);
    (void)(*m)->ToF32(t);
    (void)(*m)->ToI64(t);
  }
  (void)(*m)->ExternalFiles();
  tessera::OnnxConvertOptions o;
  o.force = true;
  o.tokenizer_dir = g_dir;
  (void)tessera::ConvertOnnx(model, g_dir + "/out", o);
  std::error_code ec;
  fs::remove_all(g_dir + "/out", ec);
  return 0;
}
