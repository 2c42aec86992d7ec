// libFuzzer target: a .safetensors file (JSON header, offsets, dtypes), then every tensor to f32.
#include <vector>

#include "formats/safetensors.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tessera::fuzz::MemFile f(data, size);
  tessera::SafetensorsSet set;
  if (!set.AddFile(f.path()).ok()) return 0;
  for (const auto& [name, t] : set.tensors()) {
    if (t.numel() > (1u << 20)) continue;
    std::vector<float> out(t.numel());
    (void)t.ToF32(out.data());
  }
  return 0;
}
