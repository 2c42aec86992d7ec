// libFuzzer target: a tensor pack (WPK1: header, index, planes) in each load mode, then every
// tensor dequantized. The first byte picks the mode; the rest is the file.
#include <vector>

#include "formats/tensor_pack.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const tessera::LoadMode modes[] = {tessera::LoadMode::kMmap, tessera::LoadMode::kRead, tessera::LoadMode::kIndexOnly};
  const tessera::LoadMode mode = modes[data[0] % 3];
  const bool verify = (data[0] & 4) != 0;
  tessera::fuzz::MemFile f(data + 1, size - 1);
  auto pack = tessera::TensorPack::Open(f.path(), verify, mode);
  if (!pack.ok() || mode == tessera::LoadMode::kIndexOnly) return 0;
  for (const auto& t : (*pack)->tensors()) {
    (void)(*pack)->VerifyTensor(t);
    if (t.numel() > (1u << 20)) continue;
    std::vector<float> all = t.ToF32();
    (void)all;
  }
  return 0;
}
