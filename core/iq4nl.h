// The 16 levels of the int4-nl weight type (QType::kI4Nl): llama.cpp's IQ4_NL table. A 4-bit code
// c stores the weight kI4NlLevels[c] * d (d: the group's f16 scale). Non-uniform: denser near 0
// (steps 11 .. 24), the range asymmetric (-127 .. 113). level * d is exact in f32 (a 7-bit level
// times an 11-bit f16 mantissa).
#pragma once

#include <cstdint>

namespace tessera {

inline constexpr int8_t kI4NlLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                           1,    13,   25,  38,  53,  69,  89,  113};

}  // namespace tessera
