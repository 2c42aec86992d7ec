// libFuzzer target: manifest.json of a package. The packs and tokenizer are a real package
// (stories260K converted once at start-up); the fuzz bytes replace its manifest, then the package
// is opened (with and without checksums), checked, and loaded as a model.
#include <filesystem>
#include <fstream>

#include "converter/hf_converter.h"
#include "formats/package.h"
#include "fuzz/fuzz_util.h"
#include "runtime-lite/model.h"

namespace {
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  namespace fs = std::filesystem;
  g_dir = (fs::temp_directory_path() / ("tessera-fuzz-pkg-" + std::to_string(getpid()))).string();
  fs::remove_all(g_dir);
  auto st = tessera::ConvertHuggingFace(tessera::fuzz::FixturesDir() + "/stories260K/hf", g_dir, {});
  if (!st.ok()) {
    std::fprintf(stderr, "fuzz_package: cannot convert the fixture: %s\n", std::string(st.message()).c_str());
    std::abort();
  }
  std::atexit([] { std::filesystem::remove_all(g_dir); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  {
    std::ofstream out(g_dir + "/manifest.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  for (bool verify : {false, true}) {
    tessera::Package::Options o;
    o.verify_checksums = verify;
    auto pkg = tessera::Package::Open(g_dir, o);
    if (!pkg.ok()) return 0;
    if (verify) {
      (void)tessera::CheckPackage(g_dir);
      auto model = tessera::Model::Load(*std::move(pkg));
      (void)model;
    }
  }
  return 0;
}
